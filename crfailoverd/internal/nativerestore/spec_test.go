package nativerestore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// registration is the bed's counter as kubelet hands it to the CRI: host
// network, its own PID namespace, the pod's IPC.
func registration(edit func(*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig)) restorecfg.Config {
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	sb := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "default", Uid: "u1"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}},
	}
	ctr := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "counter"},
		Image:    &runtimeapi.ImageSpec{Image: "localhost:5000/counter:v1"},
		Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}},
	}
	if edit != nil {
		edit(sb, ctr)
	}
	return restorecfg.Config{Sandbox: sb, Container: ctr}
}

var counterImage = ocispec.ImageConfig{Entrypoint: []string{"/counter"}, Cmd: []string{"-listen", ":8080"}, Env: []string{"PATH=/bin", "A=1"}}

var nodeFiles = map[string]string{
	"/etc/hosts": "/s/c1/files/hosts", "/etc/hostname": "/s/c1/files/hostname",
	"/etc/resolv.conf": "/s/c1/files/resolv.conf", "/dev/shm": "/s/c1/files/shm",
}

// dumpedCRI are the bind mounts containerd's CRI gives a container.
var dumpedCRI = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm"}

func build(t *testing.T, reg restorecfg.Config, dumped []string) (*specs.Spec, error) {
	t.Helper()
	return BuildSpec(context.Background(), SpecInput{
		ID: "c1", Registration: reg, Image: counterImage, CgroupsPath: "/crfailoverd/c1",
		DumpedBinds: dumped, Files: nodeFiles,
	})
}

func nsTypes(s *specs.Spec) []specs.LinuxNamespaceType {
	var out []specs.LinuxNamespaceType
	for _, n := range s.Linux.Namespaces {
		if n.Path != "" {
			panic("a namespace joined by path: " + n.Path)
		}
		out = append(out, n.Type)
	}
	slices.Sort(out)
	return out
}

func mountAt(s *specs.Spec, dest string) (specs.Mount, bool) {
	for _, m := range s.Mounts {
		if m.Destination == dest {
			return m, true
		}
	}
	return specs.Mount{}, false
}

func TestBuildSpecCounter(t *testing.T) {
	s, err := build(t, registration(nil), dumpedCRI)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Process.Args, " "); got != "/counter -listen :8080" {
		t.Errorf("args %q", got)
	}
	if !slices.Contains(s.Process.Env, "A=1") || !slices.Contains(s.Process.Env, "PATH=/bin") {
		t.Errorf("env %v lacks the image's", s.Process.Env)
	}
	if s.Linux.CgroupsPath != "/crfailoverd/c1" {
		t.Errorf("cgroups path %q", s.Linux.CgroupsPath)
	}
	// Host network: no network or UTS namespace; the container's own PID,
	// IPC (CRIU restores the dumped one) and mount namespaces.
	want := []specs.LinuxNamespaceType{specs.IPCNamespace, specs.MountNamespace, specs.PIDNamespace}
	if got := nsTypes(s); !slices.Equal(got, want) {
		t.Errorf("namespaces %v, want %v", got, want)
	}
	for dest, src := range nodeFiles {
		m, ok := mountAt(s, dest)
		if !ok || m.Source != src || m.Type != "bind" {
			t.Errorf("mount at %s: %+v, want a bind of this node's %s", dest, m, src)
		}
	}
	if _, ok := mountAt(s, "/run"); ok {
		t.Error("a /run mount the CRI does not make (CRIU would not find it in the images)")
	}
	if m, ok := mountAt(s, "/sys"); !ok || !slices.Contains(m.Options, "ro") {
		t.Errorf("/sys: %+v, want read-only", m)
	}
	if s.Process.NoNewPrivileges {
		t.Error("no_new_privs set although the registration did not ask for it (the CRI's default)")
	}
	if s.Linux.Seccomp != nil {
		t.Error("a seccomp profile the registration did not ask for")
	}
	if caps := slices.Sorted(slices.Values(s.Process.Capabilities.Bounding)); !slices.Equal(caps, restorecfg.DefaultCapabilities) {
		t.Errorf("capabilities %v, want the runtime's defaults %v", s.Process.Capabilities.Bounding, restorecfg.DefaultCapabilities)
	}
	if s.Hostname != "" {
		t.Errorf("hostname %q without a UTS namespace", s.Hostname)
	}
	if s.Process.User.UID != 0 || s.Process.User.GID != 0 {
		t.Errorf("user %+v", s.Process.User)
	}
}

