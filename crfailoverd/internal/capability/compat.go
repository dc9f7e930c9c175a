package capability

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Compatible reports whether node can restore a checkpoint that needs
// need, and why not. It is pure:
//
//   - the runtime that took the checkpoint must be the node's (archives of
//     containerd and CRI-O are not interchangeable; versions of one runtime
//     are: a containerd 2.4 node restores a 2.1 archive natively);
//   - the node must be able to restore at all ([Node.CanRestore]);
//   - every CPU flag the checkpoint needs must be among the node's. A node
//     that recorded no flags is unknown: incompatible only with a
//     checkpoint that records flags.
//
// A need without a runtime name (a checkpoint from before capabilities
// were recorded) asks nothing of the runtime.
func Compatible(node Node, need Needs) (ok bool, why string) {
	if need.Runtime.Name != "" {
		switch {
		case node.Runtime.Name == "":
			return false, fmt.Sprintf("its runtime is unknown, the checkpoint was taken by %s", need.Runtime)
		case !strings.EqualFold(node.Runtime.Name, need.Runtime.Name):
			return false, fmt.Sprintf("it runs %s, the checkpoint was taken by %s (archives are runtime-specific)", node.Runtime, need.Runtime)
		}
	}
	if !node.CanRestore() {
		reason := node.RestoreReason
		if reason == "" {
			reason = "no restore path found"
		}
		return false, fmt.Sprintf("its runtime %s cannot restore: %s", node.Runtime, reason)
	}
	if len(need.CPUFlags) > 0 {
		if len(node.CPUFlags) == 0 {
			return false, fmt.Sprintf("its CPU features are unknown, the checkpoint needs %d of them", len(need.CPUFlags))
		}
		if missing := Missing(node.CPUFlags, need.CPUFlags); len(missing) > 0 {
			return false, "its CPU lacks " + listFlags(missing) + " (a restored process would crash with SIGILL)"
		}
	}
	return true, ""
}

// Missing returns the flags of need that have does not contain, in need's
// order. have must be sorted (as Node.CPUFlags are).
func Missing(have, need []string) []string {
	var out []string
	for _, f := range need {
		if _, found := slices.BinarySearch(have, f); !found {
			out = append(out, f)
		}
	}
	return out
}

// listFlags names at most 8 flags, then how many more.
func listFlags(fs []string) string {
	const most = 8
	if len(fs) <= most {
		return strings.Join(fs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(fs[:most], ", "), len(fs)-most)
}

// String is "name version", or "name" without a version, or "an unknown
// runtime".
func (r Runtime) String() string {
	switch {
	case r.Name == "":
		return "an unknown runtime"
	case r.Version == "":
		return r.Name
	}
	return r.Name + " " + r.Version
}

// NormalFlags returns flags sorted, without duplicates or empty entries
// (a new slice).
func NormalFlags(flags []string) []string {
	out := slices.DeleteFunc(slices.Clone(flags), func(f string) bool { return f == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// FlagsDigest names a set of CPU flags in 32 hex digits (the first 128
// bits of the SHA-256 of the sorted flags, one per line): a checkpoint
// records the digest, the state the flags of each node. "" for no flags.
func FlagsDigest(flags []string) string {
	if len(flags) == 0 {
		return ""
	}
	h := sha256.New()
	for _, f := range NormalFlags(flags) {
		h.Write([]byte(f))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
