package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ociserve"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// TestE2EImageRestore restores the counter on another node from a
// checkpoint image, the way kubelet runs a static pod: the counter runs on
// n1 and is checkpointed through the kubelet API; the archive goes into a
// checkpoint store in n2's crfailoverd data directory, which the image
// endpoint (package ociserve, what the daemon serves) serves on n2's own
// loopback; a static pod manifest is built from the configuration recorded
// through the CRI, written and read back as a Pod; then n2's containerd is
// driven through the CRI calls kubelet makes for that static pod
// (PullImage, RunPodSandbox, CreateContainer, StartContainer). The counter
// must go on from the checkpoint.
func TestE2EImageRestore(t *testing.T) {
	c := testbed.RequireE2E(t)
	if c.Kubelet {
		t.Skip("replays kubelet's CRI calls for a static pod; on kubelet nodes TestE2EKubeletNode and TestE2EKubeletFailover have kubelet itself restore from checkpoint images")
	}
	b := testbed.UpT(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	n2, _ := b.Node("n2")
	wl := store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}

	app, err := b.RunTestApp(ctx, "n1", testbed.PodSpec{Name: "counter", Annotations: map[string]string{"hitachienergy.com/cr_mode": "cr"}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the counter on n1 to pass 20", func() (bool, error) {
		v, err := b.Counter(ctx, "n1")
		return v > 20, err
	})

	// The configuration crfailoverd records for a restore.
	rt, err := cri.Dial(n1.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	sbCfg, err := rt.SandboxConfig(ctx, app.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	ctrCfg, err := rt.ContainerConfig(ctx, app.ContainerID)
	if err != nil {
		t.Fatal(err)
	}

	atCheckpoint, err := b.Counter(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	archivePath, err := b.CheckpointViaKubelet(ctx, "n1", wl.Namespace, wl.Pod, wl.Container, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkpointedAt := time.Now()

	// n2's store holds the checkpoint (as replication would leave it).
	st, err := store.Open(filepath.Join(n2.DaemonDir(), "checkpoints"), 3)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Import(ctx, wl, f, store.Entry{Method: "kubelet", Source: "n1"})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	// The endpoint, on n2's loopback (where kubelet and containerd of n2
	// pull from) and, for the client checks below, on the host's.
	port := 5001
	if c.RegistryPort == port {
		port = 5002
	}
	srv := ociserve.NewServer(st, slog.New(slog.NewTextHandler(testbed.TestWriter{T: t}, nil)))
	creds := ociserve.Credentials{Username: ociserve.Username, Password: newUID()}
	srv.Credentials = creds
	nodeLn, err := testbed.ListenInNetns(n2.Netns, "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		nodeLn.Close()
		t.Fatal(err)
	}
	sctx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 2)
	for _, ln := range []net.Listener{nodeLn, hostLn} {
		go func() { served <- srv.ServeListener(sctx, ln) }()
	}
	defer func() {
		stopServing()
		for range 2 {
			if err := <-served; err != nil {
				t.Errorf("image endpoint: %v", err)
			}
		}
	}()

	// The static pod manifest, written and read back as kubelet reads it.
	ar, err := st.OpenArchive(e)
	if err != nil {
		t.Fatal(err)
	}
	info, err := archive.ReadFrom(ar, ar.Size(), e.Path)
	ar.Close()
	if err != nil {
		t.Fatal(err)
	}
	imageRef := ociserve.Ref("localhost:"+strconv.Itoa(port), wl, e.Seq)
	manifest, err := staticpod.Manifest(staticpod.Options{
		Workload: wl, Seq: e.Seq, Epoch: 1, Image: imageRef, Sandbox: sbCfg, Container: ctrCfg, Info: info,
	})
	if err != nil {
		t.Fatal(err)
	}
	manifestPath, err := staticpod.Write(t.TempDir(), manifest)
	if err != nil {
		t.Fatal(err)
	}
	pod := decodePod(t, manifestPath)
	if pod.Name != wl.Pod || pod.Namespace != wl.Namespace || !pod.Spec.HostNetwork || len(pod.Spec.Containers) != 1 {
		t.Fatalf("manifest: %s/%s host network %v, %d containers", pod.Namespace, pod.Name, pod.Spec.HostNetwork, len(pod.Spec.Containers))
	}
	ctr := pod.Spec.Containers[0]
	if ctr.Image != imageRef || ctr.ImagePullPolicy != corev1.PullAlways || ctr.Name != wl.Container {
		t.Fatalf("manifest container %s: image %s, pull policy %s", ctr.Name, ctr.Image, ctr.ImagePullPolicy)
	}

	// What kubelet does for that static pod on n2.
	n2cri, err := testbed.DialCRI(n2.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer n2cri.Close()
	uid := newUID()
	sc := kubeletSandbox(n2, pod, uid)
	// The app notices a restore by a pause of more than a second in its
	// ticks: let that much pass since the dump, so that a restored process
	// can be told from a fresh one.
	time.Sleep(time.Until(checkpointedAt.Add(1500 * time.Millisecond)))
	pullStart := time.Now()
	pulled, err := n2cri.Image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ctr.Image}, SandboxConfig: sc,
		Auth: &runtimeapi.AuthConfig{Username: creds.Username, Password: creds.Password}})
	if err != nil {
		t.Fatalf("n2: pull %s: %v", ctr.Image, err)
	}
	pullTime := time.Since(pullStart)

	restoreStart := time.Now()
	sb, err := n2cri.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sc})
	if err != nil {
		t.Fatalf("n2: run pod sandbox: %v", err)
	}
	sandboxTime := time.Since(restoreStart)
	cc, err := n2cri.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId, Config: kubeletContainer(n2, pod, ctr, uid, pulled.ImageRef), SandboxConfig: sc,
	})
	if err != nil {
		t.Fatalf("n2: create container from %s (%s): %v", ctr.Image, pulled.ImageRef, err)
	}
	if _, err := n2cri.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		t.Fatalf("n2: start container: %v", err)
	}
	restoreTime := time.Since(restoreStart)

	if err := b.WaitApp(ctx, "n2", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	after, err := b.Counter(ctx, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if after < atCheckpoint {
		t.Errorf("counter on n2 is %d, below %d read before the checkpoint: state was lost", after, atCheckpoint)
	}
	time.Sleep(time.Second)
	later, err := b.Counter(ctx, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if later <= after {
		t.Errorf("counter on n2 does not count: %d, then %d a second later", after, later)
	}
	restored := restoredFlag(ctx, n2)
	if !restored {
		t.Errorf("the app on n2 does not know it was restored: it was started afresh")
	}
	t.Logf("counter: %d before the checkpoint, %d after the restore, %d a second later", atCheckpoint, after, later)
	st2, err := n2cri.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cc.ContainerId})
	if err == nil {
		t.Logf("n2 container %s: state %s, image %s (%s)", cc.ContainerId[:12], st2.Status.State, st2.Status.GetImage().GetImage(), st2.Status.ImageRef)
	}

	// The image as a registry client sees it, every digest verified.
	imageBytes := verifyPulled(t, hostLn.Addr().String(), creds, wl, e.Seq)
	t.Logf("archive %d bytes; pull %s (includes building the layer), sandbox %s, create+start %s",
		e.Size, pullTime.Round(time.Millisecond), sandboxTime.Round(time.Millisecond), (restoreTime - sandboxTime).Round(time.Millisecond))

	if !t.Failed() {
		fmt.Printf("E2E image-restore: runtime=%s image_bytes=%d pull_ms=%d restore_ms=%d counter_at_checkpoint=%d counter_after_restore=%d\n",
			b.Flavor(), imageBytes, pullTime.Milliseconds(), restoreTime.Milliseconds(), atCheckpoint, after)
	}
}

