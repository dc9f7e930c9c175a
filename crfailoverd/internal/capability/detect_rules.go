package capability

import (
	"fmt"
	"strconv"
	"strings"
)

// Inputs are the runtime facts Decide works from.
type Inputs struct {
	Name, Version string // as the CRI Version call reports them
	RuntimeErr    error  // the runtime could not be asked
	Config        RuntimeConfig
	ConfigErr     error // the runtime's configuration could not be read
	RestorePod    bool  // the runtime answers CRI RestorePod
	NativeRestore bool  // see Deps
	Kubelet       bool  // see Deps
}

// The configuration changes the reasons name.
const (
	containerdTable   = `[plugins."io.containerd.cri.v1.runtime"]` // config version 3 (containerd 2.x); version 2 files: [plugins."io.containerd.grpc.v1.cri"]
	fixRestoreCreate  = "set " + containerdTable + " enable_experimental_restore_via_create = true in containerd's config.toml and restart containerd (containerd trusts the archive's contents on restore: let only trusted users create pods)"
	fixContainerdCRIU = "set " + containerdTable + " enable_criu = true in containerd's config.toml and restart containerd"
	fixCRIOCRIU       = "set [crio.runtime] enable_criu_support = true in crio.conf, make criu available on crio's PATH, and restart crio"
	fixCRIOLevel      = `set [crio.checkpoint_restore] container_level_enabled = "checkpoint_restore" in crio.conf and restart crio`
)

// Decide applies the rules of what each runtime version can do. It is
// pure: the facts come in, the node's runtime capabilities go out (no
// kernel, CRIU, CPU flags or time; Detect adds those).
func Decide(in Inputs) Node {
	if in.RuntimeErr != nil {
		r := "runtime unreachable: " + in.RuntimeErr.Error()
		return Node{Checkpoint: false, CheckpointReason: r, Restore: RestoreNone, RestoreReason: r}
	}
	n := Node{Runtime: Runtime{Name: strings.ToLower(strings.TrimSpace(in.Name)), Version: cleanVersion(in.Version)}}
	switch n.Runtime.Name {
	case "containerd":
		decideContainerd(&n, in)
	case "cri-o":
		decideCRIO(&n, in)
	default:
		r := fmt.Sprintf("unknown runtime %q: crfailoverd knows containerd and CRI-O", in.Name)
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return n
	}
	// RestorePod, the CRI's own pod restore, where the runtime has it.
	if in.RestorePod && n.Checkpoint {
		n.Restore, n.RestoreReason = RestorePod, ""
	}
	return n
}

func decideContainerd(n *Node, in Inputs) {
	v, ok := parseVersion(n.Runtime.Version)
	if !ok {
		r := fmt.Sprintf("containerd version %q not understood", in.Version)
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	}
	if v.major < 2 {
		r := "containerd " + n.Runtime.Version + " has no CRI checkpoint or restore (containerd 2.0 added them): upgrade containerd to 2.1, or 2.2/2.3 with " + containerdTable + " enable_experimental_restore_via_create = true"
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	}
	if c := in.Config.EnableCRIU; c != nil && !*c {
		r := "containerd has CRIU turned off (enable_criu = false): " + fixContainerdCRIU
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	}
	n.Checkpoint = true
	switch {
	case v.major == 2 && v.minor <= 1:
		n.Restore = RestoreCreate
	case v.major == 2 && v.minor <= 3:
		switch c := in.Config.RestoreViaCreate; {
		case c != nil && *c:
			n.Restore = RestoreCreate
		case c != nil:
			n.Restore = RestoreNone
			n.RestoreReason = "containerd " + n.Runtime.Version + " has restore via CreateContainer turned off (the default since 2.2.7 and 2.3.4): " + fixRestoreCreate
		case in.ConfigErr != nil:
			n.Restore = RestoreNone
			n.RestoreReason = "cannot tell whether containerd " + n.Runtime.Version + " restores via CreateContainer (its configuration could not be read: " + in.ConfigErr.Error() + ")"
		default:
			// Releases before 2.2.7 and 2.3.4 have no such option and
			// restore via CreateContainer as 2.1 does.
			n.Restore = RestoreCreate
		}
	default: // 2.4 and later
		const removed = "containerd 2.4 removed restore via CreateContainer"
		switch {
		case in.NativeRestore && !in.Kubelet:
			n.Restore = RestoreNative
		case in.NativeRestore:
			n.Restore = RestoreNone
			n.RestoreReason = removed + ", and crfailoverd's native restore is for nodes without kubelet only (kubelet does not see the containers it makes): run containerd 2.3 or earlier, or CRI-O, on kubelet nodes"
		default:
			n.Restore = RestoreNone
			n.RestoreReason = removed + " (and has no RestorePod), and this crfailoverd has no native restore path: run containerd 2.3 or earlier (2.2/2.3 with " + containerdTable + " enable_experimental_restore_via_create = true), or CRI-O"
		}
	}
}

func decideCRIO(n *Node, in Inputs) {
	if in.ConfigErr != nil {
		r := "cannot tell whether CRI-O has checkpoint/restore on (its configuration could not be read: " + in.ConfigErr.Error() + ")"
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	}
	if c := in.Config.CRIUSupport; c != nil && !*c {
		r := "CRI-O has checkpoint/restore off (enable_criu_support = false, or no criu on crio's PATH): " + fixCRIOCRIU
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	}
	switch in.Config.ContainerLevel {
	case "none":
		r := `CRI-O has checkpoint/restore off (container_level_enabled = "none"): ` + fixCRIOLevel
		n.CheckpointReason, n.Restore, n.RestoreReason = r, RestoreNone, r
		return
	case "checkpoint_only":
		n.Checkpoint = true
		n.Restore = RestoreNone
		n.RestoreReason = `CRI-O checkpoints only (container_level_enabled = "checkpoint_only"): ` + fixCRIOLevel
		return
	}
	n.Checkpoint, n.Restore = true, RestoreCreate
}

// cleanVersion drops a leading "v" and any build suffix ("+unknown").
func cleanVersion(s string) string {
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		s = s[:i]
	}
	return s
}

type version struct{ major, minor, patch int }

// parseVersion reads "2.3.4", "2.4.0-beta.0" (a pre-release counts as
// its release), "1.6.20~ds1" (Debian's), "1.6".
func parseVersion(s string) (version, bool) {
	if i := strings.IndexFunc(s, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return version{}, false
	}
	var nums [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return version{}, false
		}
		nums[i] = x
	}
	return version{nums[0], nums[1], nums[2]}, true
}
