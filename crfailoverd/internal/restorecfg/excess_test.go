package restorecfg

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// benchSpec is the spec.dump of a real checkpoint of the bed's counter
// (containerd, kubelet emulator): its standard mounts, default
// capabilities and pod namespaces joined by path.
func benchSpec(t *testing.T) *specs.Spec {
	t.Helper()
	f, err := os.Open("../archive/testdata/counter-checkpoint.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("spec.dump not found: %v", err)
		}
		if strings.TrimPrefix(h.Name, "./") != "spec.dump" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		var s specs.Spec
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		return &s
	}
}

// benchImages are the image names of the same archive's config.dump.
var benchImages = []string{"localhost:5000/counter:latest", "localhost:5000/counter:latest",
	"localhost:5000/counter@sha256:fa509f245781c717d4b5aeb864259638d9a7000fc8404d6791bf6ca2b557de03"}

// registration is the counter's registration: its image, the pod's
// namespaces, a secret volume and a termination log from kubelet's
// per-pod directory.
func registration() Config {
	return Config{
		Sandbox: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "default"},
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}}}},
		Container: &runtimeapi.ContainerConfig{
			Image: &runtimeapi.ImageSpec{Image: "sha256:0a1b2c", UserSpecifiedImage: "localhost:5000/counter"},
			Mounts: []*runtimeapi.Mount{
				{ContainerPath: "/var/run/secrets/app", HostPath: "/var/lib/kubelet/pods/1111/volumes/kubernetes.io~secret/app", Readonly: true},
				{ContainerPath: "/dev/termination-log", HostPath: "/var/lib/kubelet/pods/1111/containers/counter/aaaa"},
			},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
				Capabilities:     &runtimeapi.Capability{DropCapabilities: []string{"NET_RAW"}},
				MaskedPaths:      []string{"/proc/kcore", "/proc/keys"},
				ReadonlyPaths:    []string{"/proc/sys"},
				Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
				RunAsUser:        &runtimeapi.Int64Value{Value: 1000},
			}},
		},
	}
}

// asRegistered makes the bench spec what the runtime writes for the
// registration: its volumes (from another pod UID and kubelet root, as
// after a restore on another node), masked paths, seccomp and user.
func asRegistered(s *specs.Spec) *specs.Spec {
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/var/run/secrets/app", Type: "bind", Source: "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/volumes/kubernetes.io~secret/app", Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/dev/termination-log", Type: "bind", Source: "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/containers/counter/bbbb", Options: []string{"rbind"}})
	c := s.Process.Capabilities
	drop := func(l []string) []string {
		var out []string
		for _, x := range l {
			if x != "CAP_NET_RAW" {
				out = append(out, x)
			}
		}
		return out
	}
	c.Bounding, c.Effective, c.Permitted = drop(c.Bounding), drop(c.Effective), drop(c.Permitted)
	s.Linux.MaskedPaths = []string{"/proc/acpi", "/proc/kcore", "/proc/keys"}
	s.Linux.ReadonlyPaths = []string{"/proc/sys"}
	s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActErrno}
	s.Process.User.UID = 1000
	return s
}

