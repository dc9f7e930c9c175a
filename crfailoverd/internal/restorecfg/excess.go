package restorecfg

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
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
	// ContainerID is the checkpointed container's ID as config.dump
	// records it ("id"): with the sandbox ID of the spec's annotations,
	// the only runtime state directories its runtime files may come from.
	ContainerID string
}

// sandboxIDAnnotations carry, in a container's spec, the ID of its pod's
// sandbox: containerd's and CRI-O's.
var sandboxIDAnnotations = []string{"io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID"}

// ownIDs are the IDs of the runtime state directories the archive's
// container may take its runtime files from: its sandbox's (from the
// spec's annotations) and its own (config.dump's).
func (a Archive) ownIDs() []string {
	var ids []string
	if a.ContainerID != "" {
		ids = append(ids, a.ContainerID)
	}
	if a.Spec != nil {
		for _, k := range sandboxIDAnnotations {
			if v := a.Spec.Annotations[k]; v != "" && !slices.Contains(ids, v) {
				ids = append(ids, v)
			}
		}
	}
	return ids
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
// registration does not have; OCI hooks; an unconfined AppArmor profile or
// an spc_t/unconfined_t SELinux type the registration does not name. A
// privileged registration allows any capabilities, paths, profiles and
// devices, never another image, namespaces, mounts, sysctls, hooks or CDI
// annotations. Empty when the archive asks for the same or less. It does
// no I/O.
func Excess(reg Config, a Archive) []string {
	return excess(reg, a, true)
}

// SandboxExcess is Excess for the spec of a pod's sandbox (pause)
// container in a pod-level archive, against the registration's sandbox:
// its namespaces, privileges, user, seccomp, AppArmor and SELinux; no
// volumes or devices (a sandbox has none), so only the runtime's own
// mounts. The image is not compared: a registration does not record the
// runtime's pause image.
func SandboxExcess(reg Config, a Archive) []string {
	ssc := reg.Sandbox.GetLinux().GetSecurityContext()
	ctr := &runtimeapi.ContainerConfig{Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		Privileged:       ssc.GetPrivileged(),
		NamespaceOptions: ssc.GetNamespaceOptions(),
		SelinuxOptions:   ssc.GetSelinuxOptions(),
		RunAsUser:        ssc.GetRunAsUser(),
		RunAsGroup:       ssc.GetRunAsGroup(),
		ReadonlyRootfs:   ssc.GetReadonlyRootfs(),
		Seccomp:          ssc.GetSeccomp(),
		Apparmor:         ssc.GetApparmor(),
		//lint:ignore SA1019 registrations recorded from older kubelets carry the deprecated path
		SeccompProfilePath: ssc.GetSeccompProfilePath(),
	}}}
	if ctr.Linux.SecurityContext.NamespaceOptions == nil {
		ctr.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{}
	}
	return excess(Config{Sandbox: reg.Sandbox, Container: ctr}, a, false)
}

