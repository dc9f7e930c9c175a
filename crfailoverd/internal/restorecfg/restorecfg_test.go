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

// kubeletMounts are what kubelet gives container app of pod uid under
// root: etc-hosts, a termination-log file, a secret volume and the
// service account token.
func kubeletMounts(root, uid, logFile, token string) []*runtimeapi.Mount {
	pod := root + "/kubelet/pods/" + uid
	return []*runtimeapi.Mount{
		{HostPath: pod + "/volumes/kubernetes.io~secret/app", ContainerPath: "/var/run/secrets/app", Readonly: true},
		{HostPath: pod + "/volumes/kubernetes.io~projected/kube-api-access-" + token, ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", Readonly: true},
		{HostPath: pod + "/etc-hosts", ContainerPath: "/etc/hosts"},
		{HostPath: pod + "/containers/app/" + logFile, ContainerPath: "/dev/termination-log"},
	}
}

func TestSecurityDiffKubeletMounts(t *testing.T) {
	const root = "/var/lib"
	cases := []struct {
		name   string
		change func(ms []*runtimeapi.Mount) []*runtimeapi.Mount
		same   bool
	}{
		{"the same pod", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount { return ms }, true},
		{"a new pod of the same spec (another UID, log file and token suffix)", func([]*runtimeapi.Mount) []*runtimeapi.Mount {
			return kubeletMounts(root, "c0ffee0123456789abcdef0123456789", "91bc", "q8w4z")
		}, true},
		{"a new pod on a node whose kubelet has another root directory", func([]*runtimeapi.Mount) []*runtimeapi.Mount {
			return kubeletMounts("/var/lib/crfailoverd-bed/nodes/n2", "u2", "91bc", "q8w4z")
		}, true},
		{"the same mounts in another order", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			return []*runtimeapi.Mount{ms[3], ms[2], ms[1], ms[0]}
		}, true},
		{"etc-hosts replaced by a host file", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[2].HostPath = "/etc/shadow"
			return ms
		}, false},
		{"the secret replaced by another of the pod's volumes", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[0].HostPath = root + "/kubelet/pods/u1/volumes/kubernetes.io~secret/other"
			return ms
		}, false},
		{"the token replaced by another volume", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[1].HostPath = root + "/kubelet/pods/u1/volumes/kubernetes.io~host-path/root"
			return ms
		}, false},
		{"the token path below a volume", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[1].HostPath += "/../../kubernetes.io~secret/app"
			return ms
		}, false},
		{"another container's termination log", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[3].HostPath = root + "/kubelet/pods/u1/containers/other/7f3a"
			return ms
		}, false},
		{"a volume of another pod beside the pod's own", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[0].HostPath = root + "/kubelet/pods/victim/volumes/kubernetes.io~secret/app"
			return ms
		}, false},
		{"a kubelet path whose UID is a path", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			for _, m := range ms {
				m.HostPath = strings.Replace(m.HostPath, "/u1/", "/../", 1)
			}
			return ms
		}, false},
		{"the secret made writable", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[0].Readonly = false
			return ms
		}, false},
		{"etc-hosts with shared propagation", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[2].Propagation = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
			return ms
		}, false},
		{"the termination log at another path", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[3].ContainerPath = "/etc/passwd"
			return ms
		}, false},
		{"a host mount added", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			return append(ms, &runtimeapi.Mount{HostPath: "/", ContainerPath: "/host"})
		}, false},
		{"a host mount in place of the token", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[1] = &runtimeapi.Mount{HostPath: "/", ContainerPath: "/host"}
			return ms
		}, false},
		{"one path mounted twice", func(ms []*runtimeapi.Mount) []*runtimeapi.Mount {
			ms[1] = &runtimeapi.Mount{HostPath: "/", ContainerPath: "/etc/hosts"}
			return ms
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			a.Container.Mounts = kubeletMounts(root, "u1", "7f3a", "7xk2p")
			b.Container.Mounts = tc.change(kubeletMounts(root, "u1", "7f3a", "7xk2p"))
			for _, pair := range [][2]Config{{a, b}, {b, a}} {
				d := SecurityDiff(pair[0], pair[1])
				if tc.same && len(d) != 0 {
					t.Fatalf("diff %v, want none", d)
				}
				if !tc.same && !slices.Equal(d, []string{"container mounts"}) {
					t.Fatalf("diff %v, want [container mounts]", d)
				}
			}
		})
	}
}

