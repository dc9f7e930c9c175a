package restorecfg

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
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

// A peer may re-register a workload: every change it could slip past the
// comparison is one.
func TestSecurityDiffRefusesSwappedMounts(t *testing.T) {
	pod := func(uid, rest string) string { return "/var/lib/kubelet/pods/" + uid + "/" + rest }
	orig := []*runtimeapi.Mount{
		{HostPath: pod("u1", "volumes/kubernetes.io~empty-dir/data"), ContainerPath: "/data"},
		{HostPath: pod("u1", "volumes/kubernetes.io~projected/kube-api-access-abcde"), ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", Readonly: true},
		{HostPath: "/srv/keys", ContainerPath: "/data/keys", Readonly: true},
	}
	cases := []struct {
		name   string
		change func(m []*runtimeapi.Mount)
		same   bool
	}{
		{"a new pod of the same workload", func(m []*runtimeapi.Mount) {
			m[0].HostPath = pod("u2", "volumes/kubernetes.io~empty-dir/data")
			m[1].HostPath = pod("u2", "volumes/kubernetes.io~projected/kube-api-access-zzzzz")
		}, true},
		{"another kubelet root", func(m []*runtimeapi.Mount) {
			m[0].HostPath = "/tmp/x/kubelet/pods/u2/volumes/kubernetes.io~empty-dir/data"
		}, false},
		{"two pods' volumes", func(m []*runtimeapi.Mount) {
			m[0].HostPath = pod("u2", "volumes/kubernetes.io~empty-dir/data")
			m[1].HostPath = pod("u3", "volumes/kubernetes.io~projected/kube-api-access-abcde")
		}, false},
		{"another volume of the pod", func(m []*runtimeapi.Mount) {
			m[0].HostPath = pod("u1", "volumes/kubernetes.io~secret/other")
		}, false},
		{"a path that is not clean", func(m []*runtimeapi.Mount) {
			m[0].HostPath = pod("u1", "volumes/kubernetes.io~empty-dir/data/../../../../../../etc")
		}, false},
		{"a UID that is no UID", func(m []*runtimeapi.Mount) {
			m[0].HostPath = pod("u1..", "volumes/kubernetes.io~empty-dir/data")
		}, false},
		{"mounts reordered (a later rw bind covers a read-only one)", func(m []*runtimeapi.Mount) {
			m[0], m[2] = m[2], m[0]
		}, false},
		{"recursive read-only dropped", func(m []*runtimeapi.Mount) {
			m[2].RecursiveReadOnly = false
		}, false},
		{"ID mappings added", func(m []*runtimeapi.Mount) {
			m[2].UidMappings = []*runtimeapi.IDMapping{{HostId: 0, ContainerId: 0, Length: 1}}
		}, false},
		{"an image volume added", func(m []*runtimeapi.Mount) {
			m[2].Image = &runtimeapi.ImageSpec{Image: "attacker/keys:latest"}
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			a.Container.Mounts = cloneMounts(orig)
			a.Container.Mounts[2].RecursiveReadOnly = true
			b.Container.Mounts = cloneMounts(orig)
			b.Container.Mounts[2].RecursiveReadOnly = true
			tc.change(b.Container.Mounts)
			d := SecurityDiff(a, b)
			if tc.same && len(d) != 0 {
				t.Fatalf("diff %v, want none", d)
			}
			if !tc.same && !slices.Contains(d, "container mounts") {
				t.Fatalf("diff %v, want container mounts", d)
			}
		})
	}
}

func cloneMounts(m []*runtimeapi.Mount) []*runtimeapi.Mount {
	out := make([]*runtimeapi.Mount, len(m))
	for i := range m {
		out[i] = proto.Clone(m[i]).(*runtimeapi.Mount)
	}
	return out
}

func TestDigestOfPinsOnlyDigests(t *testing.T) {
	id := "sha256:" + strings.Repeat("ab", 32)
	for ref, want := range map[string]string{
		id:                                   id,
		"registry.example/app@" + id:         id,
		"attacker/" + id:                     "", // a tag in another repository
		"attacker/app:" + id[7:]:             "",
		"sha256:" + strings.Repeat("ab", 31): "",
		"":                                   "",
	} {
		if got := digestOf(ref); got != want {
			t.Errorf("digestOf(%q) = %q, want %q", ref, got, want)
		}
	}
}
