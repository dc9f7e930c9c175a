package restorecfg

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path"
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

// benchContainerID is the container ID of the same archive's config.dump
// (its spec's annotations name the sandbox, 281ba8b6…).
const benchContainerID = "bee101e2ba3b9337db9f608e2dbf2bed842508c22111d9fbe50c781fe39de4eb"

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
		noID   bool     // a config.dump without the container's ID
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
		}, want: []string{"pid namespace joined by path /proc/1/ns/pid (not a pod's namespace"}},
		{name: "host namespaces by kthreadd, self, thread-self and the node's root", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.NetworkNamespace)].Path = "/proc/2/ns/net"
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/proc/self/ns/ipc"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/proc/thread-self/ns/uts"
			s.Linux.Namespaces[nsIndex(s, specs.MountNamespace)].Path = "/proc/1/root/proc/1/ns/mnt"
		}, want: []string{"ipc namespace joined by path /proc/self/ns/ipc", "uts namespace joined by path /proc/thread-self/ns/uts",
			"mount namespace joined by path /proc/1/root/proc/1/ns/mnt", "network namespace joined by path /proc/2/ns/net"}},
		{name: "namespace paths of other shapes", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.NetworkNamespace)].Path = "/proc/26478/ns/ipc" // another type's file
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/proc/26478/../1/ns/ipc"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/var/run/netns/x" // a network namespace for UTS
			s.Linux.Namespaces[nsIndex(s, specs.PIDNamespace)].Path = "/proc/026478/ns/pid"
			s.Linux.Namespaces[nsIndex(s, specs.MountNamespace)].Path = "/proc/26478/ns/mnt" // no runtime shares a mount namespace
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace, Path: "/proc/1/ns/cgroup"})
		}, want: []string{"pid namespace joined by path /proc/026478/ns/pid", "ipc namespace joined by path /proc/26478/../1/ns/ipc",
			"uts namespace joined by path /var/run/netns/x", "mount namespace joined by path /proc/26478/ns/mnt",
			"network namespace joined by path /proc/26478/ns/ipc", "cgroup namespace joined by path /proc/1/ns/cgroup"}},
		{name: "more namespace paths of other shapes", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.NetworkNamespace)].Path = "/var/run/netns/../../proc/1/ns/net"
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/proc/26478/ns/ipc/x"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/etc/passwd"
		}, want: []string{"ipc namespace joined by path /proc/26478/ns/ipc/x", "uts namespace joined by path /etc/passwd",
			"network namespace joined by path /var/run/netns/../../proc/1/ns/net"}},
		{name: "CRI-O's namespaces pinned under a namespaces_dir of its own pass", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/var/lib/crfailoverd-bed/nodes/n1/crio/ns/ipcns/457b4f59-83ac-42b1-815c-35693feba893"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/srv/crio/ns/utsns/457b4f59"
		}},
		{name: "a pinned-looking path under /proc, /sys or /dev, or of another type", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/proc/1/ipcns/x"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/srv/crio/ns/ipcns/457b4f59"
			s.Linux.Namespaces[nsIndex(s, specs.NetworkNamespace)].Path = "/dev/netns/x"
		}, want: []string{"ipc namespace joined by path /proc/1/ipcns/x", "uts namespace joined by path /srv/crio/ns/ipcns/457b4f59",
			"network namespace joined by path /dev/netns/x"}},
		{name: "CNI's and the runtimes' pinned namespaces pass", spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.NetworkNamespace)].Path = "/var/run/netns/cni-1f9b3c6e-2a4d-4b7e-9c1f-5a8d2e6b3c90"
			s.Linux.Namespaces[nsIndex(s, specs.IPCNamespace)].Path = "/run/ipcns/1f9b3c6e"
			s.Linux.Namespaces[nsIndex(s, specs.UTSNamespace)].Path = "/var/run/utsns/1f9b3c6e"
			s.Linux.Namespaces[nsIndex(s, specs.PIDNamespace)].Path = "/proc/3/ns/pid"
		}},
		{name: "a registered host PID namespace may be joined by any path", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_NODE
		}, spec: func(s *specs.Spec) {
			s.Linux.Namespaces[nsIndex(s, specs.PIDNamespace)].Path = "/proc/1/ns/pid"
		}},
		{name: "another sandbox's /dev/shm and /etc/hosts", spec: func(s *specs.Spec) {
			for i, m := range s.Mounts {
				if m.Destination == "/dev/shm" || m.Destination == "/etc/hosts" {
					s.Mounts[i].Source = strings.Replace(m.Source, "281ba8b6a940", "999ba8b6a940", 1)
				}
			}
		}, want: []string{"runtime file /var/lib/crfailoverd-bed/nodes/n1/containerd/io.containerd.grpc.v1.cri/sandboxes/999ba8b6a940658303438993e3671111785a5a5d389b308dbe245e2323c37c77/hosts at /etc/hosts of another sandbox or container 999ba8b6a940",
			"runtime file /run/containerd/io.containerd.grpc.v1.cri/sandboxes/999ba8b6a940658303438993e3671111785a5a5d389b308dbe245e2323c37c77/shm at /dev/shm of another sandbox"}},
		{name: "another container's CRI-O state", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets", Type: "bind", Source: "/run/containers/storage/overlay-containers/0000/userdata/secrets"})
		}, want: []string{"runtime file /run/containers/storage/overlay-containers/0000/userdata/secrets at /run/secrets of another sandbox or container 0000"}},
		{name: "a natively restored container's own files pass", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets", Type: "bind", Source: "/var/lib/crfailoverd/nativerestore/" + benchContainerID + "/files/secrets"})
		}},
		{name: "another natively restored container's files", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets", Type: "bind", Source: "/var/lib/crfailoverd/nativerestore/crf-other-1234/files/secrets"})
		}, want: []string{"runtime file /var/lib/crfailoverd/nativerestore/crf-other-1234/files/secrets at /run/secrets of another sandbox or container crf-other-1234"}},
		{name: "the archive's own container's state passes", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets", Type: "bind", Source: "/run/containerd/io.containerd.grpc.v1.cri/containers/" + benchContainerID + "/secrets"})
		}},
		{name: "runtime files of a sandbox the archive does not name", spec: func(s *specs.Spec) {
			delete(s.Annotations, "io.kubernetes.cri.sandbox-id")
		}, noID: true, want: []string{"hostname at /etc/hostname of sandbox or container 281ba8b6a940658303438993e3671111785a5a5d389b308dbe245e2323c37c77 (the archive names neither",
			"hosts at /etc/hosts of sandbox or container", "resolv.conf at /etc/resolv.conf of sandbox or container", "shm at /dev/shm of sandbox or container"}},
		{name: "the node's /etc/hosts and /dev/shm where the registration has the pod's own", spec: func(s *specs.Spec) {
			for i, m := range s.Mounts {
				if m.Destination == "/dev/shm" || m.Destination == "/etc/hosts" {
					s.Mounts[i].Source = m.Destination
				}
			}
		}, want: []string{"mount /etc/hosts at /etc/hosts (type bind) not in the registration", "mount /dev/shm at /dev/shm (type bind) not in the registration"}},
		{name: "the node's /etc/hosts and /dev/shm in a registered host-network, host-IPC pod pass", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
			c.Container.Linux.SecurityContext.NamespaceOptions.Ipc = runtimeapi.NamespaceMode_NODE
		}, spec: func(s *specs.Spec) {
			removeNS(s, specs.NetworkNamespace)
			removeNS(s, specs.UTSNamespace)
			removeNS(s, specs.IPCNamespace)
			for i, m := range s.Mounts {
				if m.Destination == "/dev/shm" || m.Destination == "/etc/hosts" {
					s.Mounts[i].Source = m.Destination
				}
			}
		}},
		{name: "AppArmor unconfined, SELinux spc_t", spec: func(s *specs.Spec) {
			s.Process.ApparmorProfile = "unconfined"
			s.Process.SelinuxLabel = "system_u:system_r:spc_t:s0"
		}, want: []string{"AppArmor profile unconfined", "SELinux process label system_u:system_r:spc_t:s0 of type spc_t"}},
		{name: "SELinux unconfined_t", spec: func(s *specs.Spec) {
			s.Process.SelinuxLabel = "unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023"
		}, want: []string{"SELinux process label unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023 of type unconfined_t"}},
		{name: "a registration naming them allows AppArmor unconfined and SELinux spc_t", reg: func(c *Config) {
			c.Container.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
			c.Container.Linux.SecurityContext.SelinuxOptions = &runtimeapi.SELinuxOption{Type: "spc_t"}
		}, spec: func(s *specs.Spec) {
			s.Process.ApparmorProfile = "unconfined"
			s.Process.SelinuxLabel = "system_u:system_r:spc_t:s0"
		}},
		{name: "the runtime's AppArmor profile and SELinux type pass", spec: func(s *specs.Spec) {
			s.Process.ApparmorProfile = "cri-containerd.apparmor.d"
			s.Process.SelinuxLabel = "system_u:system_r:container_t:s0:c1,c2"
		}},
		{name: "a seccomp profile allowing everything", spec: func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow}
		}, want: []string{"seccomp default action SCMP_ACT_ALLOW, as good as no profile (the registration's is RuntimeDefault)"}},
		{name: "a seccomp profile logging everything", spec: func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActLog}
		}, want: []string{"seccomp default action SCMP_ACT_LOG"}},
		{name: "volumes of two pods", spec: func(s *specs.Spec) {
			s.Mounts[len(s.Mounts)-1].Source = "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/3333/containers/counter/bbbb"
		}, want: []string{"mounts from the kubelet directories of 2 pods (/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222, /var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/3333)"}},
		{name: "another container's termination log", spec: func(s *specs.Spec) {
			s.Mounts[len(s.Mounts)-1].Source = "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/containers/other/bbbb"
		}, want: []string{"mount /var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/containers/other/bbbb at /dev/termination-log (type bind) not in the registration"}},
		{name: "another plugin's volume of the same name", spec: func(s *specs.Spec) {
			s.Mounts[len(s.Mounts)-2].Source = "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/volumes/kubernetes.io~empty-dir/app"
		}, want: []string{"mount /var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/volumes/kubernetes.io~empty-dir/app at /var/run/secrets/app (type bind) not in the registration"}},
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
			s.Mounts[len(s.Mounts)-2].Source = "/var/lib/crfailoverd-bed/nodes/n2/kubelet/pods/2222/volumes/kubernetes.io~secret/other"
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
			id := benchContainerID
			if tc.noID {
				id = ""
			}
			got := Excess(reg, Archive{Spec: s, Images: images, ContainerID: id})
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
	if got := Excess(reg, Archive{Spec: benchSpec(t), Images: benchImages, ContainerID: benchContainerID}); len(got) != 0 {
		t.Fatalf("the bench archive is refused: %q", got)
	}
	reg.Container.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}}}
	if got := Excess(reg, Archive{Spec: benchSpec(t), Images: benchImages, ContainerID: benchContainerID}); len(got) != 0 {
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

// crioArchive is the CRI-O-shaped checkpoint of testdata (see its README)
// and the registration crfailoverd rebuilds from CRI-O's container status.
func crioArchive(t *testing.T) (Config, Archive) {
	t.Helper()
	read := func(name string, v any) {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var s specs.Spec
	read("crio-spec.dump", &s)
	var cd struct {
		ID, RootfsImage, RootfsImageName, RootfsImageRef string
	}
	read("crio-config.dump", &cd)
	b, err := os.ReadFile("testdata/crio-registration.json")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return reg, Archive{Spec: &s, Images: []string{cd.RootfsImage, cd.RootfsImageName, cd.RootfsImageRef}, ContainerID: cd.ID}
}

// TestExcessOfACRIOArchive: what CRI-O writes passes (its pinned
// namespaces, its runtime files from the sandbox's and the container's
// userdata, /etc/passwd and /etc/group for a user the image lacks, the
// node's /etc/hosts in a host-network pod); another container's files
// and the node's /etc/hosts in a pod with its own network do not.
func TestExcessOfACRIOArchive(t *testing.T) {
	const otherCtr = "/var/run/containers/storage/overlay-containers/d00d/userdata/"
	hostNetwork := func(c *Config, s *specs.Spec) {
		c.Container.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		c.Sandbox.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		c.Container.Mounts = c.Container.Mounts[1:] // kubelet's etc-hosts
		var nss []specs.LinuxNamespace
		for _, n := range s.Linux.Namespaces {
			if n.Type != specs.NetworkNamespace && n.Type != specs.UTSNamespace {
				nss = append(nss, n)
			}
		}
		s.Linux.Namespaces = nss
	}
	nodeHosts := func(s *specs.Spec) {
		for i, m := range s.Mounts {
			if m.Destination == "/etc/hosts" {
				s.Mounts[i] = specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: "/etc/hosts", Options: []string{"rw", "bind"}}
			}
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*Config, *specs.Spec)
		want   []string
	}{
		{name: "as CRI-O writes it"},
		{name: "a host-network pod with the node's /etc/hosts", change: func(c *Config, s *specs.Spec) { hostNetwork(c, s); nodeHosts(s) }},
		{name: "the node's /etc/hosts in a pod with its own network", change: func(c *Config, s *specs.Spec) { nodeHosts(s) },
			want: []string{"mount /etc/hosts at /etc/hosts (type bind) not in the registration"}},
		{name: "another container's passwd and group", change: func(c *Config, s *specs.Spec) {
			for i, m := range s.Mounts {
				if m.Destination == "/etc/passwd" || m.Destination == "/etc/group" {
					s.Mounts[i].Source = otherCtr + path.Base(m.Source)
				}
			}
		}, want: []string{"runtime file " + otherCtr + "passwd at /etc/passwd of another sandbox or container d00d",
			"runtime file " + otherCtr + "group at /etc/group of another sandbox or container d00d"}},
		{name: "the node's network namespace by kthreadd", change: func(c *Config, s *specs.Spec) {
			for i, n := range s.Linux.Namespaces {
				if n.Type == specs.NetworkNamespace {
					s.Linux.Namespaces[i].Path = "/proc/2/ns/net"
				}
			}
		}, want: []string{"network namespace joined by path /proc/2/ns/net"}},
		{name: "AppArmor unconfined (the registration records no security context)", change: func(c *Config, s *specs.Spec) {
			s.Process.ApparmorProfile = "unconfined"
		}, want: []string{"AppArmor profile unconfined"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, a := crioArchive(t)
			if tc.change != nil {
				tc.change(&reg, a.Spec)
			}
			got := Excess(reg, a)
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

// TestSandboxExcess: a pod-level archive's sandbox spec is held to the
// registration's sandbox: its namespaces, privileges and the runtime's
// own mounts only.
func TestSandboxExcess(t *testing.T) {
	// the bench container's spec as the sandbox's: its own PID namespace,
	// the pod's others, the sandbox's files.
	sandboxSpec := func(t *testing.T) *specs.Spec {
		s := benchSpec(t)
		s.Annotations["io.kubernetes.cri.container-type"] = "sandbox"
		return s
	}
	sandboxID := "281ba8b6a940658303438993e3671111785a5a5d389b308dbe245e2323c37c77"
	for _, tc := range []struct {
		name   string
		reg    func(*Config)
		change func(*specs.Spec)
		want   []string
	}{
		{name: "the runtime's sandbox passes"},
		{name: "a host mount, the node's network, more capabilities", change: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
			for i, n := range s.Linux.Namespaces {
				if n.Type == specs.NetworkNamespace {
					s.Linux.Namespaces[i].Path = "/proc/1/ns/net"
				}
			}
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}, want: []string{"capabilities CAP_SYS_ADMIN beyond", "network namespace joined by path /proc/1/ns/net", "mount / at /host (type bind) not in the registration"}},
		{name: "a volume of the container's registration", change: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/var/run/secrets/app", Type: "bind", Source: "/var/lib/kubelet/pods/1111/volumes/kubernetes.io~secret/app", Options: []string{"rbind", "ro"}})
		}, want: []string{"mount /var/lib/kubelet/pods/1111/volumes/kubernetes.io~secret/app at /var/run/secrets/app (type bind) not in the registration"}},
		{name: "no seccomp where the sandbox has one", reg: func(c *Config) {
			c.Sandbox.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}, want: []string{"no seccomp profile (the registration's is RuntimeDefault)"}},
		{name: "a privileged sandbox allows capabilities, never a host mount", reg: func(c *Config) {
			c.Sandbox.Linux.SecurityContext.Privileged = true
		}, change: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/"})
		}, want: []string{"mount / at /host (type bind) not in the registration"}},
		{name: "a host-network sandbox", reg: func(c *Config) {
			c.Sandbox.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		}, change: func(s *specs.Spec) {
			var nss []specs.LinuxNamespace
			for _, n := range s.Linux.Namespaces {
				if n.Type != specs.NetworkNamespace && n.Type != specs.UTSNamespace {
					nss = append(nss, n)
				}
			}
			s.Linux.Namespaces = nss
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registration()
			if tc.reg != nil {
				tc.reg(&reg)
			}
			s := sandboxSpec(t)
			if tc.change != nil {
				tc.change(s)
			}
			got := SandboxExcess(reg, Archive{Spec: s, ContainerID: sandboxID})
			if len(got) != len(tc.want) {
				t.Fatalf("SandboxExcess = %q, want %d refusals saying %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("refusal %d %q does not say %q (all: %q)", i, got[i], w, got)
				}
			}
		})
	}
}
