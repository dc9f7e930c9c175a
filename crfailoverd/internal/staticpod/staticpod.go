// Package staticpod writes kubelet static pod manifests that restore a
// checkpointed container from its checkpoint image.
//
// kubelet removes pods it did not create, so a pod crfailoverd restores
// straight through the CRI does not last on a Kubernetes node. A manifest
// in kubelet's static pod directory (staticPodPath) is run by kubelet
// itself, with no API server: when its image is a checkpoint image (served
// by crfailoverd's own endpoint, see package ociserve), the runtime
// restores the container from it (containerd and CRI-O both do so when
// CreateContainer is given a checkpoint image).
//
// The manifest is a core/v1 Pod named after the checkpointed workload and
// checkpoint (PodName),
// with the labels, annotations, host namespaces, ports and environment the
// workload ran with (from the sandbox and container configuration recorded
// through the CRI, and the archive's spec.dump), the checkpoint image with
// imagePullPolicy Always, restartPolicy Never (crfailoverd, not kubelet,
// brings an exited application back), and annotations naming the
// checkpoint. It is
// written atomically as crfailoverd-<namespace>_<pod>.yaml and removed when
// the workload's ownership moves elsewhere.
package staticpod

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"

	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Restore modes of the configuration (runtime.restore_mode).
const (
	ModeCRI       = "cri"
	ModeStaticPod = "static-pod"
	ModeAuto      = "auto"
)

// Annotations crfailoverd puts on the pods it writes.
const (
	// AnnWorkload names the checkpointed workload, namespace/pod/container
	// (kubelet renames a static pod to <name>-<node name>, so the pod's
	// name alone does not say which workload it is).
	AnnWorkload = "crfailoverd.io/workload"
	// AnnCheckpoint names the checkpoint restored: namespace/pod/container:seq.
	AnnCheckpoint = discovery.AnnCheckpoint
	// AnnEpoch is the cluster epoch of the placement the copy belongs to
	// (the key package discovery reads); absent for epoch 0.
	AnnEpoch = discovery.AnnEpoch
	// AnnOriginalUID is the UID of the pod that was checkpointed. The
	// manifest does not reuse it: kubelet derives a static pod's UID from
	// the manifest, and refuses to start a pod whose UID it has already
	// terminated, which a reused UID would be after a second restore.
	AnnOriginalUID = "crfailoverd.io/original-uid"
)

// kubelet's own annotations on a sandbox (the pod's source and when kubelet
// saw it) and annotations that describe the original object only.
var droppedAnnotations = []string{
	"kubernetes.io/config.seen",
	"kubernetes.io/config.source",
	"kubernetes.io/config.hash",
	"kubernetes.io/config.mirror",
	"kubectl.kubernetes.io/last-applied-configuration",
}

// Options describes the workload to restore.
type Options struct {
	Workload store.Workload // the checkpointed container; names the pod, its namespace and the container
	Seq      uint64         // the checkpoint's sequence number in the store
	Epoch    uint64         // cluster epoch of the placement (0: none)
	Image    string         // the checkpoint image, e.g. ociserve.Ref("localhost:5001", w, seq)

	// The configuration the workload ran with, as recorded through the CRI
	// (see DecodeWorkloadConfig). Either may be nil.
	Sandbox   *runtimeapi.PodSandboxConfig
	Container *runtimeapi.ContainerConfig
	// Info is the checkpoint archive's metadata (archive.Read); may be nil.
	// Its spec.dump supplies the command, working directory and
	// environment when the container configuration lacks them.
	Info *archive.Info
}

// PodName is the name of the pod that restores checkpoint seq of pod:
// POD-rSEQ. Each restore has a pod name of its own: kubelet holds back a
// static pod whose name is that of a pod still terminating, until its next
// retry about 10 s later; a new name starts at once (crfailoverd waits for
// the old pod to go before it writes the new manifest). Annotation
// AnnWorkload keeps the workload's name.
func PodName(pod string, seq uint64) string { return pod + "-r" + strconv.FormatUint(seq, 10) }

