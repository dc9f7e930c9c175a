package restorecfg

import (
	"slices"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func base() Config {
	return Config{
		Sandbox:   &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Namespace: "ns", Uid: "u1"}, Annotations: map[string]string{"a": "1"}},
		Container: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Image: &runtimeapi.ImageSpec{Image: "counter:1"}},
	}
}

func TestRoundTrip(t *testing.T) {
	c := base()
	b, err := Marshal(c.Sandbox, c.Container)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := SecurityDiff(c, got); len(d) != 0 || got.Sandbox.GetMetadata().GetUid() != "u1" {
		t.Fatalf("round trip: diff %v, %+v", d, got)
	}
	for _, bad := range []string{``, `{}`, `{"sandbox": 7}`, `{"sandbox":{"nope":1}}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestSecurityDiff(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Config)
		want   string // "" for no difference
	}{
		{"another uid and other annotations are no security change", func(c *Config) {
			c.Sandbox.Metadata.Uid = "u2"
			c.Sandbox.Annotations["b"] = "2"
		}, ""},
		{"image", func(c *Config) { c.Container.Image.Image = "evil:1" }, "image"},
		{"privileged container", func(c *Config) {
			c.Container.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
		}, "container security context"},
		{"capabilities", func(c *Config) {
			c.Container.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN"}}}}
		}, "container security context"},
		{"host network", func(c *Config) {
			c.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
		}, "sandbox security context"},
		{"a host mount", func(c *Config) { c.Container.Mounts = []*runtimeapi.Mount{{HostPath: "/", ContainerPath: "/host"}} }, "container mounts"},
		{"a mount made writable", func(c *Config) {
			c.Container.Mounts = []*runtimeapi.Mount{{HostPath: "/var/lib/kubelet/pods/u1/volumes/x", ContainerPath: "/data", Readonly: false}}
		}, "container mounts"},
		{"a device", func(c *Config) { c.Container.Devices = []*runtimeapi.Device{{HostPath: "/dev/kmsg"}} }, "container devices"},
		{"a CDI annotation", func(c *Config) { c.Container.Annotations = map[string]string{"cdi.k8s.io/gpu": "nvidia.com/gpu=all"} }, "container CDI annotations"},
		{"a sysctl", func(c *Config) {
			c.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{Sysctls: map[string]string{"kernel.core_pattern": "|/evil"}}
		}, "sandbox sysctls"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.change(&b)
			d := SecurityDiff(a, b)
			if tc.want == "" {
				if len(d) != 0 {
					t.Fatalf("diff %v, want none", d)
				}
				return
			}
			if !slices.ContainsFunc(d, func(s string) bool { return strings.HasPrefix(s, tc.want) }) {
				t.Fatalf("diff %v, want %q", d, tc.want)
			}
		})
	}
}

func TestKubeletPodPathsOfANewPodAreTheSameMounts(t *testing.T) {
	a, b := base(), base()
	a.Container.Mounts = []*runtimeapi.Mount{{HostPath: "/var/lib/kubelet/pods/u1/etc-hosts", ContainerPath: "/etc/hosts"},
		{HostPath: "/var/lib/kubelet/pods/u1/containers/app/7f3a", ContainerPath: "/dev/termination-log"}}
	b.Container.Mounts = []*runtimeapi.Mount{{HostPath: "/var/lib/kubelet/pods/u2/etc-hosts", ContainerPath: "/etc/hosts"},
		{HostPath: "/var/lib/kubelet/pods/u2/containers/app/91bc", ContainerPath: "/dev/termination-log"}}
	if d := SecurityDiff(a, b); len(d) != 0 {
		t.Fatalf("a new pod's kubelet volumes count as a change: %v", d)
	}
	b.Container.Mounts[0].HostPath = "/etc/shadow"
	if d := SecurityDiff(a, b); len(d) == 0 {
		t.Fatal("a kubelet volume replaced by a host file is no change")
	}
}

func TestPrivileged(t *testing.T) {
	c := base()
	if p := Privileged(c); len(p) != 0 {
		t.Fatalf("a plain configuration is privileged: %v", p)
	}
	c.Container.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	c.Container.Mounts = []*runtimeapi.Mount{{HostPath: "/", ContainerPath: "/host"}}
	if p := Privileged(c); !slices.Contains(p, "privileged") || !slices.Contains(p, "mount / at /host") {
		t.Fatalf("privileged configuration reported as %v", p)
	}
}
