package nativerestore

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// ErrUnsupported wraps what a registration asks for that the native path
// does not do (yet): a pod network, privileged mode, devices, a seccomp
// profile of the node's own.
var ErrUnsupported = errors.New("not supported by the native restore path")

// RuntimeFiles are the files the CRI runtime binds into every container
// (destination: what they hold). A CRI checkpoint's CRIU images name them
// as external mounts, so a restore must bind something at each of those
// the checkpointed container had; the sources are new files of this
// node's, never the archive's.
var RuntimeFiles = []string{"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"}

// SpecInput is what the runtime spec of a natively restored container is
// built from: the registration, the base image's configuration, and of
// the archive only the destinations of its bind mounts.
type SpecInput struct {
	ID           string            // the containerd container's ID
	Registration restorecfg.Config // the sandbox and container configuration recorded for the workload
	Image        ocispec.ImageConfig
	// CgroupsPath is the new container's cgroup (runc's cgroupfs form,
	// "/parent/id").
	CgroupsPath string
	// DumpedBinds are the destinations of the bind mounts of the archive's
	// spec.dump: untrusted, used only to decide which RuntimeFiles to bind
	// and to refuse early (instead of in CRIU) an archive whose container
	// had a bind mount the registration does not have.
	DumpedBinds []string
	// Files are the sources of this node's RuntimeFiles, by destination.
	Files map[string]string
	// CgroupNamespace gives the container a cgroup namespace of its own (as
	// the CRI does on a cgroup v2 host).
	CgroupNamespace bool
}

// BuildSpec builds the OCI runtime spec of a natively restored container
// from in: the process (arguments, environment, working directory, user)
// from the registration over the image's configuration; capabilities,
// masked and read-only paths, no_new_privs, read-only root, seccomp,
// namespaces (host network only), resources, sysctls and mounts from the
// registration; a new cgroup. It does no I/O.
func BuildSpec(ctx context.Context, in SpecInput) (*specs.Spec, error) {
	reg := in.Registration
	ctr := reg.Container
	if ctr == nil || reg.Sandbox == nil {
		return nil, errors.New("build the restore spec: the registration has no container or sandbox configuration")
	}
	sc := ctr.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() || reg.Sandbox.GetLinux().GetSecurityContext().GetPrivileged() {
		return nil, fmt.Errorf("build the restore spec: a privileged container: %w", ErrUnsupported)
	}
	if n := len(ctr.GetDevices()) + len(ctr.GetCDIDevices()); n > 0 {
		return nil, fmt.Errorf("build the restore spec: %d device(s): %w", n, ErrUnsupported)
	}
	nsOpts := sc.GetNamespaceOptions()
	if nsOpts == nil {
		nsOpts = reg.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions()
	}
	if nsOpts.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		return nil, fmt.Errorf("build the restore spec: the pod's network is %s, and a pod network needs CNI, which the native path does not set up (host network only): %w", nsOpts.GetNetwork(), ErrUnsupported)
	}
	// What the native path cannot apply is refused, not dropped: the copy
	// would run with less confinement than registered.
	if u := nsOpts.GetUsernsOptions(); u != nil && u.GetMode() != runtimeapi.NamespaceMode_NODE {
		return nil, fmt.Errorf("build the restore spec: a user namespace (%s): %w", u.GetMode(), ErrUnsupported)
	}
	if p := sc.GetApparmor(); p != nil && p.GetProfileType() != runtimeapi.SecurityProfile_Unconfined {
		return nil, fmt.Errorf("build the restore spec: an AppArmor profile (%s %s): %w", p.GetProfileType(), p.GetLocalhostRef(), ErrUnsupported)
	}
	if o := sc.GetSelinuxOptions(); o.GetType() != "" || o.GetLevel() != "" || o.GetUser() != "" || o.GetRole() != "" {
		return nil, fmt.Errorf("build the restore spec: SELinux options (%s): %w", o.String(), ErrUnsupported)
	}
	if g := sc.GetSupplementalGroups(); len(g) > 0 {
		return nil, fmt.Errorf("build the restore spec: supplemental groups %v: %w", g, ErrUnsupported)
	}
	seccompOpt, err := seccompOf(sc)
	if err != nil {
		return nil, err
	}
	mounts, err := mountsOf(ctr.GetMounts(), in.DumpedBinds, in.Files)
	if err != nil {
		return nil, err
	}
	uid, gid, err := userOf(sc, in.Image.User)
	if err != nil {
		return nil, err
	}

	opts := []oci.SpecOpts{
		withMounts(mounts),
		oci.WithDefaultUnixDevices,
		oci.WithProcessArgs(argsOf(ctr, in.Image)...),
		oci.WithDefaultPathEnv,
		oci.WithEnv(in.Image.Env),
		oci.WithEnv(envOf(ctr)),
		oci.WithProcessCwd(cwdOf(ctr, in.Image)),
		oci.WithUIDGID(uid, gid),
		oci.WithCgroup(in.CgroupsPath),
		// Host network: the host's network and UTS namespaces, as the CRI
		// does for a host-network pod.
		oci.WithHostNamespace(specs.NetworkNamespace),
		oci.WithHostNamespace(specs.UTSNamespace),
		oci.WithAddedCapabilities(capNames(sc.GetCapabilities().GetAddCapabilities())),
		oci.WithDroppedCapabilities(capNames(sc.GetCapabilities().GetDropCapabilities())),
	}
	if nsOpts.GetPid() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(specs.PIDNamespace))
	}
	if nsOpts.GetIpc() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(specs.IPCNamespace))
	}
	if in.CgroupNamespace {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}))
	}
	if !sc.GetNoNewPrivs() {
		opts = append(opts, oci.WithNewPrivileges)
	}
	if sc.GetReadonlyRootfs() {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if p := sc.GetMaskedPaths(); len(p) > 0 {
		opts = append(opts, oci.WithMaskedPaths(p))
	}
	if p := sc.GetReadonlyPaths(); len(p) > 0 {
		opts = append(opts, oci.WithReadonlyPaths(p))
	}
	opts = append(opts, resourcesOf(ctr.GetLinux().GetResources())...)
	if sysctls := reg.Sandbox.GetLinux().GetSysctls(); len(sysctls) > 0 {
		opts = append(opts, withSysctls(sysctls))
	}
	if seccompOpt != nil {
		// Last: the default profile depends on the capabilities.
		opts = append(opts, seccompOpt)
	}
	ctx = namespaces.WithNamespace(ctx, "crfailoverd-spec")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: in.ID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("build the restore spec of %s: %w", in.ID, err)
	}
	return s, nil
}

