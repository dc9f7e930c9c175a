package restorecfg

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Archive is what a checkpoint archive says about how to run its
// container: the OCI runtime spec it recorded (spec.dump) and the image
// names of its config.dump (rootfsImage, rootfsImageName,
// rootfsImageRef). It is untrusted: a restore follows the registration,
// and Excess says where the archive asks for more.
type Archive struct {
	Spec   *specs.Spec
	Images []string
}

// DefaultCapabilities are the capabilities a container runtime gives a
// container that asks for none: containerd's default set, of which CRI-O's
// is a subset.
var DefaultCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD",
	"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// Excess names every field in which the archive asks for more than the
// registration reg allows a restored copy: another image; capabilities
// beyond the runtime's defaults plus the registration's added ones (less
// its dropped ones); unmasked or writable paths, no seccomp profile, no
// no_new_privs, another user or a writable root where the registration had
// them; a host network, PID, IPC, UTS or mount namespace (absent from the
// spec, or joined by a path of the host's) where the registration had its
// own; mounts that are neither the runtime's own standard ones nor the
// registration's (or are writable or shared where the registration's are
// not); devices, device access, sysctls and CDI annotations the
// registration does not have; OCI hooks. A privileged registration allows
// any capabilities, paths, profiles and devices, never another image,
// namespaces, mounts, sysctls, hooks or CDI annotations. Empty when the
// archive asks for the same or less. It does no I/O.
func Excess(reg Config, a Archive) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if why := imageExcess(reg, a.Images); why != "" {
		add("%s", why)
	}
	s := a.Spec
	if s == nil {
		return append(out, "no runtime spec to compare with the registration")
	}
	sc := reg.Container.GetLinux().GetSecurityContext()
	privileged := sc.GetPrivileged() || reg.Sandbox.GetLinux().GetSecurityContext().GetPrivileged()
	lx := s.Linux
	if lx == nil {
		lx = &specs.Linux{}
	}
	proc := s.Process
	if proc == nil {
		proc = &specs.Process{}
	}
	if !privileged {
		if caps := capsBeyond(sc.GetCapabilities(), proc.Capabilities); len(caps) > 0 {
			add("capabilities %s beyond the registration's", strings.Join(caps, ","))
		}
		if miss := missing(sc.GetMaskedPaths(), lx.MaskedPaths); len(miss) > 0 {
			add("masked paths %s not masked", strings.Join(miss, ","))
		}
		if miss := missing(sc.GetReadonlyPaths(), lx.ReadonlyPaths); len(miss) > 0 {
			add("read-only paths %s not read-only", strings.Join(miss, ","))
		}
		if prof := seccompOf(sc); prof != "" && lx.Seccomp == nil {
			add("no seccomp profile (the registration's is %s)", prof)
		}
		if why := deviceExcess(reg.Container, lx); why != nil {
			out = append(out, why...)
		}
	}
	if sc.GetNoNewPrivs() && !proc.NoNewPrivileges {
		add("no_new_privs off (the registration sets it)")
	}
	if u := sc.GetRunAsUser(); u != nil && int64(proc.User.UID) != u.GetValue() {
		add("user %d (the registration's %d)", proc.User.UID, u.GetValue())
	}
	if g := sc.GetRunAsGroup(); g != nil && int64(proc.User.GID) != g.GetValue() {
		add("group %d (the registration's %d)", proc.User.GID, g.GetValue())
	}
	if sc.GetReadonlyRootfs() && (s.Root == nil || !s.Root.Readonly) {
		add("a writable root file system (the registration's is read-only)")
	}
	out = append(out, namespaceExcess(reg, lx.Namespaces)...)
	out = append(out, mountExcess(reg.Container.GetMounts(), s.Mounts, privileged)...)
	sysctls := reg.Sandbox.GetLinux().GetSysctls()
	for _, k := range sortedKeys(lx.Sysctl) {
		if v, ok := sysctls[k]; !ok || v != lx.Sysctl[k] {
			add("sysctl %s=%s", k, lx.Sysctl[k])
		}
	}
	for _, k := range sortedKeys(cdi(s.Annotations)) {
		v := s.Annotations[k]
		if cv, ok := reg.Container.GetAnnotations()[k]; ok && cv == v {
			continue
		}
		if sv, ok := reg.Sandbox.GetAnnotations()[k]; ok && sv == v {
			continue
		}
		add("CDI annotation %s=%s", k, v)
	}
	//lint:ignore SA1019 a hostile archive may still ask for the deprecated prestart hooks, which runc runs
	if h := s.Hooks; h != nil && len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer)+len(h.Poststart)+len(h.Poststop) > 0 {
		add("OCI hooks (programs the runtime would run on the node)")
	}
	return out
}

