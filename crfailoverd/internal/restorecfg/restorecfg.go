// Package restorecfg is a workload's restore configuration: the CRI
// sandbox and container configuration a copy ran with, as the agent
// records it and the cluster replicates it (JSON with the two messages in
// protojson), and the comparison of two of them on the fields that decide
// what a restored copy may do to its node.
package restorecfg

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Config is a parsed restore configuration.
type Config struct {
	Sandbox   *runtimeapi.PodSandboxConfig
	Container *runtimeapi.ContainerConfig
}

type file struct {
	Sandbox   json.RawMessage `json:"sandbox"`
	Container json.RawMessage `json:"container"`
}

// Marshal encodes a configuration as the agent records it.
func Marshal(sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig) ([]byte, error) {
	var f file
	var err error
	if f.Sandbox, err = protojson.Marshal(sb); err != nil {
		return nil, fmt.Errorf("encode the sandbox configuration: %w", err)
	}
	if f.Container, err = protojson.Marshal(ctr); err != nil {
		return nil, fmt.Errorf("encode the container configuration: %w", err)
	}
	return json.MarshalIndent(f, "", "  ")
}

// Parse decodes a configuration; both parts are required.
func Parse(b []byte) (Config, error) {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return Config{}, fmt.Errorf("restore configuration: %w", err)
	}
	if len(f.Sandbox) == 0 {
		return Config{}, fmt.Errorf("restore configuration: no sandbox configuration")
	}
	c := Config{Sandbox: &runtimeapi.PodSandboxConfig{}, Container: &runtimeapi.ContainerConfig{}}
	if err := protojson.Unmarshal(f.Sandbox, c.Sandbox); err != nil {
		return Config{}, fmt.Errorf("restore configuration: sandbox: %w", err)
	}
	if len(f.Container) > 0 {
		if err := protojson.Unmarshal(f.Container, c.Container); err != nil {
			return Config{}, fmt.Errorf("restore configuration: container: %w", err)
		}
	}
	return c, nil
}

// cdiPrefix marks annotations that ask the runtime for devices (CDI).
const cdiPrefix = "cdi.k8s.io/"

// SecurityDiff names the security-relevant fields in which b differs from
// a: the image (b's is one of the names a was created with, sameImage);
// the sandbox's and container's Linux security contexts
// (privileged, capabilities, host namespaces, users, SELinux, seccomp,
// AppArmor, read-only root, masked and read-only paths, ...); sysctls;
// mounts; devices; CDI devices and annotations. Empty when they agree.
func SecurityDiff(a, b Config) []string {
	var out []string
	add := func(name string, differ bool) {
		if differ {
			out = append(out, name)
		}
	}
	sa, sb := a.Sandbox.GetLinux(), b.Sandbox.GetLinux()
	ca, cb := a.Container.GetLinux(), b.Container.GetLinux()
	add("image", !sameImage(a.Container.GetImage(), b.Container.GetImage()))
	add("sandbox security context", !proto.Equal(sa.GetSecurityContext(), sb.GetSecurityContext()))
	add("sandbox sysctls", !equalMaps(sa.GetSysctls(), sb.GetSysctls()))
	add("sandbox CDI annotations", !equalMaps(cdi(a.Sandbox.GetAnnotations()), cdi(b.Sandbox.GetAnnotations())))
	add("container security context (privileged, capabilities, namespaces, users, profiles)", !proto.Equal(ca.GetSecurityContext(), cb.GetSecurityContext()))
	add("container mounts", !equalMounts(a.Container.GetMounts(), b.Container.GetMounts()))
	add("container devices", !equalList(a.Container.GetDevices(), b.Container.GetDevices()))
	add("container CDI devices", !equalList(a.Container.GetCDIDevices(), b.Container.GetCDIDevices()))
	add("container CDI annotations", !equalMaps(cdi(a.Container.GetAnnotations()), cdi(b.Container.GetAnnotations())))
	return out
}

