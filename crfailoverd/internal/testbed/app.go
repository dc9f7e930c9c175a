package testbed

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/test-app/imagebuild"
)

// PodSpec describes a pod of the counter test application, as kubelet would
// hand it to the CRI.
type PodSpec struct {
	Name        string
	Namespace   string
	UID         string // generated when empty
	Container   string // container name, default "counter"
	Labels      map[string]string
	Annotations map[string]string // for example hitachienergy.com/cr_mode: "cr"
	Args        []string          // the app's arguments (for example -listen :8081); none: its defaults
	Port        int               // the port it serves on (its -listen); 0: AppPort
}

// Pod is a pod running on a node.
type Pod struct {
	Node        string
	SandboxID   string
	ContainerID string
	Spec        PodSpec
	// StartTime is how long RunPodSandbox, CreateContainer and
	// StartContainer took together (for a restore: the restore time).
	StartTime time.Duration
}

func (p *PodSpec) fill() {
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.Container == "" {
		p.Container = "counter"
	}
	if p.UID == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		p.UID = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	}
}

// CounterImage is the counter image as the nodes name it.
func (b *Bed) CounterImage() string { return b.cfg.RegistryHost() + "/" + imagebuild.CounterRef }

// sandboxConfig is what kubelet sends for a host-network pod whose
// containers each get their own PID namespace.
func (b *Bed) sandboxConfig(n Node, p PodSpec) *runtimeapi.PodSandboxConfig {
	labels := map[string]string{LabelPodName: p.Name, LabelPodNamespace: p.Namespace, LabelPodUID: p.UID}
	for k, v := range p.Labels {
		labels[k] = v
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		LogDirectory: filepath.Join(n.Dir, "pods", p.Namespace+"_"+p.Name+"_"+p.UID),
		Labels:       labels,
		Annotations:  p.Annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: nodeCgroupParent(n.Name, p.UID),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE,
				Pid:     runtimeapi.NamespaceMode_CONTAINER,
				Ipc:     runtimeapi.NamespaceMode_POD,
			}},
		},
	}
}

func containerConfig(p PodSpec, image string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: p.Container},
		Image:    &runtimeapi.ImageSpec{Image: image},
		Labels: map[string]string{
			LabelPodName: p.Name, LabelPodNamespace: p.Namespace, LabelPodUID: p.UID, LabelContainerName: p.Container,
		},
		LogPath: path.Join(p.Container, "0.log"),
		Args:    p.Args,
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE,
				Pid:     runtimeapi.NamespaceMode_CONTAINER,
				Ipc:     runtimeapi.NamespaceMode_POD,
			},
		}},
	}
}

// RestoreTestApp restores a checkpoint archive (a path valid on the node)
// into a new pod on node through crfailoverd's CRI client, the code path
// the daemon restores with (cri.Client.RestoreContainer: RunPodSandbox,
// CreateContainer with the archive as image, StartContainer, after what
// the runtime needs first).
func (b *Bed) RestoreTestApp(ctx context.Context, node string, p PodSpec, archive string) (Pod, error) {
	p.fill()
	n, err := b.Node(node)
	if err != nil {
		return Pod{}, err
	}
	client, err := cri.Dial(n.Socket, 30*time.Second)
	if err != nil {
		return Pod{}, err
	}
	defer client.Close()
	start := time.Now()
	sbID, ctrID, err := client.RestoreContainer(ctx, b.sandboxConfig(n, p), containerConfig(p, archive), archive)
	pod := Pod{Node: node, SandboxID: sbID, ContainerID: ctrID, Spec: p, StartTime: time.Since(start)}
	if err != nil {
		return pod, fmt.Errorf("node %s: restore %s/%s from %s: %w", node, p.Namespace, p.Name, archive, err)
	}
	return pod, b.WaitApp(ctx, node, 30*time.Second)
}