// argsOf is the container's command line as the CRI makes it: the
// registration's command replaces the image's entrypoint, its arguments
// the image's command.
func argsOf(ctr *runtimeapi.ContainerConfig, img ocispec.ImageConfig) []string {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(ctr.GetCommand()) > 0 {
		entry, cmd = ctr.GetCommand(), nil
	}
	if len(ctr.GetArgs()) > 0 {
		cmd = ctr.GetArgs()
	}
	return append(slices.Clone(entry), cmd...)
}

func envOf(ctr *runtimeapi.ContainerConfig) []string {
	var out []string
	for _, kv := range ctr.GetEnvs() {
		out = append(out, kv.GetKey()+"="+string(kv.GetValue()))
	}
	return out
}

func cwdOf(ctr *runtimeapi.ContainerConfig, img ocispec.ImageConfig) string {
	if d := ctr.GetWorkingDir(); d != "" {
		return d
	}
	if img.WorkingDir != "" {
		return img.WorkingDir
	}
	return "/"
}

// userOf is the process's user: the registration's run_as_user and
// run_as_group over the image's numeric "uid[:gid]". A user name in the
// image would need the image's /etc/passwd: refused unless the
// registration gives the uid.
func userOf(sc *runtimeapi.LinuxContainerSecurityContext, imageUser string) (uid, gid uint32, err error) {
	name, group, _ := strings.Cut(imageUser, ":")
	if name != "" {
		n, err := strconv.ParseUint(name, 10, 32)
		if err != nil && sc.GetRunAsUser() == nil {
			return 0, 0, fmt.Errorf("build the restore spec: the image's user %q is a name, which the native path does not look up: %w", imageUser, ErrUnsupported)
		}
		uid = uint32(n)
	}
	if group != "" {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			gid = uint32(n)
		} else if sc.GetRunAsGroup() == nil {
			return 0, 0, fmt.Errorf("build the restore spec: the image's group %q is a name, which the native path does not look up: %w", group, ErrUnsupported)
		}
	}
	if u := sc.GetRunAsUser(); u != nil {
		uid = uint32(u.GetValue())
	}
	if g := sc.GetRunAsGroup(); g != nil {
		gid = uint32(g.GetValue())
	}
	return uid, gid, nil
}

// capNames turns the CRI's capability names ("NET_ADMIN") into the OCI
// spec's ("CAP_NET_ADMIN").
func capNames(in []string) []string {
	out := make([]string, 0, len(in))
	for _, c := range in {
		c = strings.ToUpper(c)
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		out = append(out, c)
	}
	return out
}