// DecodeWorkloadConfig parses the recorded configuration of a workload,
// {"sandbox": <PodSandboxConfig>, "container": <ContainerConfig>} in
// protobuf JSON, as crfailoverd keeps it per workload.
func DecodeWorkloadConfig(b []byte) (*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig, error) {
	var f struct {
		Sandbox   json.RawMessage `json:"sandbox"`
		Container json.RawMessage `json:"container"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("workload configuration: %w", err)
	}
	sb, ctr := &runtimeapi.PodSandboxConfig{}, &runtimeapi.ContainerConfig{}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	if len(f.Sandbox) > 0 {
		if err := opts.Unmarshal(f.Sandbox, sb); err != nil {
			return nil, nil, fmt.Errorf("workload configuration: sandbox: %w", err)
		}
	}
	if len(f.Container) > 0 {
		if err := opts.Unmarshal(f.Container, ctr); err != nil {
			return nil, nil, fmt.Errorf("workload configuration: container: %w", err)
		}
	}
	return sb, ctr, nil
}

// Manifest returns the static pod that restores the workload from its
// checkpoint image.
func Manifest(o Options) (*corev1.Pod, error) {
	w := o.Workload
	if err := w.Validate(); err != nil {
		return nil, fmt.Errorf("static pod: %w", err)
	}
	if o.Image == "" {
		return nil, fmt.Errorf("static pod for %s: no image", w)
	}
	if len(w.Pod) > 253-64-22 {
		// kubelet appends "-<node name>" to the name, PodName "-r<seq>".
		return nil, fmt.Errorf("static pod for %s: pod name too long for a static pod", w)
	}
	sb, ctr := o.Sandbox, o.Container
	if sb == nil {
		sb = &runtimeapi.PodSandboxConfig{}
	}
	if ctr == nil {
		ctr = &runtimeapi.ContainerConfig{}
	}

	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        PodName(w.Pod, o.Seq),
			Namespace:   w.Namespace,
			Labels:      labels(sb.Labels),
			Annotations: annotations(sb.Annotations),
		},
		// Never: when the application exits, crfailoverd restores it (by
		// writing a new manifest); kubelet restarting it from the image
		// would run a fresh copy, without its state, instead.
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever},
	}
	ann := pod.Annotations
	ann[AnnWorkload] = w.String()
	ann[AnnCheckpoint] = w.String() + ":" + strconv.FormatUint(o.Seq, 10)
	if o.Epoch != 0 {
		ann[AnnEpoch] = strconv.FormatUint(o.Epoch, 10)
	}
	if uid := sb.GetMetadata().GetUid(); uid != "" {
		ann[AnnOriginalUID] = uid
	}

	ns := sb.GetLinux().GetSecurityContext().GetNamespaceOptions()
	spec := &pod.Spec
	spec.HostNetwork = ns.GetNetwork() == runtimeapi.NamespaceMode_NODE
	spec.HostPID = ns.GetPid() == runtimeapi.NamespaceMode_NODE
	spec.HostIPC = ns.GetIpc() == runtimeapi.NamespaceMode_NODE
	if ns.GetPid() == runtimeapi.NamespaceMode_POD {
		spec.ShareProcessNamespace = new(true)
	}
	if h := sb.GetHostname(); h != "" && !spec.HostNetwork && h != w.Pod && len(content.IsDNS1123Label(h)) == 0 {
		spec.Hostname = h
	}

	c := corev1.Container{
		Name:            w.Container,
		Image:           o.Image,
		ImagePullPolicy: corev1.PullAlways,
		Command:         ctr.GetCommand(),
		Args:            ctr.GetArgs(),
		WorkingDir:      ctr.GetWorkingDir(),
		Env:             env(ctr.GetEnvs(), o.Info),
		Ports:           ports(sb.GetPortMappings(), spec.HostNetwork),
		SecurityContext: securityContext(ctr.GetLinux().GetSecurityContext()),
	}
	if o.Info != nil && o.Info.Spec != nil {
		if len(c.Command) == 0 && len(c.Args) == 0 {
			c.Command = o.Info.Spec.Process.Args
		}
		if c.WorkingDir == "" {
			c.WorkingDir = o.Info.Spec.Process.Cwd
		}
	}
	spec.Containers = []corev1.Container{c}
	return pod, nil
}

// labels returns the pod's labels from the sandbox's: kubelet's own
// (io.kubernetes.*) and invalid ones are left out.
func labels(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if strings.HasPrefix(k, "io.kubernetes.") || len(content.IsLabelKey(k)) != 0 || len(content.IsLabelValue(v)) != 0 {
			continue
		}
		out[k] = v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// annotations returns the pod's annotations from the sandbox's, without
// kubelet's own, crfailoverd's of an earlier restore and invalid keys.
func annotations(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if slices.Contains(droppedAnnotations, k) || strings.HasPrefix(k, "crfailoverd.io/") ||
			len(content.IsLabelKey(strings.ToLower(k))) != 0 {
			continue
		}
		out[k] = v
	}
	return out
}

// env returns the container's environment: the recorded container
// configuration's, else the process environment of spec.dump (without
// HOSTNAME, which the runtime sets). A name given twice keeps its last
// value.
func env(kvs []*runtimeapi.KeyValue, info *archive.Info) []corev1.EnvVar {
	var pairs [][2]string
	for _, kv := range kvs {
		pairs = append(pairs, [2]string{kv.GetKey(), string(kv.GetValue())})
	}
	if len(pairs) == 0 && info != nil && info.Spec != nil {
		for _, e := range info.Spec.Process.Env {
			k, v, _ := strings.Cut(e, "=")
			if k != "HOSTNAME" {
				pairs = append(pairs, [2]string{k, v})
			}
		}
	}
	var out []corev1.EnvVar
	index := map[string]int{}
	for _, p := range pairs {
		if p[0] == "" || strings.Contains(p[0], "=") {
			continue
		}
		if i, ok := index[p[0]]; ok {
			out[i].Value = p[1]
			continue
		}
		index[p[0]] = len(out)
		out = append(out, corev1.EnvVar{Name: p[0], Value: p[1]})
	}
	return out
}

// ports returns the container ports from the sandbox's port mappings
// (kubelet makes one for every container port of the pod). With the host
// network a port is the host's port too.
func ports(pms []*runtimeapi.PortMapping, hostNetwork bool) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	type key struct {
		port  int32
		proto corev1.Protocol
	}
	seen := map[key]bool{}
	for _, pm := range pms {
		if pm.GetContainerPort() <= 0 || pm.GetContainerPort() > 65535 {
			continue
		}
		p := corev1.ContainerPort{ContainerPort: pm.GetContainerPort(), Protocol: protocol(pm.GetProtocol())}
		if hostNetwork {
			p.HostPort = p.ContainerPort
		} else if hp := pm.GetHostPort(); hp > 0 && hp <= 65535 {
			p.HostPort = hp
			p.HostIP = pm.GetHostIp()
		}
		k := key{p.ContainerPort, p.Protocol}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b corev1.ContainerPort) int {
		if a.ContainerPort != b.ContainerPort {
			return int(a.ContainerPort - b.ContainerPort)
		}
		return strings.Compare(string(a.Protocol), string(b.Protocol))
	})
	return out
}

func protocol(p runtimeapi.Protocol) corev1.Protocol {
	switch p {
	case runtimeapi.Protocol_UDP:
		return corev1.ProtocolUDP
	case runtimeapi.Protocol_SCTP:
		return corev1.ProtocolSCTP
	}
	return corev1.ProtocolTCP
}

// securityContext carries over the parts of the container's security
// context that change what the restored process may do.
func securityContext(sc *runtimeapi.LinuxContainerSecurityContext) *corev1.SecurityContext {
	if sc == nil {
		return nil
	}
	out := &corev1.SecurityContext{}
	set := false
	if sc.GetPrivileged() {
		out.Privileged, set = new(true), true
	}
	if u := sc.GetRunAsUser(); u != nil {
		out.RunAsUser, set = new(u.GetValue()), true
	}
	if g := sc.GetRunAsGroup(); g != nil {
		out.RunAsGroup, set = new(g.GetValue()), true
	}
	if sc.GetReadonlyRootfs() {
		out.ReadOnlyRootFilesystem, set = new(true), true
	}
	if c := sc.GetCapabilities(); c != nil && (len(c.GetAddCapabilities()) > 0 || len(c.GetDropCapabilities()) > 0) {
		out.Capabilities = &corev1.Capabilities{Add: capabilities(c.GetAddCapabilities()), Drop: capabilities(c.GetDropCapabilities())}
		set = true
	}
	if !set {
		return nil
	}
	return out
}

// capabilities converts the runtime's names ("CAP_NET_ADMIN") to the Pod
// API's ("NET_ADMIN").
func capabilities(in []string) []corev1.Capability {
	var out []corev1.Capability
	for _, c := range in {
		out = append(out, corev1.Capability(strings.TrimPrefix(strings.ToUpper(c), "CAP_")))
	}
	return out
}

// FileName is the name of the manifest of pod namespace/name:
// "crfailoverd-<namespace>_<name>.yaml" ('_' cannot occur in either name,
// so every pod has its own file).
func FileName(namespace, name string) string {
	return "crfailoverd-" + namespace + "_" + name + ".yaml"
}

const header = "# Written by crfailoverd: restores a checkpointed container from its checkpoint image.\n" +
	"# crfailoverd removes this file when the workload's ownership moves elsewhere; do not edit.\n"

// Write writes pod as YAML into kubelet's static pod directory dir
// (created if missing) and returns the file's path. The file appears
// atomically (a hidden temporary file, which kubelet ignores, is fsynced
// and renamed, then the directory is fsynced), replacing an earlier
// manifest of the same pod.
func Write(dir string, pod *corev1.Pod) (path string, err error) {
	if pod == nil || pod.Name == "" || pod.Namespace == "" {
		return "", errors.New("static pod: write: pod needs a name and a namespace")
	}
	b, err := yaml.Marshal(pod)
	if err != nil {
		return "", fmt.Errorf("static pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("static pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	// One file per workload: a restore's manifest replaces the last one.
	name := pod.Name
	if id, err := store.ParseWorkload(pod.Annotations[AnnWorkload]); err == nil {
		name = id.Pod
	}
	path = filepath.Join(dir, FileName(pod.Namespace, name))
	if err := atomicfile.WriteFile(path, append([]byte(header), b...), 0o600); err != nil {
		return "", fmt.Errorf("static pod: %w", err)
	}
	return path, nil
}

// Remove deletes the manifest of pod namespace/name from dir. A manifest
// that does not exist is not an error.
func Remove(dir, namespace, name string) error {
	path := filepath.Join(dir, FileName(namespace, name))
	if err := os.Remove(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("static pod: remove %s: %w", path, err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("static pod: remove %s: %w", path, err)
	}
	return nil
}

// Load reads a manifest file.
func Load(path string) (*corev1.Pod, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("static pod: %w", err)
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(b, pod); err != nil {
		return nil, fmt.Errorf("static pod %s: %w", path, err)
	}
	return pod, nil
}

// List returns the manifests crfailoverd wrote into dir, by path (for
// example to remove those of workloads this node no longer owns after a
// restart). A missing directory has none.
func List(dir string) (map[string]*corev1.Pod, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("static pod: list %s: %w", dir, err)
	}
	out := map[string]*corev1.Pod{}
	for _, de := range des {
		n := de.Name()
		if !de.Type().IsRegular() || !strings.HasPrefix(n, "crfailoverd-") || !strings.HasSuffix(n, ".yaml") {
			continue
		}
		pod, err := Load(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		if _, mine := pod.Annotations[AnnWorkload]; mine {
			out[filepath.Join(dir, n)] = pod
		}
	}
	return out, nil
}

// Mode resolves the configured restore mode: "auto" is "static-pod" when
// kubelet's static pod directory dir exists, else "cri"; other modes are
// returned as they are.
func Mode(mode, dir string) string {
	if mode != ModeAuto {
		return mode
	}
	if dir != "" {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return ModeStaticPod
		}
	}
	return ModeCRI
}

// MaxManifestSize bounds the manifest files read from kubelet's static
// pod directory (kubelet's own limit is larger; a pod manifest is a few KB).
const MaxManifestSize = 1 << 20

// FindUserManifests finds the manifests in kubelet's static pod directory
// dir that define pod namespace/name and ask for checkpointing (the user's
// own manifests, not one crfailoverd wrote). kubelet reads every file of
// the directory but hidden ones, following symbolic links; files that are
// no regular file, larger than MaxManifestSize or do not parse as a pod
// are skipped. It returns the paths (a symbolic link's, not its target's)
// with each file's bytes; none when there is no such manifest.
func FindUserManifests(dir, namespace, name string) (map[string][]byte, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("static pod: list %s: %w", dir, err)
	}
	found := map[string][]byte{}
	for _, de := range des {
		n := de.Name()
		if strings.HasPrefix(n, ".") || strings.HasPrefix(n, "crfailoverd-") {
			continue
		}
		path := filepath.Join(dir, n)
		st, err := os.Stat(path) // follows a symbolic link, as kubelet does
		if err != nil || !st.Mode().IsRegular() || st.Size() > MaxManifestSize {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("static pod: read %s: %w", path, err)
		}
		pod := &corev1.Pod{}
		if len(b) > MaxManifestSize || yaml.Unmarshal(b, pod) != nil || pod.Kind != "Pod" {
			continue
		}
		ns := pod.Namespace
		if ns == "" {
			ns = "default" // as kubelet defaults it
		}
		if ns == namespace && pod.Name == name && pod.Annotations[discovery.AnnMode] == discovery.ModeCheckpointValue {
			if _, mine := pod.Annotations[AnnWorkload]; !mine {
				found[path] = b
			}
		}
	}
	return found, nil
}
