package staticpod

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

var wl = store.Workload{Namespace: "shop", Pod: "counter", Container: "app"}

const image = "localhost:5001/crfailoverd/shop/counter/app:7"

// recorded returns a sandbox and container configuration as kubelet sends
// them for a host-network pod whose container has its own PID namespace.
func recorded() (*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig) {
	sb := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "shop", Uid: "0c8a3f5e-1111-2222-3333-444455556666", Attempt: 2},
		Hostname: "node-a",
		Labels: map[string]string{
			"io.kubernetes.pod.name": "counter", "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": "0c8a3f5e",
			"app": "counter", "tier": "backend", "bad label": "x",
		},
		Annotations: map[string]string{
			"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "1",
			"kubernetes.io/config.seen": "2026-01-01T00:00:00Z", "kubernetes.io/config.source": "api",
			"kubectl.kubernetes.io/last-applied-configuration": "{...}",
			"crfailoverd.io/epoch":                             "3", "crfailoverd.io/checkpoint": "shop/counter/app:1",
		},
		PortMappings: []*runtimeapi.PortMapping{
			{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080},
			{Protocol: runtimeapi.Protocol_UDP, ContainerPort: 5353},
			{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080, HostPort: 8080},
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
			},
		}},
	}
	ctr := &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: "app"},
		Image:      &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"},
		Command:    []string{"/counter"},
		Args:       []string{"-listen", ":8080"},
		WorkingDir: "/srv",
		Envs: []*runtimeapi.KeyValue{
			{Key: "GODEBUG", Value: []byte("multipathtcp=0")}, {Key: "MODE", Value: []byte("a")}, {Key: "MODE", Value: []byte("b")},
		},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"CAP_NET_ADMIN"}},
			RunAsUser:    &runtimeapi.Int64Value{Value: 1000},
		}},
	}
	return sb, ctr
}

// decode reads a manifest file the way the API machinery does, strictly
// (unknown fields are errors).
func decode(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	obj, gvk, err := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer().Decode(b, nil, nil)
	if err != nil {
		t.Fatalf("decode %s: %v\n%s", path, err, b)
	}
	if gvk.Group != "" || gvk.Version != "v1" || gvk.Kind != "Pod" {
		t.Errorf("decoded %v", gvk)
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		t.Fatalf("decoded a %T", obj)
	}
	return pod
}