func TestExcess(t *testing.T) {
	nsIndex := func(s *specs.Spec, typ specs.LinuxNamespaceType) int {
		for i, n := range s.Linux.Namespaces {
			if n.Type == typ {
				return i
			}
		}
		t.Fatalf("bench spec has no %s namespace", typ)
		return -1
	}
	removeNS := func(s *specs.Spec, typ specs.LinuxNamespaceType) {
		i := nsIndex(s, typ)
		s.Linux.Namespaces = append(s.Linux.Namespaces[:i], s.Linux.Namespaces[i+1:]...)
	}
	allCaps := []string{"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_CHOWN", "CAP_NET_RAW"}
	for _, tc := range []struct {
		name   string
		reg    func(*Config)
		spec   func(*specs.Spec)
		images []string
		want   []string // each a part of one refusal; none: passes
	}{
		{name: "the same as registered passes"},
		{name: "less than registered passes: fewer capabilities, more masked paths, no volumes", spec: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = []string{"CAP_CHOWN"}
			s.Process.Capabilities.Effective, s.Process.Capabilities.Permitted = nil, nil
			s.Linux.MaskedPaths = append(s.Linux.MaskedPaths, "/proc/timer_list")
			s.Mounts = s.Mounts[:len(s.Mounts)-2]
		}},
		{name: "a registration naming the image by its short name and the archive by digest passes", reg: func(c *Config) {
			c.Container.Image = &runtimeapi.ImageSpec{Image: "localhost:5000/counter@sha256:fa509f245781c717d4b5aeb864259638d9a7000fc8404d6791bf6ca2b557de03"}
		}, images: benchImages[2:]},
		{name: "privileged: every capability, nothing masked, no seccomp, all devices, writable /sys", spec: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = allCaps
			s.Process.Capabilities.Effective = allCaps
			s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, s.Linux.Seccomp = nil, nil, nil
			s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
			for i := range s.Mounts {
				if s.Mounts[i].Destination == "/sys" {
					s.Mounts[i].Options = []string{"nosuid", "rw"}
				}
			}
		}, want: []string{"capabilities CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_ADMIN,CAP_SYS_MODULE,CAP_SYS_PTRACE beyond the registration's",
			"masked paths /proc/kcore,/proc/keys not masked", "read-only paths /proc/sys not read-only",
			"no seccomp profile (the registration's is RuntimeDefault)", "access to every device", "/sys mounted writable"}},
		{name: "a privileged registration allows a privileged archive, never a host mount", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.Privileged = true
		}, spec: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = allCaps
			s.Linux.MaskedPaths, s.Linux.Seccomp = nil, nil
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
		}, want: []string{"mount / at /host (type bind) not in the registration"}},
		{name: "one capability added", spec: func(s *specs.Spec) {
			s.Process.Capabilities.Effective = append(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN")
		}, want: []string{"capabilities CAP_SYS_ADMIN beyond"}},
		{name: "a capability the registration dropped", spec: func(s *specs.Spec) {
			s.Process.Capabilities.Ambient = []string{"CAP_NET_RAW"}
		}, want: []string{"capabilities CAP_NET_RAW beyond"}},
		{name: "a capability the registration added passes", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.Capabilities.AddCapabilities = []string{"NET_ADMIN"}
		}, spec: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_NET_ADMIN")
		}},
		{name: "hostNetwork: no network namespace", spec: func(s *specs.Spec) { removeNS(s, specs.NetworkNamespace) },
			want: []string{"host network namespace (none in the spec"}},
		{name: "hostPID: the node's PID namespace joined by path", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.PIDNamespace)].Path = "/proc/1/ns/pid"
		}, want: []string{"host pid namespace (joined by path /proc/1/ns/pid"}},
		{name: "host IPC and UTS and mount namespaces", spec: func(s *specs.Spec) {
			removeNS(s, specs.IPCNamespace)
			removeNS(s, specs.UTSNamespace)
			removeNS(s, specs.MountNamespace)
		}, want: []string{"host ipc namespace", "host uts namespace", "host mount namespace"}},
		{name: "a registration with a user namespace and an archive without", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}
		}, want: []string{"host user namespace"}},
		{name: "a registered hostNetwork pod's archive without a network namespace passes", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		}, spec: func(s *specs.Spec) {
			removeNS(s, specs.NetworkNamespace)
			removeNS(s, specs.UTSNamespace)
		}},
		{name: "host bind mount / at /host", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
		}, want: []string{"mount / at /host (type bind) not in the registration"}},
		{name: "a standard destination bound to a host file", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: "/etc/shadow"})
		}, want: []string{"mount /etc/shadow at /etc/hosts"}},
		{name: "a registered volume made writable and shared", spec: func(s *specs.Spec) {
			s.Mounts[len(s.Mounts)-2].Options = []string{"rbind", "rshared"}
		}, want: []string{"writable (the registration's is read-only)", "with shared propagation"}},
		{name: "a registered volume path with another volume", spec: func(s *specs.Spec) {
			s.Mounts[len(s.Mounts)-2].Source = "/var/lib/kubelet/pods/2222/volumes/kubernetes.io~secret/other"
		}, want: []string{"kubernetes.io~secret/other at /var/run/secrets/app (type bind) not in the registration"}},
		{name: "a device", spec: func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8, Minor: 0}}
		}, want: []string{"device /dev/sda (b 8:0)"}},
		{name: "a registered device passes", reg: func(c *Config) {
			c.Container.Devices = []*runtimeapi.Device{{ContainerPath: "/dev/fuse", HostPath: "/dev/fuse", Permissions: "rwm"}}
		}, spec: func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}}
		}},
		{name: "a CDI annotation", spec: func(s *specs.Spec) {
			s.Annotations["cdi.k8s.io/gpu"] = "nvidia.com/gpu=all"
		}, want: []string{"CDI annotation cdi.k8s.io/gpu=nvidia.com/gpu=all"}},
		{name: "another image", images: []string{"docker.io/library/busybox:latest", "busybox"},
			want: []string{"image docker.io/library/busybox:latest, busybox (the registration's sha256:0a1b2c, localhost:5000/counter)"}},
		{name: "an archive naming no image", images: []string{}, want: []string{"an image the archive does not name"}},
		{name: "root user, no no_new_privs, writable root", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.NoNewPrivs = true
			c.Container.Linux.SecurityContext.ReadonlyRootfs = true
		}, spec: func(s *specs.Spec) { s.Process.User.UID = 0 },
			want: []string{"no_new_privs off", "user 0 (the registration's 1000)", "a writable root file system"}},
		{name: "a sysctl and a hook", spec: func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"kernel.core_pattern": "|/tmp/x"}
			s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/sh"}}} //lint:ignore SA1019 the deprecated hook a hostile archive may use
		}, want: []string{"sysctl kernel.core_pattern=|/tmp/x", "OCI hooks"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registration()
			if tc.reg != nil {
				tc.reg(&reg)
			}
			s := asRegistered(benchSpec(t))
			if tc.spec != nil {
				tc.spec(s)
			}
			images := benchImages
			if tc.images != nil {
				images = tc.images
			}
			got := Excess(reg, Archive{Spec: s, Images: images})
			if len(got) != len(tc.want) {
				t.Fatalf("Excess = %q, want %d refusals saying %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("refusal %d %q does not say %q (all: %q)", i, got[i], w, got)
				}
			}
		})
	}
}