// decodePod reads a manifest with the API machinery's universal
// deserializer, strictly.
func decodePod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	scheme := k8sruntime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	obj, _, err := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("manifest %s is not a valid Pod: %v\n%s", path, err, data)
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		t.Fatalf("manifest %s holds a %T", path, obj)
	}
	return pod
}

// Kubelet's labels and annotations on what it creates for a pod.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
)

// kubeletSandbox is the sandbox configuration kubelet makes for a static
// pod on node n: the pod is named <name>-<node>, gets the UID kubelet
// derives (uid) and the manifest's labels, annotations and host namespaces;
// every container gets its own PID namespace unless the pod shares one.
func kubeletSandbox(n testbed.Node, pod *corev1.Pod, uid string) *runtimeapi.PodSandboxConfig {
	name := pod.Name + "-" + n.Name
	labels := map[string]string{labelPodName: name, labelPodNamespace: pod.Namespace, labelPodUID: uid}
	for k, v := range pod.Labels {
		labels[k] = v
	}
	ann := map[string]string{"kubernetes.io/config.source": "file", "kubernetes.io/config.seen": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range pod.Annotations {
		ann[k] = v
	}
	var ports []*runtimeapi.PortMapping
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			proto := runtimeapi.Protocol_TCP
			switch p.Protocol {
			case corev1.ProtocolUDP:
				proto = runtimeapi.Protocol_UDP
			case corev1.ProtocolSCTP:
				proto = runtimeapi.Protocol_SCTP
			}
			ports = append(ports, &runtimeapi.PortMapping{Protocol: proto, ContainerPort: p.ContainerPort, HostPort: p.HostPort, HostIp: p.HostIP})
		}
	}
	sc := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: pod.Namespace, Uid: uid},
		LogDirectory: n.PodLogDir(pod.Namespace, name, uid),
		Labels:       labels,
		Annotations:  ann,
		PortMappings: ports,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    n.PodCgroupParent(uid),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: namespaces(pod)},
		},
	}
	if !pod.Spec.HostNetwork {
		sc.Hostname = pod.Name
		if pod.Spec.Hostname != "" {
			sc.Hostname = pod.Spec.Hostname
		}
	}
	return sc
}