// Privileged lists what in c asks for more than an unprivileged container
// (for logs and refusals): privileged mode, added capabilities, host
// namespaces, devices, host mounts.
func Privileged(c Config) []string {
	var out []string
	sc := c.Container.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() || c.Sandbox.GetLinux().GetSecurityContext().GetPrivileged() {
		out = append(out, "privileged")
	}
	if caps := sc.GetCapabilities().GetAddCapabilities(); len(caps) > 0 {
		out = append(out, "capabilities "+strings.Join(caps, ","))
	}
	ns := c.Sandbox.GetLinux().GetSecurityContext().GetNamespaceOptions()
	for name, mode := range map[string]runtimeapi.NamespaceMode{"network": ns.GetNetwork(), "pid": ns.GetPid(), "ipc": ns.GetIpc()} {
		if mode == runtimeapi.NamespaceMode_NODE {
			out = append(out, "host "+name+" namespace")
		}
	}
	if n := len(c.Container.GetDevices()) + len(c.Container.GetCDIDevices()); n > 0 {
		out = append(out, fmt.Sprintf("%d device(s)", n))
	}
	for _, m := range c.Container.GetMounts() {
		out = append(out, "mount "+m.GetHostPath()+" at "+m.GetContainerPath())
	}
	sort.Strings(out)
	return out
}

// sameImage reports whether b runs a's image: b's image is a's (after
// docker's normalization, or by the same digest), or the reference a's
// user gave (kubelet creates a container with the image's ID and the
// user's reference beside it; a runtime restoring a checkpoint reports the
// reference). a's user-given reference counts for a only, the trusted
// side: b's own says nothing about what b runs.
func sameImage(a, b *runtimeapi.ImageSpec) bool {
	got := b.GetImage()
	for _, want := range []string{a.GetImage(), a.GetUserSpecifiedImage()} {
		if want == "" {
			continue
		}
		if want == got || got != "" && (normalizeImage(want) == normalizeImage(got) || digestOf(want) != "" && digestOf(want) == digestOf(got)) {
			return true
		}
	}
	return a.GetImage() == "" && got == ""
}

// equalMounts compares mounts on what they expose, matched by container
// path: the host path, read-only, propagation and relabeling. Host paths
// in a kubelet's per-pod directories (<root>/kubelet/pods/<uid>/...) are
// kubelet's own for the pod: its etc-hosts, its containers'
// termination-log files, the service account token and the pod's
// volumes. kubelet names them after the pod's UID, under its own root
// directory, and gives a new pod (restored, or on another node) new ones
// for the same volumes: two such paths are the same when they name the
// same thing (sameSource). Kubelet paths of more than one pod in one
// configuration are never the same as anything: a pod's are all in its
// own directory.
func equalMounts(a, b []*runtimeapi.Mount) bool {
	if len(a) != len(b) || kubeletPodsOf(a) > 1 || kubeletPodsOf(b) > 1 {
		return false
	}
	byPath := make(map[string]*runtimeapi.Mount, len(b))
	for _, m := range b {
		if byPath[m.GetContainerPath()] != nil {
			return false // one path mounted twice: compare nothing by guessing which
		}
		byPath[m.GetContainerPath()] = m
	}
	seen := make(map[string]bool, len(a))
	for _, x := range a {
		y := byPath[x.GetContainerPath()]
		if y == nil || seen[x.GetContainerPath()] {
			return false
		}
		seen[x.GetContainerPath()] = true
		if !sameSource(x.GetHostPath(), y.GetHostPath()) || x.GetReadonly() != y.GetReadonly() ||
			x.GetPropagation() != y.GetPropagation() || x.GetSelinuxRelabel() != y.GetSelinuxRelabel() {
			return false
		}
	}
	return true
}

// kubeletPodsOf counts the kubelet pod directories the mounts' host paths
// are in.
func kubeletPodsOf(ms []*runtimeapi.Mount) int {
	pods := map[string]bool{}
	for _, m := range ms {
		if pod, _, ok := kubeletPodPath(m.GetHostPath()); ok {
			pods[pod] = true
		}
	}
	return len(pods)
}

func cdi(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if strings.HasPrefix(k, cdiPrefix) {
			out[k] = v
		}
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func equalList[M proto.Message](a, b []M) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