// TestExcessOfTheBenchArchiveAsItIs: the bed's real archive, unchanged,
// passes against a registration of what kubelet's emulator gives it (no
// volumes, masked paths or profiles), and a CRI-O style registration
// rebuilt from the container status (namespaces only) too.
func TestExcessOfTheBenchArchiveAsItIs(t *testing.T) {
	reg := Config{Sandbox: &runtimeapi.PodSandboxConfig{}, Container: &runtimeapi.ContainerConfig{Image: &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"}}}
	if got := Excess(reg, Archive{Spec: benchSpec(t), Images: benchImages}); len(got) != 0 {
		t.Fatalf("the bench archive is refused: %q", got)
	}
	reg.Container.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}}}
	if got := Excess(reg, Archive{Spec: benchSpec(t), Images: benchImages}); len(got) != 0 {
		t.Fatalf("the bench archive is refused: %q", got)
	}
	if got := Excess(reg, Archive{Images: benchImages}); len(got) != 1 || !strings.Contains(got[0], "no runtime spec") {
		t.Fatalf("an archive without a spec: %q", got)
	}
}

func TestNormalizeImage(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                        "docker.io/library/busybox:latest",
		"busybox:1.36":                   "docker.io/library/busybox:1.36",
		"library/busybox":                "docker.io/library/busybox:latest",
		"quay.io/x/y":                    "quay.io/x/y:latest",
		"localhost:5000/counter":         "localhost:5000/counter:latest",
		"localhost/counter:v1":           "localhost/counter:v1",
		"busybox@sha256:abc":             "docker.io/library/busybox@sha256:abc",
		"sha256:0a1b2c":                  "sha256:0a1b2c",
		"registry:5000/a/b:tag@sha256:1": "registry:5000/a/b:tag@sha256:1",
	} {
		if got := normalizeImage(in); got != want {
			t.Errorf("normalizeImage(%q) = %q, want %q", in, got, want)
		}
	}
}