func TestManifestRoundTrip(t *testing.T) {
	sb, ctr := recorded()
	pod, err := Manifest(Options{Workload: wl, Seq: 7, Epoch: 4, Image: image, Sandbox: sb, Container: ctr})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path, err := Write(dir, pod)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "crfailoverd-shop_counter.yaml" {
		t.Errorf("written to %s", path)
	}
	got := decode(t, path)

	if got.Name != "counter-r7" || got.Namespace != "shop" || got.UID != "" {
		t.Errorf("metadata %s/%s uid %q", got.Namespace, got.Name, got.UID)
	}
	if errs := content.IsDNS1123Subdomain(got.Name + "-some-node"); len(errs) != 0 {
		t.Errorf("name: %v", errs)
	}
	if !got.Spec.HostNetwork || got.Spec.HostPID || got.Spec.HostIPC || got.Spec.ShareProcessNamespace != nil {
		t.Errorf("host namespaces: network %v pid %v ipc %v share %v", got.Spec.HostNetwork, got.Spec.HostPID, got.Spec.HostIPC, got.Spec.ShareProcessNamespace)
	}
	if got.Spec.RestartPolicy != corev1.RestartPolicyNever || got.Spec.Hostname != "" {
		t.Errorf("restart policy %q, hostname %q", got.Spec.RestartPolicy, got.Spec.Hostname)
	}
	if len(got.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(got.Spec.Containers))
	}
	c := got.Spec.Containers[0]
	if c.Name != "app" || c.Image != image || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("container %s image %s pull %s", c.Name, c.Image, c.ImagePullPolicy)
	}
	wantPorts := []corev1.ContainerPort{
		{ContainerPort: 5353, HostPort: 5353, Protocol: corev1.ProtocolUDP},
		{ContainerPort: 8080, HostPort: 8080, Protocol: corev1.ProtocolTCP},
	}
	if !reflect.DeepEqual(c.Ports, wantPorts) {
		t.Errorf("ports %+v, want %+v", c.Ports, wantPorts)
	}
	if !slices.Equal(c.Command, []string{"/counter"}) || !slices.Equal(c.Args, []string{"-listen", ":8080"}) || c.WorkingDir != "/srv" {
		t.Errorf("command %v args %v cwd %s", c.Command, c.Args, c.WorkingDir)
	}
	wantEnv := []corev1.EnvVar{{Name: "GODEBUG", Value: "multipathtcp=0"}, {Name: "MODE", Value: "b"}}
	if !reflect.DeepEqual(c.Env, wantEnv) {
		t.Errorf("env %+v", c.Env)
	}
	if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 1000 || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) || sc.Privileged != nil {
		t.Errorf("security context %+v", sc)
	}
	if !reflect.DeepEqual(got.Labels, map[string]string{"app": "counter", "tier": "backend"}) {
		t.Errorf("labels %v", got.Labels)
	}
	wantAnn := map[string]string{
		"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "1",
		AnnWorkload: "shop/counter/app", AnnCheckpoint: "shop/counter/app:7", AnnEpoch: "4",
		AnnOriginalUID: "0c8a3f5e-1111-2222-3333-444455556666",
	}
	if !reflect.DeepEqual(got.Annotations, wantAnn) {
		t.Errorf("annotations %v, want %v", got.Annotations, wantAnn)
	}
	if AnnEpoch != "crfailoverd.io/epoch" {
		t.Errorf("AnnEpoch = %q", AnnEpoch)
	}

	// Load gives back the same pod.
	loaded, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(loaded, got) || !reflect.DeepEqual(loaded.Spec, pod.Spec) || !reflect.DeepEqual(loaded.ObjectMeta, pod.ObjectMeta) {
		t.Errorf("Load differs:\n%+v\n%+v", loaded, got)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v (%v)", st.Mode(), err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "# Written by crfailoverd") {
		t.Errorf("no header comment:\n%s", b)
	}
}

// TestManifestFromArchive builds a manifest without a recorded container
// configuration: the command, working directory and environment come from
// the checkpoint's spec.dump.
func TestManifestFromArchive(t *testing.T) {
	info, err := archive.Read("../archive/testdata/counter-checkpoint.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := Manifest(Options{Workload: store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}, Seq: 1, Image: "x:1", Info: info})
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/counter"}) || c.WorkingDir != "/" {
		t.Errorf("command %v cwd %q", c.Command, c.WorkingDir)
	}
	wantEnv := []corev1.EnvVar{{Name: "PATH", Value: "/"}, {Name: "GODEBUG", Value: "multipathtcp=0"}}
	if !reflect.DeepEqual(c.Env, wantEnv) {
		t.Errorf("env %+v", c.Env)
	}
	if pod.Spec.HostNetwork || c.Ports != nil || pod.Labels != nil {
		t.Errorf("without a sandbox: host network %v, ports %v, labels %v", pod.Spec.HostNetwork, c.Ports, pod.Labels)
	}
	if _, ok := pod.Annotations[AnnEpoch]; ok {
		t.Errorf("epoch 0 is written")
	}
}