// RunTestApp runs the counter application as a pod on node, through the
// same CRI calls kubelet makes (PullImage, RunPodSandbox, CreateContainer,
// StartContainer), and waits until it answers.
func (b *Bed) RunTestApp(ctx context.Context, node string, p PodSpec) (Pod, error) {
	p.fill()
	n, err := b.Node(node)
	if err != nil {
		return Pod{}, err
	}
	cri, err := DialCRI(n.Socket)
	if err != nil {
		return Pod{}, err
	}
	defer cri.Close()
	image := b.CounterImage()
	sc := b.sandboxConfig(n, p)
	if _, err := cri.Image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}, SandboxConfig: sc}); err != nil {
		return Pod{}, fmt.Errorf("node %s: pull %s: %w", node, image, err)
	}
	cc := containerConfig(p, image)
	// kubelet creates the container's log directory; CRI-O, unlike
	// containerd, fails without it.
	if err := os.MkdirAll(filepath.Join(sc.LogDirectory, filepath.Dir(cc.LogPath)), 0o755); err != nil {
		return Pod{}, fmt.Errorf("node %s: create the log directory of %s: %w", node, p.Container, err)
	}
	start := time.Now()
	sb, err := cri.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sc})
	if err != nil {
		return Pod{}, fmt.Errorf("node %s: run pod sandbox %s/%s: %w", node, p.Namespace, p.Name, err)
	}
	pod := Pod{Node: node, SandboxID: sb.PodSandboxId, Spec: p}
	cr, err := cri.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cc, SandboxConfig: sc})
	if err != nil {
		return pod, fmt.Errorf("node %s: create container %s from %s: %w", node, p.Container, image, err)
	}
	pod.ContainerID = cr.ContainerId
	if _, err := cri.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		return pod, fmt.Errorf("node %s: start container %s: %w", node, p.Container, err)
	}
	pod.StartTime = time.Since(start)
	return pod, b.waitAppOn(ctx, node, p.Port, 30*time.Second)
}

// WaitApp waits until the counter application on node answers /health.
func (b *Bed) WaitApp(ctx context.Context, node string, within time.Duration) error {
	return b.waitAppOn(ctx, node, AppPort, within)
}

// waitAppOn waits until the test app on node answers /health on port
// (0: AppPort).
func (b *Bed) waitAppOn(ctx context.Context, node string, port int, within time.Duration) error {
	n, err := b.Node(node)
	if err != nil {
		return err
	}
	u := n.AppURL()
	if port != 0 {
		u = "http://" + net.JoinHostPort(n.Addr.String(), strconv.Itoa(port))
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		err := httpGet(ctx, u+"/health", nil)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("counter app on node %s did not answer within %s: %w", node, within, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Counter reads the counter of the application on node.
func (b *Bed) Counter(ctx context.Context, node string) (int64, error) {
	n, err := b.Node(node)
	if err != nil {
		return 0, err
	}
	var s struct {
		Counter *int64 `json:"counter"`
	}
	if err := httpGet(ctx, n.AppURL()+"/state", &s); err != nil {
		return 0, fmt.Errorf("read counter on node %s: %w", node, err)
	}
	if s.Counter == nil {
		return 0, fmt.Errorf("read counter on node %s: no counter in the answer", node)
	}
	return *s.Counter, nil
}

func httpGet(ctx context.Context, u string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if into != nil {
		return json.NewDecoder(resp.Body).Decode(into)
	}
	return nil
}

// CheckpointViaKubelet asks the node's kubelet (emulator) to checkpoint a
// container, with the bed's client certificate, and returns the archive's
// path on that node.
func (b *Bed) CheckpointViaKubelet(ctx context.Context, node, namespace, pod, container string, timeout time.Duration) (string, error) {
	n, err := b.Node(node)
	if err != nil {
		return "", err
	}
	tlsCfg, err := b.PKI.ClientTLS()
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	u := fmt.Sprintf("%s/checkpoint/%s/%s/%s?timeout=%d", n.KubeletURL(), url.PathEscape(namespace), url.PathEscape(pod), url.PathEscape(container), int(timeout.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("checkpoint through kubelet of node %s: %w", node, err)
	}
	defer resp.Body.Close()
	var body struct {
		Items []string `json:"items"`
	}
	if resp.StatusCode != http.StatusOK {
		msg := make([]byte, 512)
		k, _ := resp.Body.Read(msg)
		return "", fmt.Errorf("checkpoint through kubelet of node %s: %s: %s", node, resp.Status, msg[:k])
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Items) != 1 {
		return "", fmt.Errorf("checkpoint through kubelet of node %s: answer is not {\"items\":[path]} (%v)", node, err)
	}
	return body.Items[0], nil
}