func TestSecurityDiffImage(t *testing.T) {
	const id = "sha256:928b3680b2f350537cb41174c465290d9cb6f517791c6792978ae0188304d761"
	kubelet := &runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: "localhost:5000/counter:latest"}
	cases := []struct {
		name string
		a, b *runtimeapi.ImageSpec
		same bool
	}{
		{"the same", kubelet, kubelet, true},
		{"a restored copy reports the user's reference", kubelet, &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"}, true},
		{"the reference normalized", &runtimeapi.ImageSpec{Image: "counter"}, &runtimeapi.ImageSpec{Image: "docker.io/library/counter:latest"}, true},
		{"the image's ID by a reference with its digest", kubelet, &runtimeapi.ImageSpec{Image: "localhost:5000/counter@" + id}, true},
		{"none on either side", &runtimeapi.ImageSpec{}, nil, true},
		{"another image", kubelet, &runtimeapi.ImageSpec{Image: "localhost:5000/evil:latest"}, false},
		{"another tag", kubelet, &runtimeapi.ImageSpec{Image: "localhost:5000/counter:2"}, false},
		{"another image's ID", kubelet, &runtimeapi.ImageSpec{Image: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}, false},
		{"another image claiming the user's reference", kubelet, &runtimeapi.ImageSpec{Image: "localhost:5000/evil:latest", UserSpecifiedImage: "localhost:5000/counter:latest"}, false},
		{"the reference where the registration has only the ID", &runtimeapi.ImageSpec{Image: id}, &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"}, false},
		{"an image where the registration has none", &runtimeapi.ImageSpec{}, &runtimeapi.ImageSpec{Image: "localhost:5000/evil:latest"}, false},
		{"none where the registration has one", kubelet, &runtimeapi.ImageSpec{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			a.Container.Image, b.Container.Image = tc.a, tc.b
			d := SecurityDiff(a, b)
			if tc.same && len(d) != 0 {
				t.Fatalf("diff %v, want none", d)
			}
			if !tc.same && !slices.Equal(d, []string{"image"}) {
				t.Fatalf("diff %v, want [image]", d)
			}
		})
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

func TestSameSource(t *testing.T) {
	const tok = "/volumes/kubernetes.io~projected/kube-api-access-"
	cases := []struct {
		a, b string
		same bool
	}{
		{"/data", "/data", true},
		{"/data", "/data2", false},
		{"/var/lib/kubelet/pods/u1/etc-hosts", "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/u2/etc-hosts", true},
		{"/var/lib/kubelet/pods/u1" + tok + "7xk2p", "/var/lib/kubelet/pods/u2" + tok + "q8w4z", true},
		{"/var/lib/kubelet/pods/u1" + tok + "7xk2p", "/var/lib/kubelet/pods/u2" + tok, false},
		{"/var/lib/kubelet/pods/u1" + tok + "7xk2p", "/var/lib/kubelet/pods/u2" + tok + "q8w4z/x", false},
		{"/var/lib/kubelet/pods/u1" + tok + "7xk2p", "/var/lib/kubelet/pods/u2/volumes/kubernetes.io~projected/other", false},
		{"/var/lib/kubelet/pods/u1/containers/app/7f3a", "/var/lib/kubelet/pods/u2/containers/app/91bc", true},
		{"/var/lib/kubelet/pods/u1/containers/app/7f3a", "/var/lib/kubelet/pods/u2/containers/other/91bc", false},
		{"/var/lib/kubelet/pods/u1/etc-hosts", "/var/lib/kubelet/pods/u1/../u2/etc-hosts", false},
		{"/var/lib/kubelet/pods/u1/etc-hosts", "/var/lib/kubelet/pods/u$2/etc-hosts", false},
		{"/var/lib/kubelet/pods/u1/etc-hosts", "kubelet/pods/u2/etc-hosts", false},
		{"/var/lib/kubelet/pods/u1/etc-hosts", "/etc/hosts", false},
	}
	for _, tc := range cases {
		for _, p := range [][2]string{{tc.a, tc.b}, {tc.b, tc.a}} {
			if got := sameSource(p[0], p[1]); got != tc.same {
				t.Errorf("sameSource(%q, %q) = %t, want %t", p[0], p[1], got, tc.same)
			}
		}
	}
}