func TestManifestPodNetwork(t *testing.T) {
	sb, ctr := recorded()
	ns := sb.Linux.SecurityContext.NamespaceOptions
	ns.Network, ns.Pid, ns.Ipc = runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_NODE
	sb.Hostname = "counter-0"
	sb.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 8080, HostPort: 30080, HostIp: "10.0.0.1"}, {ContainerPort: 9090}}
	ctr.Linux.SecurityContext.Privileged = true
	pod, err := Manifest(Options{Workload: wl, Seq: 1, Image: image, Sandbox: sb, Container: ctr})
	if err != nil {
		t.Fatal(err)
	}
	s := pod.Spec
	if s.HostNetwork || s.HostPID || !s.HostIPC || s.ShareProcessNamespace == nil || !*s.ShareProcessNamespace || s.Hostname != "counter-0" {
		t.Errorf("spec %+v", s)
	}
	want := []corev1.ContainerPort{
		{ContainerPort: 8080, HostPort: 30080, HostIP: "10.0.0.1", Protocol: corev1.ProtocolTCP},
		{ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
	}
	if !reflect.DeepEqual(s.Containers[0].Ports, want) {
		t.Errorf("ports %+v", s.Containers[0].Ports)
	}
	if p := s.Containers[0].SecurityContext.Privileged; p == nil || !*p {
		t.Errorf("privileged lost")
	}
}

func TestManifestErrors(t *testing.T) {
	for _, o := range []Options{
		{Workload: store.Workload{Namespace: "a", Pod: "B", Container: "c"}, Image: image},
		{Workload: wl},
		{Workload: store.Workload{Namespace: "a", Pod: strings.Repeat("p", 200), Container: "c"}, Image: image},
	} {
		if _, err := Manifest(o); err == nil {
			t.Errorf("Manifest(%+v) succeeded", o.Workload)
		}
	}
	if _, err := Write(t.TempDir(), nil); err == nil {
		t.Errorf("Write(nil) succeeded")
	}
}

// TestWriteAtomic rewrites a manifest many times while a reader keeps
// reading it, as kubelet does: every read sees a complete manifest, and no
// temporary file is left.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	sb, ctr := recorded()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readErr error
	reads := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			pod, err := Load(filepath.Join(dir, FileName("shop", "counter")))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err == nil && len(pod.Spec.Containers) != 1 {
				err = os.ErrInvalid
			}
			if err != nil {
				readErr = err
				return
			}
			reads++
		}
	})
	for i := range 100 {
		pod, err := Manifest(Options{Workload: wl, Seq: uint64(i + 1), Image: image, Sandbox: sb, Container: ctr})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Write(dir, pod); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatalf("a reader saw an incomplete manifest: %v", readErr)
	}
	names := dirNames(t, dir)
	if !slices.Equal(names, []string{"crfailoverd-shop_counter.yaml"}) {
		t.Errorf("directory holds %v", names)
	}
	got := decode(t, filepath.Join(dir, names[0]))
	if got.Annotations[AnnCheckpoint] != "shop/counter/app:100" {
		t.Errorf("last write lost: %v", got.Annotations)
	}
	t.Logf("%d complete reads during 100 writes", reads)

	// A missing directory is created.
	sub := filepath.Join(dir, "manifests")
	pod, _ := Manifest(Options{Workload: wl, Seq: 1, Image: image})
	if _, err := Write(sub, pod); err != nil {
		t.Fatal(err)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	pod, _ := Manifest(Options{Workload: wl, Seq: 1, Image: image})
	other, _ := Manifest(Options{Workload: store.Workload{Namespace: "shop", Pod: "other", Container: "app"}, Seq: 1, Image: image})
	for _, p := range []*corev1.Pod{pod, other} {
		if _, err := Write(dir, p); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := Remove(dir, "shop", "counter"); err != nil {
			t.Fatal(err)
		}
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"crfailoverd-shop_other.yaml"}) {
		t.Errorf("left %v", names)
	}
	if err := Remove(filepath.Join(dir, "missing"), "shop", "counter"); err != nil {
		t.Errorf("Remove in a missing directory: %v", err)
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	pod, _ := Manifest(Options{Workload: wl, Seq: 3, Image: image})
	path, err := Write(dir, pod)
	if err != nil {
		t.Fatal(err)
	}
	// Someone else's manifests are not listed.
	os.WriteFile(filepath.Join(dir, "etcd.yaml"), []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "crfailoverd-notours.yaml"), []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n"), 0o600)
	got, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[path] == nil || got[path].Annotations[AnnCheckpoint] != "shop/counter/app:3" {
		t.Errorf("List = %v", got)
	}
	if got, err := List(filepath.Join(dir, "missing")); err != nil || len(got) != 0 {
		t.Errorf("List(missing) = %v, %v", got, err)
	}
}