func namespaces(pod *corev1.Pod) *runtimeapi.NamespaceOption {
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	if pod.Spec.HostNetwork {
		ns.Network = runtimeapi.NamespaceMode_NODE
	}
	if pod.Spec.HostIPC {
		ns.Ipc = runtimeapi.NamespaceMode_NODE
	}
	if pod.Spec.HostPID {
		ns.Pid = runtimeapi.NamespaceMode_NODE
	} else if s := pod.Spec.ShareProcessNamespace; s != nil && *s {
		ns.Pid = runtimeapi.NamespaceMode_POD
	}
	return ns
}

// kubeletContainer is the container configuration kubelet makes for
// container c of the static pod: the image as PullImage resolved it (with
// the name the manifest gave), the manifest's command and environment.
func kubeletContainer(n testbed.Node, pod *corev1.Pod, c corev1.Container, uid, imageRef string) *runtimeapi.ContainerConfig {
	name := pod.Name + "-" + n.Name
	var envs []*runtimeapi.KeyValue
	for _, e := range c.Env {
		envs = append(envs, &runtimeapi.KeyValue{Key: e.Name, Value: []byte(e.Value)})
	}
	return &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: c.Name},
		Image:      &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: c.Image},
		Command:    c.Command,
		Args:       c.Args,
		WorkingDir: c.WorkingDir,
		Envs:       envs,
		Labels: map[string]string{
			labelPodName: name, labelPodNamespace: pod.Namespace, labelPodUID: uid, labelContainerName: c.Name,
		},
		Annotations: map[string]string{"io.kubernetes.container.restartCount": "0"},
		LogPath:     filepath.Join(c.Name, "0.log"),
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: namespaces(pod),
		}},
	}
}

// verifyPulled pulls the checkpoint image with go-containerregistry's
// client from the endpoint at hostport, reading every part so that the
// client verifies each digest and size, and returns the bytes pulled
// (manifest, configuration and layer).
func verifyPulled(t *testing.T, hostport string, creds ociserve.Credentials, wl store.Workload, seq uint64) int64 {
	t.Helper()
	ref, err := name.ParseReference(ociserve.Ref(hostport, wl, seq), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Get(ref); err == nil {
		t.Fatal("client pull without credentials succeeded, want 401")
	}
	desc, err := remote.Get(ref, remote.WithAuth(&authn.Basic{Username: creds.Username, Password: creds.Password}))
	if err != nil {
		t.Fatalf("client pull: %v", err)
	}
	img, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Annotations[ociserve.AnnCheckpointName] == "" || m.Annotations[ociserve.AnnCRIOCheckpointName] == "" || len(m.Layers) != 1 {
		t.Errorf("checkpoint image manifest: annotations %v, %d layers", m.Annotations, len(m.Layers))
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	total := int64(len(desc.Manifest) + len(cfg))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc) // fails on a digest mismatch
		rc.Close()
		if err != nil {
			t.Fatalf("client pull: layer: %v", err)
		}
		total += n
	}
	return total
}

// restoredFlag asks the counter app whether it noticed it was restored.
func restoredFlag(ctx context.Context, n testbed.Node) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.AppURL()+"/restore", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var v struct {
		Restore bool `json:"restore"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return v.Restore
}

func newUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