func excess(reg Config, a Archive, image bool) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if image {
		if why := imageExcess(reg, a.Images); why != "" {
			add("%s", why)
		}
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
		} else if prof != "" && noSeccomp(lx.Seccomp) {
			add("seccomp default action %s, as good as no profile (the registration's is %s)", lx.Seccomp.DefaultAction, prof)
		}
		if p := proc.ApparmorProfile; p == "unconfined" && !apparmorUnconfined(reg) {
			add("AppArmor profile %s (the registration's confines the container)", p)
		}
		if t := selinuxType(proc.SelinuxLabel); (t == "spc_t" || t == "unconfined_t") && !selinuxTypeRegistered(reg, t) {
			add("SELinux process label %s of type %s (the registration does not name that type)", proc.SelinuxLabel, t)
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
	out = append(out, mountExcess(reg, a, privileged)...)
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

// digestOf returns the sha256 digest a reference pins ("" when none): a
// bare image ID "sha256:<64 hex>", or a canonical reference's "@sha256:"
// digest. A tag that merely contains "sha256:" (attacker/sha256:<hex> is
// a tag in another repository) pins nothing.
func digestOf(ref string) string {
	if isImageID(ref) {
		return ref
	}
	_, d, ok := strings.Cut(ref, "@")
	if ok && isImageID(d) && !strings.Contains(d, "@") {
		return d
	}
	return ""
}

// isImageID: "sha256:" and 64 lower-case hex digits.
func isImageID(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	return ok && len(h) == 64 && strings.Trim(h, "0123456789abcdef") == ""
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

// namespaceOptions are the registration's namespace modes: the
// container's, else the sandbox's.
func namespaceOptions(reg Config) *runtimeapi.NamespaceOption {
	if opts := reg.Container.GetLinux().GetSecurityContext().GetNamespaceOptions(); opts != nil {
		return opts
	}
	return reg.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions()
}

// nsFiles are the names of the files in /proc/<pid>/ns/ of each type.
var nsFiles = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net", specs.PIDNamespace: "pid", specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts",
	specs.MountNamespace: "mnt", specs.UserNamespace: "user", specs.CgroupNamespace: "cgroup", specs.TimeNamespace: "time",
}

// pinnedNamespaceDirs are the directory names in which namespaces of a type are pinned by name: CNI's and the runtimes'
// netns for the network, and CRI-O's pinns directories (its
// namespaces_dir, /var/run by default, with <type>ns under it).
var pinnedNamespaceDirs = map[specs.LinuxNamespaceType][]string{
	specs.NetworkNamespace: {"netns"},
	specs.IPCNamespace:     {"ipcns"},
	specs.UTSNamespace:     {"utsns"},
	specs.UserNamespace:    {"userns"},
}

// namespacePathOK reports whether p is a shape of path by which a runtime
// joins a pod's namespace of type t: exactly /proc/<pid>/ns/<t> with pid
// above 2 (1 is the node's init, 2 its kthreadd, both in the node's
// namespaces), or <dir>/<type>ns/<name> (not under /proc, /sys or /dev)
// for a namespace pinned by CNI or CRI-O's pinns (its namespaces_dir,
// /var/run by default). Anything else (another file, /proc/self,
// /proc/<pid>/root/..., "..", a relative path) is not; nor is any path of
// a mount namespace, which no runtime shares between a pod's containers.
func namespacePathOK(t specs.LinuxNamespaceType, p string) bool {
	if t == specs.MountNamespace || !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.Contains(p, "..") {
		return false
	}
	parts := strings.Split(p[1:], "/")
	if len(parts) == 4 && parts[0] == "proc" && parts[2] == "ns" {
		pid := parts[1]
		if pid == "" || pid[0] == '0' || len(pid) > 10 || strings.Trim(pid, "0123456789") != "" {
			return false
		}
		n, err := strconv.Atoi(pid)
		return err == nil && n > 2 && nsFiles[t] != "" && parts[3] == nsFiles[t]
	}
	if parts[0] == "proc" || parts[0] == "sys" || parts[0] == "dev" {
		return false
	}
	// <dir>/<type>ns/<name>: a pinned namespace under any directory (CRI-O's
	// namespaces_dir may be set anywhere; /var/run by default).
	n := len(parts)
	return n >= 2 && slices.Contains(pinnedNamespaceDirs[t], parts[n-2]) && parts[n-1] != "" && parts[n-1] != "."
}

// namespaceExcess lists the namespaces the spec shares with the node where
// the registration had the pod's or the container's own: absent, or
// joined by a path that is not of a shape namespacePathOK allows. A
// namespace the registration shares with the node (NODE) may be anything.
func namespaceExcess(reg Config, nss []specs.LinuxNamespace) []string {
	opts := namespaceOptions(reg)
	hostNet := opts.GetNetwork() == runtimeapi.NamespaceMode_NODE
	host := map[specs.LinuxNamespaceType]bool{ // the registration shares it with the node
		specs.NetworkNamespace: hostNet,
		specs.PIDNamespace:     opts.GetPid() == runtimeapi.NamespaceMode_NODE,
		specs.IPCNamespace:     opts.GetIpc() == runtimeapi.NamespaceMode_NODE,
		specs.UTSNamespace:     hostNet, // kubelet gives a host-network pod the node's UTS
	}
	want := []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace}
	if u := opts.GetUsernsOptions(); u != nil && u.GetMode() == runtimeapi.NamespaceMode_POD { // POD is the zero mode: only when set
		want = append(want, specs.UserNamespace)
	}
	var out []string
	for _, t := range want {
		if !host[t] && !slices.ContainsFunc(nss, func(n specs.LinuxNamespace) bool { return n.Type == t }) {
			out = append(out, fmt.Sprintf("host %s namespace (none in the spec; the registration has its own)", t))
		}
	}
	for _, n := range nss {
		if n.Path == "" || host[n.Type] || namespacePathOK(n.Type, n.Path) {
			continue
		}
		out = append(out, fmt.Sprintf("%s namespace joined by path %s (not a pod's namespace: only /proc/<pid>/ns/%s with pid above 2 or a pinned namespace; the registration has its own)",
			n.Type, n.Path, nsFiles[n.Type]))
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
	"/etc/passwd":        "passwd", // CRI-O's, for a user the image's /etc/passwd lacks
	"/etc/group":         "group",  // and its group
}

// runtimeStateDirs are the directories in which containerd and CRI-O keep
// a sandbox's or container's files (under any root), and crfailoverd
// those of a container it restored through containerd's own client
// (<data_dir>/nativerestore/<id>/files): a source of a runtime file must
// be in one, as <dir>/<id>/.../<file>, where <id> is the archive's own
// container's or its sandbox's.
var runtimeStateDirs = []string{"/io.containerd.grpc.v1.cri/sandboxes/", "/io.containerd.grpc.v1.cri/containers/", "/overlay-containers/", "/nativerestore/"}

// mountExcess lists the spec's mounts that are neither the runtime's own
// nor the registration's, and the registration's mounts that the spec
// makes writable or shared; and mounts from more than one pod's kubelet
// directory.
func mountExcess(reg Config, a Archive, privileged bool) []string {
	var out []string
	regMounts := reg.Container.GetMounts()
	opts := namespaceOptions(reg)
	ids := a.ownIDs()
	pods := map[string]bool{} // <root>/kubelet/pods/<uid> of the archive's mounts
	for _, m := range a.Spec.Mounts {
		if pod, _, ok := kubeletPodPath(m.Source); ok {
			pods[pod] = true
		}
		if why, std := standardMount(m, privileged, ids, opts); std {
			if why != "" {
				out = append(out, why)
			}
			continue
		}
		i := slices.IndexFunc(regMounts, func(r *runtimeapi.Mount) bool {
			return r.GetContainerPath() == m.Destination && sameSource(r.GetHostPath(), m.Source)
		})
		if i < 0 {
			out = append(out, fmt.Sprintf("mount %s at %s (type %s) not in the registration", m.Source, m.Destination, m.Type))
			continue
		}
		r := regMounts[i]
		if r.GetReadonly() && !slices.Contains(m.Options, "ro") {
			out = append(out, fmt.Sprintf("mount %s at %s writable (the registration's is read-only)", m.Source, m.Destination))
		}
		if r.GetPropagation() != runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL &&
			slices.ContainsFunc(m.Options, func(o string) bool { return o == "shared" || o == "rshared" }) {
			out = append(out, fmt.Sprintf("mount %s at %s with shared propagation (the registration's is %s)", m.Source, m.Destination, r.GetPropagation()))
		}
	}
	if len(pods) > 1 {
		out = append(out, fmt.Sprintf("mounts from the kubelet directories of %d pods (%s): a pod's volumes are all in its own", len(pods), strings.Join(sortedKeys(pods), ", ")))
	}
	return out
}

// standardMount reports whether m is one of the runtime's own mounts, and
// what in it asks for more (a writable /sys for an unprivileged
// registration; a runtime file of another sandbox or container, or of one
// the archive does not name). ids are the archive's own sandbox and
// container IDs, opts the registration's namespace modes.
func standardMount(m specs.Mount, privileged bool, ids []string, opts *runtimeapi.NamespaceOption) (why string, std bool) {
	if types, ok := pseudoMounts[m.Destination]; ok && slices.Contains(types, m.Type) && !strings.HasPrefix(m.Source, "/") {
		if !privileged && (m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup") && !slices.Contains(m.Options, "ro") {
			return fmt.Sprintf("%s mounted writable (the runtime mounts it read-only for an unprivileged container)", m.Destination), true
		}
		return "", true
	}
	file, ok := runtimeFiles[m.Destination]
	if !ok || m.Type != "bind" && m.Type != "" || path.Clean(m.Source) != m.Source || !strings.HasPrefix(m.Source, "/") {
		return "", false
	}
	// CRI-O binds the node's own files for a pod in the node's namespaces:
	// /etc/hosts into a host-network pod, /dev/shm into a host-IPC one.
	if m.Source == m.Destination && (m.Destination == "/etc/hosts" && opts.GetNetwork() == runtimeapi.NamespaceMode_NODE ||
		m.Destination == "/dev/shm" && opts.GetIpc() == runtimeapi.NamespaceMode_NODE) {
		return "", true
	}
	if path.Base(m.Source) != file {
		return "", false
	}
	for _, d := range runtimeStateDirs {
		_, rest, ok := strings.Cut(m.Source, d)
		if !ok {
			continue
		}
		id, _, ok := strings.Cut(rest, "/")
		if !ok || id == "" {
			return "", false
		}
		switch {
		case len(ids) == 0:
			return fmt.Sprintf("runtime file %s at %s of sandbox or container %s (the archive names neither its container's ID nor its sandbox's)", m.Source, m.Destination, id), true
		case !slices.Contains(ids, id):
			return fmt.Sprintf("runtime file %s at %s of another sandbox or container %s (the archive's are %s)", m.Source, m.Destination, id, strings.Join(ids, ", ")), true
		}
		return "", true
	}
	return "", false
}

// sameSource reports whether two host paths name the same volume: equal,
// or both in a kubelet's per-pod directories (<root>/kubelet/pods/<uid>/),
// which a pod started again, or on another node, has under another UID
// (and root), with the same path after it (volume plugin and name), or
// both a termination-log file of the same container
// (containers/<name>/<file>). The UID is not compared with the
// registration's (a restored pod has a new one); mountExcess refuses
// mounts from more than one UID.
func sameSource(a, b string) bool {
	if a == b {
		return true
	}
	_, ra, oka := kubeletPodPath(a)
	_, rb, okb := kubeletPodPath(b)
	if !oka || !okb {
		return false
	}
	if ra == rb {
		return true
	}
	ca, cb := strings.Split(ra, "/"), strings.Split(rb, "/")
	return len(ca) == 3 && len(cb) == 3 && ca[0] == "containers" && cb[0] == "containers" && ca[1] == cb[1] && ca[2] != "" && cb[2] != ""
}

// kubeletPodPath splits p into <root>/kubelet/pods/<uid> and the part
// after it.
func kubeletPodPath(p string) (pod, rest string, ok bool) {
	if path.Clean(p) != p {
		return "", "", false
	}
	root, after, ok := strings.Cut(p, "/kubelet/pods/")
	if !ok {
		return "", "", false
	}
	uid, rest, ok := strings.Cut(after, "/")
	if !ok || uid == "" || rest == "" {
		return "", "", false
	}
	return root + "/kubelet/pods/" + uid, rest, true
}

// noSeccomp reports whether a seccomp profile lets every system call
// through by default (allow, or log and allow), which is as good as none.
func noSeccomp(s *specs.LinuxSeccomp) bool {
	return s == nil || s.DefaultAction == specs.ActAllow || s.DefaultAction == specs.ActLog
}

// apparmorUnconfined reports whether the registration runs the container
// without AppArmor: privileged, or its (or its sandbox's) security context
// names the unconfined profile.
func apparmorUnconfined(reg Config) bool {
	sc := reg.Container.GetLinux().GetSecurityContext()
	ssc := reg.Sandbox.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() || ssc.GetPrivileged() {
		return true
	}
	for _, p := range []*runtimeapi.SecurityProfile{sc.GetApparmor(), ssc.GetApparmor()} {
		if p != nil && p.GetProfileType() == runtimeapi.SecurityProfile_Unconfined {
			return true
		}
	}
	//lint:ignore SA1019 registrations recorded from older kubelets carry the deprecated field
	return sc.GetApparmorProfile() == "unconfined"
}

// selinuxType is the type of an SELinux label user:role:type:level ("" when
// it has none).
func selinuxType(label string) string {
	if parts := strings.SplitN(label, ":", 4); len(parts) >= 3 {
		return parts[2]
	}
	return ""
}

// selinuxTypeRegistered reports whether the registration runs the
// container with the SELinux type t: privileged (which runs spc_t), or its
// (or its sandbox's) security context names t.
func selinuxTypeRegistered(reg Config, t string) bool {
	sc := reg.Container.GetLinux().GetSecurityContext()
	ssc := reg.Sandbox.GetLinux().GetSecurityContext()
	return sc.GetPrivileged() || ssc.GetPrivileged() || sc.GetSelinuxOptions().GetType() == t || ssc.GetSelinuxOptions().GetType() == t
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
