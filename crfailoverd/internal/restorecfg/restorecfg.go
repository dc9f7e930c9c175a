// Package restorecfg is a workload's restore configuration: the CRI
// sandbox and container configuration a copy ran with, as the agent
// records it and the cluster replicates it (JSON with the two messages in
// protojson), and the comparison of two of them on the fields that decide
// what a restored copy may do to its node.
package restorecfg

import (
	"encoding/json"
	"fmt"
	"path"
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
// a: the image; the sandbox's and container's Linux security contexts
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
	add("image", a.Container.GetImage().GetImage() != b.Container.GetImage().GetImage())
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

// kubeletPods is where kubelet keeps each pod's volumes, named after the
// pod's UID (which a new pod of the same workload does not share).
const kubeletPods = "/var/lib/kubelet/pods/"

// equalMounts compares mounts, in order, on everything but the host path,
// and the host paths as sameHostPath does.
func equalMounts(a, b []*runtimeapi.Mount) bool {
	if len(a) != len(b) {
		return false
	}
	uidA, uidB := "", "" // the one pod each side's kubelet paths belong to
	for i := range a {
		x, y := a[i], b[i]
		if !sameHostPath(x.GetHostPath(), y.GetHostPath(), &uidA, &uidB) {
			return false
		}
		// Everything else about the mount, read-only-ness, propagation,
		// SELinux, ID mappings, recursive read-only and image volumes
		// included, must be the same.
		xc, yc := proto.Clone(x).(*runtimeapi.Mount), proto.Clone(y).(*runtimeapi.Mount)
		xc.HostPath, yc.HostPath = "", ""
		if !proto.Equal(xc, yc) {
			return false
		}
	}
	return true
}

// sameHostPath says whether two mounts' host paths are the same source: the
// same path, or the same file or volume of one pod under kubelet's pods
// directory (a pod restored elsewhere gets a new UID; its projected
// service account token volume a new random suffix). Every kubelet path of
// one side must belong to one pod (uidA, uidB remember it), so that a
// mount cannot be swapped for another pod's.
func sameHostPath(x, y string, uidA, uidB *string) bool {
	if x == y && !strings.HasPrefix(x, kubeletPods) {
		return true
	}
	ux, rx, okx := kubeletPodUID(x)
	uy, ry, oky := kubeletPodUID(y)
	if !okx || !oky || !sameInPod(rx, ry) {
		return false
	}
	for _, p := range []struct {
		uid  string
		seen *string
	}{{ux, uidA}, {uy, uidB}} {
		if *p.seen == "" {
			*p.seen = p.uid
		} else if *p.seen != p.uid {
			return false
		}
	}
	return true
}

// kubeletPodUID splits a clean path under kubeletPods into the pod UID
// and the rest.
func kubeletPodUID(p string) (uid, rest string, ok bool) {
	if path.Clean(p) != p || !strings.HasPrefix(p, kubeletPods) {
		return "", "", false
	}
	uid, rest, _ = strings.Cut(strings.TrimPrefix(p, kubeletPods), "/")
	if uid == "" || rest == "" || strings.Trim(uid, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-") != "" {
		return "", "", false
	}
	return uid, rest, true
}

// sameInPod compares the parts of two kubelet pod paths after the UID;
// the projected token volume's random suffix (kube-api-access-XXXXX) and
// a container's termination log file (containers/NAME/ID) may differ.
func sameInPod(x, y string) bool {
	cx, cy := strings.Split(x, "/"), strings.Split(y, "/")
	if len(cx) == 3 && len(cy) == 3 && cx[0] == "containers" && cy[0] == "containers" {
		return cx[1] == cy[1] && cx[2] != "" && cy[2] != ""
	}
	const token = "volumes/kubernetes.io~projected/kube-api-access-"
	if strings.HasPrefix(x, token) && strings.HasPrefix(y, token) {
		sx, _, _ := strings.Cut(strings.TrimPrefix(x, token), "/")
		sy, _, _ := strings.Cut(strings.TrimPrefix(y, token), "/")
		return strings.TrimPrefix(strings.TrimPrefix(x, token), sx) == strings.TrimPrefix(strings.TrimPrefix(y, token), sy)
	}
	return x == y
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