// imageExcess says how the archive's image differs from the
// registration's, or "" when one of the archive's names is one of the
// registration's (after docker's normalization: docker.io/library/,
// :latest) or both name the same digest.
func imageExcess(reg Config, archive []string) string {
	var want []string
	for _, s := range []string{reg.Container.GetImage().GetImage(), reg.Container.GetImage().GetUserSpecifiedImage()} {
		if s != "" {
			want = append(want, s)
		}
	}
	if len(want) == 0 {
		return "" // nothing registered to compare with
	}
	var got []string
	for _, s := range archive {
		if s != "" {
			got = append(got, s)
		}
	}
	if len(got) == 0 {
		return fmt.Sprintf("an image the archive does not name (the registration's %s)", strings.Join(want, ", "))
	}
	for _, w := range want {
		for _, g := range got {
			if normalizeImage(w) == normalizeImage(g) || (digestOf(w) != "" && digestOf(w) == digestOf(g)) {
				return ""
			}
		}
	}
	return fmt.Sprintf("image %s (the registration's %s)", strings.Join(got, ", "), strings.Join(want, ", "))
}

// normalizeImage completes a reference as docker does: a name without a
// registry is docker.io's, a one-part docker.io name is in library/, and a
// name without tag or digest is :latest. A bare digest stays as it is.
func normalizeImage(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	name, digest, _ := strings.Cut(ref, "@")
	if first, _, ok := strings.Cut(name, "/"); !ok || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		name = "docker.io/" + name
	}
	if rest, ok := strings.CutPrefix(name, "docker.io/"); ok && !strings.Contains(rest, "/") {
		name = "docker.io/library/" + rest
	}
	if digest != "" {
		return name + "@" + digest
	}
	if i := strings.LastIndex(name, ":"); i < strings.LastIndex(name, "/") || i < 0 {
		name += ":latest"
	}
	return name
}

// digestOf returns the sha256 digest a reference names ("" when none).
func digestOf(ref string) string {
	if i := strings.Index(ref, "sha256:"); i >= 0 {
		return ref[i:]
	}
	return ""
}

// capsBeyond lists the capabilities in any of the spec's sets that the
// registration does not grant: the runtime's defaults less its dropped
// ones, plus its added ones ("ALL" grants or drops every one).
func capsBeyond(reg *runtimeapi.Capability, spec *specs.LinuxCapabilities) []string {
	if spec == nil {
		return nil
	}
	canon := func(c string) string {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		return c
	}
	allowed := map[string]bool{}
	dropAll := false
	for _, c := range reg.GetDropCapabilities() {
		dropAll = dropAll || canon(c) == "ALL"
	}
	if !dropAll {
		for _, c := range DefaultCapabilities {
			allowed[c] = true
		}
		for _, c := range reg.GetDropCapabilities() {
			delete(allowed, canon(c))
		}
	}
	for _, c := range append(slices.Clone(reg.GetAddCapabilities()), reg.GetAddAmbientCapabilities()...) {
		if canon(c) == "ALL" {
			return nil
		}
		allowed[canon(c)] = true
	}
	beyond := map[string]bool{}
	for _, set := range [][]string{spec.Bounding, spec.Effective, spec.Permitted, spec.Inheritable, spec.Ambient} {
		for _, c := range set {
			if !allowed[canon(c)] {
				beyond[canon(c)] = true
			}
		}
	}
	return sortedKeys(beyond)
}

// missing lists the entries of want that got lacks.
func missing(want, got []string) []string {
	var out []string
	for _, p := range want {
		if !slices.Contains(got, p) {
			out = append(out, p)
		}
	}
	return out
}