// seccompOf is the registration's seccomp profile: the runtime's default,
// or none (unconfined, or not asked for, as the CRI does). A profile file
// of the node's is refused. The deprecated seccomp_profile_path, which
// kubelet no longer sends, is not read.
func seccompOf(sc *runtimeapi.LinuxContainerSecurityContext) (oci.SpecOpts, error) {
	if p := sc.GetSeccomp(); p != nil {
		switch p.GetProfileType() {
		case runtimeapi.SecurityProfile_RuntimeDefault:
			return seccomp.WithDefaultProfile(), nil
		case runtimeapi.SecurityProfile_Unconfined:
			return nil, nil
		default:
			return nil, fmt.Errorf("build the restore spec: seccomp profile %s %q: %w", p.GetProfileType(), p.GetLocalhostRef(), ErrUnsupported)
		}
	}
	return nil, nil
}

// kernelMounts are the CRI runtime's own mounts of kernel file systems,
// as containerd's CRI sets them for an unprivileged container.
var kernelMounts = []specs.Mount{
	{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
	{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
	{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
	{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
	{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
}

// mountsOf is the container's mounts: the kernel file systems; this node's
// RuntimeFiles at the destinations the checkpointed container had them
// (a /dev/shm tmpfs when it had none there); the registration's mounts. A
// dumped bind mount that is neither is refused: CRIU would fail on it
// later, and the registration does not allow it.
func mountsOf(reg []*runtimeapi.Mount, dumpedBinds []string, files map[string]string) ([]specs.Mount, error) {
	out := slices.Clone(kernelMounts)
	regDest := map[string]bool{}
	for _, m := range reg {
		regDest[path.Clean(m.GetContainerPath())] = true
	}
	dumped := map[string]bool{}
	var unknown []string
	for _, d := range dumpedBinds {
		d = path.Clean(d)
		dumped[d] = true
		if !regDest[d] && !slices.Contains(RuntimeFiles, d) {
			unknown = append(unknown, d)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("build the restore spec: the checkpointed container had bind mounts at %s, which the registration does not have", strings.Join(unknown, ", "))
	}
	for _, d := range RuntimeFiles {
		if regDest[d] {
			continue
		}
		if !dumped[d] {
			if d == "/dev/shm" {
				out = append(out, specs.Mount{Destination: d, Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}})
			}
			continue
		}
		src := files[d]
		if src == "" {
			return nil, fmt.Errorf("build the restore spec: no source on this node for %s, which the checkpointed container had", d)
		}
		opts := []string{"rbind", "rprivate", "rw"}
		if d == "/dev/shm" {
			opts = []string{"rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"}
		}
		out = append(out, specs.Mount{Destination: d, Type: "bind", Source: src, Options: opts})
	}
	for _, m := range reg {
		if m.GetHostPath() == "" || !path.IsAbs(m.GetHostPath()) || !path.IsAbs(m.GetContainerPath()) {
			return nil, fmt.Errorf("build the restore spec: mount %q at %q: want absolute paths", m.GetHostPath(), m.GetContainerPath())
		}
		opts := []string{"rbind"}
		switch m.GetPropagation() {
		case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			opts = append(opts, "rshared")
		case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			opts = append(opts, "rslave")
		default:
			opts = append(opts, "rprivate")
		}
		if m.GetReadonly() {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		out = append(out, specs.Mount{Destination: path.Clean(m.GetContainerPath()), Type: "bind", Source: path.Clean(m.GetHostPath()), Options: opts})
	}
	return out, nil
}

func withMounts(m []specs.Mount) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Mounts = m
		return nil
	}
}

func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for k, v := range sysctls {
			s.Linux.Sysctl[k] = v
		}
		return nil
	}
}

// resourcesOf is the registration's CPU, memory and PID limits.
func resourcesOf(r *runtimeapi.LinuxContainerResources) []oci.SpecOpts {
	if r == nil {
		return nil
	}
	var out []oci.SpecOpts
	if v := r.GetCpuShares(); v > 0 {
		out = append(out, oci.WithCPUShares(uint64(v)))
	}
	if q, p := r.GetCpuQuota(), r.GetCpuPeriod(); q > 0 || p > 0 {
		out = append(out, oci.WithCPUCFS(q, uint64(p)))
	}
	if v := r.GetCpusetCpus(); v != "" {
		out = append(out, oci.WithCPUs(v))
	}
	if v := r.GetCpusetMems(); v != "" {
		out = append(out, oci.WithCPUsMems(v))
	}
	if v := r.GetMemoryLimitInBytes(); v > 0 {
		out = append(out, oci.WithMemoryLimit(uint64(v)))
	}
	if v := r.GetMemorySwapLimitInBytes(); v > 0 {
		out = append(out, oci.WithMemorySwap(v))
	}
	return out
}