// TestBuildSpecFollowsRegistration: what decides what the container may do
// comes from the registration; the archive gives nothing but bind
// destinations.
func TestBuildSpecFollowsRegistration(t *testing.T) {
	reg := registration(func(sb *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
		sc := c.Linux.SecurityContext
		sc.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN"}, DropCapabilities: []string{"CAP_KILL"}}
		sc.NoNewPrivs = true
		sc.ReadonlyRootfs = true
		sc.MaskedPaths = []string{"/proc/kcore"}
		sc.ReadonlyPaths = []string{"/proc/sys"}
		sc.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		sc.RunAsUser = &runtimeapi.Int64Value{Value: 1000}
		sc.RunAsGroup = &runtimeapi.Int64Value{Value: 2000}
		c.Command = []string{"/other"}
		c.Args = []string{"-x"}
		c.WorkingDir = "/data"
		c.Envs = []*runtimeapi.KeyValue{{Key: "B", Value: []byte("2")}}
		c.Mounts = []*runtimeapi.Mount{{HostPath: "/srv/vol", ContainerPath: "/data", Readonly: true}}
		c.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 64 << 20, CpuQuota: 50000, CpuPeriod: 100000}
		sb.Linux.Sysctls = map[string]string{"net.core.somaxconn": "1024"}
		c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_NODE
	})
	s, err := build(t, reg, append(slices.Clone(dumpedCRI), "/data"))
	if err != nil {
		t.Fatal(err)
	}
	caps := s.Process.Capabilities.Bounding
	if !slices.Contains(caps, "CAP_NET_ADMIN") || slices.Contains(caps, "CAP_KILL") {
		t.Errorf("capabilities %v: want NET_ADMIN added and KILL dropped", caps)
	}
	if !s.Process.NoNewPrivileges || !s.Root.Readonly {
		t.Error("no_new_privs or the read-only root of the registration lost")
	}
	if !slices.Equal(s.Linux.MaskedPaths, []string{"/proc/kcore"}) || !slices.Equal(s.Linux.ReadonlyPaths, []string{"/proc/sys"}) {
		t.Errorf("masked %v, read-only %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction == specs.ActAllow {
		t.Errorf("seccomp %+v, want the runtime's default profile", s.Linux.Seccomp)
	}
	if s.Process.User.UID != 1000 || s.Process.User.GID != 2000 {
		t.Errorf("user %+v, want 1000:2000", s.Process.User)
	}
	if got := strings.Join(s.Process.Args, " "); got != "/other -x" {
		t.Errorf("args %q, want the registration's command and args", got)
	}
	if s.Process.Cwd != "/data" || !slices.Contains(s.Process.Env, "B=2") {
		t.Errorf("cwd %q env %v", s.Process.Cwd, s.Process.Env)
	}
	if m, ok := mountAt(s, "/data"); !ok || m.Source != "/srv/vol" || !slices.Contains(m.Options, "ro") {
		t.Errorf("volume: %+v, want /srv/vol read-only", m)
	}
	r := s.Linux.Resources
	if r.CPU == nil || *r.CPU.Shares != 512 || *r.CPU.Quota != 50000 || r.Memory == nil || *r.Memory.Limit != 64<<20 {
		t.Errorf("resources %+v", r)
	}
	if s.Linux.Sysctl["net.core.somaxconn"] != "1024" {
		t.Errorf("sysctls %v", s.Linux.Sysctl)
	}
	if slices.Contains(nsTypes(s), specs.PIDNamespace) {
		t.Error("a PID namespace of its own for a registration with the host's")
	}
}

func TestBuildSpecShmWithoutDumpedBind(t *testing.T) {
	s, err := build(t, registration(nil), []string{"/etc/hosts"})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := mountAt(s, "/dev/shm"); !ok || m.Type != "tmpfs" {
		t.Errorf("/dev/shm: %+v, want a tmpfs when the checkpoint had no bind there", m)
	}
	if _, ok := mountAt(s, "/etc/hostname"); ok {
		t.Error("an /etc/hostname bind the checkpointed container did not have")
	}
}

func TestBuildSpecRefuses(t *testing.T) {
	for _, tc := range []struct {
		name        string
		edit        func(*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig)
		dumped      []string
		want        string
		unsupported bool
	}{
		{name: "privileged", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.Privileged = true
		}, want: "privileged", unsupported: true},
		{name: "pod network", edit: func(sb *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_POD
		}, want: "CNI", unsupported: true},
		{name: "device", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Devices = []*runtimeapi.Device{{HostPath: "/dev/kvm", ContainerPath: "/dev/kvm"}}
		}, want: "device", unsupported: true},
		{name: "localhost seccomp", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/x.json"}
		}, want: "seccomp", unsupported: true},
		{name: "image user name", edit: nil, want: "is a name", unsupported: true},
		{name: "user namespace", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}
		}, want: "user namespace", unsupported: true},
		{name: "AppArmor profile", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}, want: "AppArmor", unsupported: true},
		{name: "SELinux options", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.SelinuxOptions = &runtimeapi.SELinuxOption{Type: "container_t"}
		}, want: "SELinux", unsupported: true},
		{name: "supplemental groups", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.SupplementalGroups = []int64{1000}
		}, want: "supplemental groups", unsupported: true},
		// A planted bind mount of the host's root: the archive says so,
		// the registration does not.
		{name: "bind the registration lacks", dumped: []string{"/etc/hosts", "/host"}, want: "bind mounts at /host"},
		{name: "relative volume", edit: func(_ *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) {
			c.Mounts = []*runtimeapi.Mount{{HostPath: "vol", ContainerPath: "/data"}}
		}, want: "absolute"},
		{name: "no registration", want: "no container or sandbox"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registration(tc.edit)
			img := counterImage
			if tc.name == "image user name" {
				img.User = "app"
			}
			if tc.name == "no registration" {
				reg.Container = nil
			}
			_, err := BuildSpec(context.Background(), SpecInput{ID: "c1", Registration: reg, Image: img, CgroupsPath: "/c/c1", DumpedBinds: tc.dumped, Files: nodeFiles})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrUnsupported) != tc.unsupported {
				t.Errorf("errors.Is(ErrUnsupported) = %v, want %v", !tc.unsupported, tc.unsupported)
			}
		})
	}
}

func TestArgsOf(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/e"}, Cmd: []string{"c"}}
	for _, tc := range []struct {
		cmd, args []string
		want      string
	}{
		{nil, nil, "/e c"},
		{[]string{"/x"}, nil, "/x"},
		{nil, []string{"a"}, "/e a"},
		{[]string{"/x"}, []string{"a"}, "/x a"},
	} {
		got := strings.Join(argsOf(&runtimeapi.ContainerConfig{Command: tc.cmd, Args: tc.args}, img), " ")
		if got != tc.want {
			t.Errorf("command %v args %v: %q, want %q", tc.cmd, tc.args, got, tc.want)
		}
	}
}