// seccompOf names the registration's seccomp profile, "" when it has none
// (or is unconfined).
func seccompOf(sc *runtimeapi.LinuxContainerSecurityContext) string {
	if p := sc.GetSeccomp(); p != nil && p.GetProfileType() != runtimeapi.SecurityProfile_Unconfined {
		if p.GetProfileType() == runtimeapi.SecurityProfile_Localhost {
			return "localhost/" + p.GetLocalhostRef()
		}
		return p.GetProfileType().String()
	}
	//lint:ignore SA1019 registrations recorded from older kubelets carry the deprecated path
	if p := sc.GetSeccompProfilePath(); p != "" && p != "unconfined" {
		return p
	}
	return ""
}

// deviceExcess lists devices of the spec that the registration does not
// have, and cgroup rules that open every device.
func deviceExcess(ctr *runtimeapi.ContainerConfig, lx *specs.Linux) []string {
	var out []string
	if len(ctr.GetCDIDevices()) == 0 { // CDI devices are in the spec by their own paths
		for _, d := range lx.Devices {
			if !slices.ContainsFunc(ctr.GetDevices(), func(r *runtimeapi.Device) bool { return r.GetContainerPath() == d.Path }) {
				out = append(out, fmt.Sprintf("device %s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor))
			}
		}
	}
	if r := lx.Resources; r != nil {
		for _, d := range r.Devices {
			if d.Allow && (d.Type == "" || d.Type == "a") {
				out = append(out, fmt.Sprintf("access to every device (cgroup rule allow %q)", d.Access))
				break
			}
		}
	}
	return out
}

// hostNamespacePaths are namespace paths that join the node's own
// namespaces (of its init, or of the runtime itself).
var hostNamespacePaths = []string{"/proc/1/ns/", "/proc/self/ns/", "/proc/thread-self/ns/"}

// namespaceExcess lists the namespaces the spec shares with the node where
// the registration had the pod's or the container's own.
func namespaceExcess(reg Config, nss []specs.LinuxNamespace) []string {
	opts := reg.Container.GetLinux().GetSecurityContext().GetNamespaceOptions()
	if opts == nil {
		opts = reg.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions()
	}
	hostNet := opts.GetNetwork() == runtimeapi.NamespaceMode_NODE
	want := []struct {
		t    specs.LinuxNamespaceType
		host bool // the registration shares it with the node
	}{
		{specs.NetworkNamespace, hostNet},
		{specs.PIDNamespace, opts.GetPid() == runtimeapi.NamespaceMode_NODE},
		{specs.IPCNamespace, opts.GetIpc() == runtimeapi.NamespaceMode_NODE},
		{specs.UTSNamespace, hostNet}, // kubelet gives a host-network pod the node's UTS
		{specs.MountNamespace, false},
	}
	if u := opts.GetUsernsOptions(); u != nil && u.GetMode() == runtimeapi.NamespaceMode_POD { // POD is the zero mode: only when set
		want = append(want, struct {
			t    specs.LinuxNamespaceType
			host bool
		}{specs.UserNamespace, false})
	}
	var out []string
	for _, w := range want {
		if w.host {
			continue
		}
		i := slices.IndexFunc(nss, func(n specs.LinuxNamespace) bool { return n.Type == w.t })
		switch {
		case i < 0:
			out = append(out, fmt.Sprintf("host %s namespace (none in the spec; the registration has its own)", w.t))
		case slices.ContainsFunc(hostNamespacePaths, func(p string) bool { return strings.HasPrefix(path.Clean(nss[i].Path), p) }):
			out = append(out, fmt.Sprintf("host %s namespace (joined by path %s; the registration has its own)", w.t, nss[i].Path))
		}
	}
	return out
}

// pseudoMounts are the runtime's own mounts of kernel file systems: the
// types each destination may have.
var pseudoMounts = map[string][]string{
	"/proc":          {"proc"},
	"/dev":           {"tmpfs"},
	"/dev/pts":       {"devpts"},
	"/dev/mqueue":    {"mqueue"},
	"/dev/shm":       {"tmpfs"},
	"/sys":           {"sysfs"},
	"/sys/fs/cgroup": {"cgroup", "cgroup2"},
}

// runtimeFiles are the runtime's own bind mounts: the destination and the
// name of the per-sandbox (or per-container) file of the runtime's state
// it binds.
var runtimeFiles = map[string]string{
	"/etc/hostname":      "hostname",
	"/etc/hosts":         "hosts",
	"/etc/resolv.conf":   "resolv.conf",
	"/dev/shm":           "shm",
	"/run/.containerenv": ".containerenv",
	"/run/secrets":       "secrets",
}

// runtimeStateDirs are the directories in which containerd and CRI-O keep
// a sandbox's or container's files (under any root): a source of a
// runtime file must be in one, as <dir>/<id>/.../<file>.
var runtimeStateDirs = []string{"/io.containerd.grpc.v1.cri/sandboxes/", "/io.containerd.grpc.v1.cri/containers/", "/overlay-containers/"}

// mountExcess lists the spec's mounts that are neither the runtime's own
// nor the registration's, and the registration's mounts that the spec
// makes writable or shared.
func mountExcess(reg []*runtimeapi.Mount, mounts []specs.Mount, privileged bool) []string {
	var out []string
	for _, m := range mounts {
		if why, std := standardMount(m, privileged); std {
			if why != "" {
				out = append(out, why)
			}
			continue
		}
		i := slices.IndexFunc(reg, func(r *runtimeapi.Mount) bool {
			return r.GetContainerPath() == m.Destination && sameSource(r.GetHostPath(), m.Source)
		})
		if i < 0 {
			out = append(out, fmt.Sprintf("mount %s at %s (type %s) not in the registration", m.Source, m.Destination, m.Type))
			continue
		}
		r := reg[i]
		if r.GetReadonly() && !slices.Contains(m.Options, "ro") {
			out = append(out, fmt.Sprintf("mount %s at %s writable (the registration's is read-only)", m.Source, m.Destination))
		}
		if r.GetPropagation() != runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL &&
			slices.ContainsFunc(m.Options, func(o string) bool { return o == "shared" || o == "rshared" }) {
			out = append(out, fmt.Sprintf("mount %s at %s with shared propagation (the registration's is %s)", m.Source, m.Destination, r.GetPropagation()))
		}
	}
	return out
}

// standardMount reports whether m is one of the runtime's own mounts, and
// what in it asks for more (a writable /sys for an unprivileged
// registration).
func standardMount(m specs.Mount, privileged bool) (why string, std bool) {
	if types, ok := pseudoMounts[m.Destination]; ok && slices.Contains(types, m.Type) && !strings.HasPrefix(m.Source, "/") {
		if !privileged && (m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup") && !slices.Contains(m.Options, "ro") {
			return fmt.Sprintf("%s mounted writable (the runtime mounts it read-only for an unprivileged container)", m.Destination), true
		}
		return "", true
	}
	file, ok := runtimeFiles[m.Destination]
	if !ok || m.Type != "bind" && m.Type != "" || path.Clean(m.Source) != m.Source || !strings.HasPrefix(m.Source, "/") || path.Base(m.Source) != file {
		return "", false
	}
	for _, d := range runtimeStateDirs {
		if _, rest, ok := strings.Cut(m.Source, d); ok && strings.Contains(rest, "/") {
			return "", true
		}
	}
	return "", false
}

// sameSource reports whether two host paths name the same volume: equal,
// or both in a kubelet's per-pod directories (<root>/kubelet/pods/<uid>/),
// which a pod started again, or on another node, has under another UID
// (and root), with the same path after it (any of a container's
// termination-log files under containers/).
func sameSource(a, b string) bool {
	if a == b {
		return true
	}
	ra, oka := kubeletPodPath(a)
	rb, okb := kubeletPodPath(b)
	if !oka || !okb {
		return false
	}
	return ra == rb || (strings.HasPrefix(ra, "containers/") && strings.HasPrefix(rb, "containers/"))
}

// kubeletPodPath returns the part of p after <root>/kubelet/pods/<uid>/.
func kubeletPodPath(p string) (string, bool) {
	if path.Clean(p) != p {
		return "", false
	}
	_, after, ok := strings.Cut(p, "/kubelet/pods/")
	if !ok {
		return "", false
	}
	uid, rest, ok := strings.Cut(after, "/")
	if !ok || uid == "" || rest == "" {
		return "", false
	}
	return rest, true
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