func TestMode(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct{ mode, dir, want string }{
		{"auto", dir, ModeStaticPod},
		{"auto", filepath.Join(dir, "missing"), ModeCRI},
		{"auto", "", ModeCRI},
		{"auto", file, ModeCRI},
		{"cri", dir, ModeCRI},
		{"static-pod", filepath.Join(dir, "missing"), ModeStaticPod},
	} {
		if got := Mode(c.mode, c.dir); got != c.want {
			t.Errorf("Mode(%q, %q) = %q, want %q", c.mode, c.dir, got, c.want)
		}
	}
}

// TestDecodeWorkloadConfig reads the recorded configuration in the form
// crfailoverd keeps it.
func TestDecodeWorkloadConfig(t *testing.T) {
	sb, ctr := recorded()
	sj, _ := protojson.Marshal(sb)
	cj, _ := protojson.Marshal(ctr)
	b, _ := json.MarshalIndent(map[string]json.RawMessage{"sandbox": sj, "container": cj}, "", "  ")
	gsb, gctr, err := DecodeWorkloadConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(gsb, sb) || !proto.Equal(gctr, ctr) {
		t.Errorf("decoded config differs")
	}
	if _, _, err := DecodeWorkloadConfig([]byte(`{"sandbox": {"metadata": 5}}`)); err == nil {
		t.Errorf("bad sandbox accepted")
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if de.Type().IsRegular() {
			out = append(out, de.Name())
		}
	}
	return out
}

func TestFindUserManifests(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"counter.yaml":                   "apiVersion: v1\nkind: Pod\nmetadata:\n  name: counter\n  annotations:\n    hitachienergy.com/cr_mode: cr\nspec:\n  containers:\n  - name: counter\n    image: x\n",
		"plain.yaml":                     "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\nspec:\n  containers:\n  - name: c\n    image: x\n",
		".hidden.yaml":                   "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hidden\n  annotations:\n    hitachienergy.com/cr_mode: cr\n",
		"notes.txt":                      "not a pod: [",
		"huge.yaml":                      "apiVersion: v1\nkind: Pod\nmetadata:\n  name: huge\n  annotations:\n    hitachienergy.com/cr_mode: cr\n#" + strings.Repeat("x", MaxManifestSize),
		"crfailoverd-default_other.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: other\n  namespace: default\n  annotations:\n    hitachienergy.com/cr_mode: cr\n    crfailoverd.io/workload: default/other/c\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A symbolic link kubelet follows, to a manifest outside the directory.
	elsewhere := filepath.Join(t.TempDir(), "linked.yaml")
	linked := strings.ReplaceAll(files["counter.yaml"], "name: counter\n", "name: linked\n")
	if err := os.WriteFile(elsewhere, []byte(linked), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(dir, "linked.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns, name, want, content string
	}{
		{"default", "counter", "counter.yaml", files["counter.yaml"]},
		{"default", "linked", "linked.yaml", linked}, // the link's path, the target's bytes
		{"kube-system", "counter", "", ""},           // another namespace
		{"default", "plain", "", ""},                 // not annotated
		{"default", "hidden", "", ""},                // kubelet ignores hidden files
		{"default", "huge", "", ""},                  // larger than MaxManifestSize
		{"default", "other", "", ""},                 // crfailoverd's own
		{"default", "missing", "", ""},
	} {
		found, err := FindUserManifests(dir, tc.ns, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case tc.want == "" && len(found) != 0:
			t.Errorf("%s/%s: found %v, want none", tc.ns, tc.name, found)
		case tc.want != "" && (len(found) != 1 || string(found[filepath.Join(dir, tc.want)]) != tc.content):
			t.Errorf("%s/%s: found %v, want %s", tc.ns, tc.name, found, tc.want)
		}
	}
	if found, err := FindUserManifests(filepath.Join(dir, "none"), "default", "counter"); err != nil || len(found) != 0 {
		t.Errorf("missing directory: %v, %v", found, err)
	}
}
