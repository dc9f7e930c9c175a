package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// fakeKubelet is a node whose pods come from a static pod directory, as
// kubelet runs them: every manifest in dir is a running pod named
// NAME-n1 (sandbox ID: a hash of the file, so a new manifest is a new
// pod), with the manifest's annotations and config.source "file". A
// manifest that leaves the directory takes its pod with it. Checkpoints
// are a real archive (testdata), so that restores can read them.
type fakeKubelet struct {
	dir          string
	archive      []byte
	baseImageErr error // EnsureBaseImage fails with it (CRI-O cannot pull the base image)

	mu          sync.Mutex
	exited      map[string]bool // sandbox IDs whose container has exited
	criRemoved  []string        // RemovePod calls: a kubelet pod must never be removed behind kubelet's back
	checkpoints int
	seen        []string // sandbox IDs in the order they appeared
}

func newFakeKubelet(t *testing.T, dir string) *fakeKubelet {
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
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeKubelet{dir: dir, archive: b, exited: map[string]bool{}}
}

func (k *fakeKubelet) pods() ([]cri.Pod, map[string]*corev1.Pod) {
	des, _ := os.ReadDir(k.dir)
	var out []cri.Pod
	specs := map[string]*corev1.Pod{}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(k.dir, de.Name()))
		if err != nil {
			continue
		}
		p := &corev1.Pod{}
		if yaml.Unmarshal(b, p) != nil {
			continue
		}
		sum := sha256.Sum256(b)
		id := "sb-" + hex.EncodeToString(sum[:6])
		ann := map[string]string{discovery.AnnConfigSource: "file"}
		for k, v := range p.Annotations {
			ann[k] = v
		}
		ns := p.Namespace
		if ns == "" {
			ns = "default"
		}
		st := cri.StateRunning
		k.mu.Lock()
		if k.exited[id] {
			st = cri.StateExited
		}
		if !slices.Contains(k.seen, id) {
			k.seen = append(k.seen, id)
		}
		k.mu.Unlock()
		out = append(out, cri.Pod{SandboxID: id, Name: p.Name + "-n1", Namespace: ns, UID: id, Annotations: ann, CreatedAt: time.Now(),
			Containers: []cri.Container{{ID: "c" + id, Name: p.Spec.Containers[0].Name, State: st, CreatedAt: time.Now()}}})
		specs[id] = p
	}
	return out, specs
}

func (k *fakeKubelet) Version(context.Context) (string, error) { return "fake-kubelet 1.0", nil }
func (k *fakeKubelet) ListPods(context.Context) ([]cri.Pod, error) {
	ps, _ := k.pods()
	return ps, nil
}
func (k *fakeKubelet) PodNetwork(context.Context, string) (string, bool, error) { return "", true, nil }
func (k *fakeKubelet) SandboxConfig(_ context.Context, id string) (*runtimeapi.PodSandboxConfig, error) {
	ps, _ := k.pods()
	for _, p := range ps {
		if p.SandboxID == id {
			return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
				Annotations: p.Annotations}, nil
		}
	}
	return nil, fmt.Errorf("no sandbox %s", id)
}
func (k *fakeKubelet) ContainerConfig(context.Context, string) (*runtimeapi.ContainerConfig, error) {
	return &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}}, nil
}
func (k *fakeKubelet) CheckpointContainer(_ context.Context, _, location string, _ time.Duration) error {
	k.mu.Lock()
	k.checkpoints++
	k.mu.Unlock()
	return os.WriteFile(location, k.archive, 0o600)
}
func (k *fakeKubelet) CheckpointPod(context.Context, string, []string, string, time.Duration) error {
	return fmt.Errorf("CRI CheckpointPod: %w", cri.ErrUnsupported)
}
func (k *fakeKubelet) RestorePod(context.Context, string, *runtimeapi.PodSandboxConfig, []*runtimeapi.ContainerConfig) (string, []string, error) {
	return "", nil, fmt.Errorf("CRI RestorePod: %w", cri.ErrUnsupported)
}
func (k *fakeKubelet) RestoreContainer(context.Context, *runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig, string) (string, string, error) {
	return "", "", fmt.Errorf("a restore through the CRI on a kubelet node")
}
func (k *fakeKubelet) EnsureBaseImage(context.Context, *runtimeapi.PodSandboxConfig, string) error {
	return k.baseImageErr
}
func (k *fakeKubelet) RemovePod(_ context.Context, id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.criRemoved = append(k.criRemoved, id)
	return nil
}

// exit makes the application of the pod of file exit.
func (k *fakeKubelet) exit(t *testing.T) {
	t.Helper()
	ps, _ := k.pods()
	if len(ps) != 1 {
		t.Fatalf("pods %v, want one", ps)
	}
	k.mu.Lock()
	k.exited[ps[0].SandboxID] = true
	k.mu.Unlock()
}

const userManifest = `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: ns
  annotations:
    hitachienergy.com/cr_mode: "cr"
    hitachienergy.com/cr_interval: "0.1"
spec:
  restartPolicy: Always
  containers:
  - name: app
    image: registry.example/web:1
`

func startKubeletAgent(t *testing.T, k *fakeKubelet, own Ownership) *Agent {
	t.Helper()
	data := t.TempDir()
	st, err := store.Open(filepath.Join(data, "checkpoints"), 3)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{
		Settings: Settings{Node: "n1", Method: MethodCRI, Defaults: discovery.Defaults{Interval: time.Second, ProbePeriod: time.Second, FailureThreshold: 3, NodeName: "n1"},
			CheckpointTimeout: time.Second, Retention: 3, ProbeTimeout: time.Second,
			Restore: RestorePolicy{MaxAttempts: 2, BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}},
		Runtime: k, Store: st, DataDir: data, MaxConcurrent: 2, DiscoverEvery: 20 * time.Millisecond, Ownership: own,
		StaticPods: &StaticPods{Dir: k.dir, Endpoint: "localhost:7948"},
		Log:        startAgentLog(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func manifestFiles(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// TestStaticPodTakeOverAndRestore: the agent takes the user's static pod
// over after its first checkpoint (the user's manifest kept in
// DATA_DIR/adopted, crfailoverd's with restartPolicy Never in its place),
// checkpoints the new pod under kubelet's name for it, and restores an
// exited application once, through a new manifest; it never removes a
// kubelet pod through the CRI nor restores through it.
func TestStaticPodTakeOverAndRestore(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(userManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	k := newFakeKubelet(t, dir)
	a := startKubeletAgent(t, k, nil)
	ours := staticpod.FileName("ns", "web")
	eventually(t, "the take-over", func() bool { return slices.Equal(manifestFiles(t, dir), []string{ours}) })
	kept, err := os.ReadFile(filepath.Join(a.adoptedDir(), "ns_web.yaml"))
	if err != nil || !bytes.Equal(kept, []byte(userManifest)) {
		t.Fatalf("the user's manifest is not kept as it was: %q, %v", kept, err)
	}
	pod, err := staticpod.Load(filepath.Join(dir, ours))
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.RestartPolicy != corev1.RestartPolicyNever || !strings.HasPrefix(pod.Name, "web-r") || pod.Annotations[discovery.AnnWorkload] != wl.String() {
		t.Errorf("crfailoverd's manifest: name %s, restartPolicy %s, annotations %v", pod.Name, pod.Spec.RestartPolicy, pod.Annotations)
	}
	eventually(t, "checkpoints of the taken-over pod", func() bool {
		st := a.Status()
		return len(st.Workloads) == 1 && st.Workloads[0].State == stateRunning && st.Workloads[0].Checkpoints >= 3
	})
	first := pod.Name

	k.exit(t)
	eventually(t, "the restore of the exited application", func() bool {
		p, err := staticpod.Load(filepath.Join(dir, ours))
		st := a.Status()
		return err == nil && p.Name != first && len(st.Workloads) == 1 && st.Workloads[0].State == stateRunning
	})
	time.Sleep(300 * time.Millisecond) // a second hand-over would show by now
	st := a.Status()
	if got := st.Workloads[0].Restores; got != 2 {
		t.Errorf("restores: %d, want 2 (the take-over and the exit)", got)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.criRemoved) != 0 {
		t.Errorf("kubelet pods removed through the CRI: %v", k.criRemoved)
	}
	if len(k.seen) != 3 {
		t.Errorf("pods seen: %v, want 3 (the user's, the taken-over one, the restored one)", k.seen)
	}
}

// TestParkedManifests: a clustered node starting with crfailoverd's
// manifests whose pods do not run parks them; once connected it puts back
// the one it still owns at that epoch and deletes those the cluster moved.
func TestParkedManifests(t *testing.T) {
	dir := t.TempDir()
	k := newFakeKubelet(t, filepath.Join(t.TempDir(), "not-yet")) // kubelet has not started: no pods
	board := ownership.NewBoard("n1")
	board.Publish(&ownership.View{Node: "n1"}) // not connected yet
	write := func(pod string, epoch uint64) string {
		id := store.Workload{Namespace: "ns", Pod: pod, Container: "app"}
		p, err := staticpod.Manifest(staticpod.Options{Workload: id, Seq: 4, Epoch: epoch, Image: "localhost:7948/x:4"})
		if err != nil {
			t.Fatal(err)
		}
		path, err := staticpod.Write(dir, p)
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Base(path)
	}
	kept, moved, later := write("kept", 3), write("moved", 3), write("later", 3)
	a := New(Options{Settings: Settings{Node: "n1", Method: MethodCRI, Defaults: discovery.Defaults{Interval: time.Second, NodeName: "n1"}},
		Runtime: k, DataDir: t.TempDir(), Ownership: board, StaticPods: &StaticPods{Dir: dir, Endpoint: "localhost:7948"}, Log: startAgentLog()})
	if err := a.parkManifests(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := manifestFiles(t, dir); len(got) != 0 {
		t.Fatalf("after parking kubelet's directory holds %v", got)
	}
	a.mu.Lock()
	a.unpark() // not connected: nothing changes
	a.mu.Unlock()
	if got := manifestFiles(t, a.parkedDir()); len(got) != 3 {
		t.Fatalf("parked %v, want 3", got)
	}
	board.Publish(&ownership.View{Node: "n1", Connected: true, Workloads: map[string]ownership.Entry{
		"ns/kept/app":  {Owner: "n1", Epoch: 3, Status: "running"},
		"ns/moved/app": {Owner: "n2", Epoch: 4, Status: "running"},
		// ns/later/app: not known yet.
	}})
	a.mu.Lock()
	a.unpark()
	a.mu.Unlock()
	if got := manifestFiles(t, dir); !slices.Equal(got, []string{kept}) {
		t.Errorf("kubelet's directory holds %v, want %s", got, kept)
	}
	if got := manifestFiles(t, a.parkedDir()); !slices.Equal(got, []string{later}) {
		t.Errorf("parked %v, want %s (%s deleted)", got, later, moved)
	}
}

// TestAwaitingKubelet: after a hand-over, the older pods of the workload
// are passed over until kubelet runs the new one, for at most handoffWait.
func TestAwaitingKubelet(t *testing.T) {
	now := time.Unix(1000, 0)
	a := &Agent{log: startAgentLog(), now: func() time.Time { return now }}
	for _, tc := range []struct {
		name       string
		handed     *handoff
		checkpoint string
		want, kept bool
	}{
		{"no hand-over", nil, "", false, false},
		{"the old pod", &handoff{checkpoint: "ns/web/app:5", at: now.Add(-time.Second)}, "ns/web/app:4", true, true},
		{"the user's pod", &handoff{checkpoint: "ns/web/app:5", at: now.Add(-time.Second)}, "", true, true},
		{"the new pod", &handoff{checkpoint: "ns/web/app:5", at: now.Add(-time.Second)}, "ns/web/app:5", false, false},
		{"the same checkpoint at an older epoch", &handoff{checkpoint: "ns/web/app:5", epoch: 3, at: now.Add(-time.Second)}, "ns/web/app:5", true, true},
		{"kubelet too slow", &handoff{checkpoint: "ns/web/app:5", at: now.Add(-handoffWait - time.Second)}, "ns/web/app:4", false, false},
	} {
		a.handoffs = map[store.Workload]handoff{}
		if tc.handed != nil {
			a.handoffs[wl] = *tc.handed
		}
		got := a.awaitingKubelet(discovery.Workload{ID: wl, Checkpoint: tc.checkpoint})
		_, kept := a.handoffs[wl]
		if got != tc.want || kept != tc.kept {
			t.Errorf("%s: passed over %t (want %t), hand-over kept %t (want %t)", tc.name, got, tc.want, kept, tc.kept)
		}
	}
}

// TestFailedTakeOverGivesTheManifestBack: when the take-over's restore
// fails (here CRI-O cannot pull the base image), the user's manifest goes back
// into kubelet's directory and nothing of crfailoverd's is left there.
func TestFailedTakeOverGivesTheManifestBack(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(userManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	k := newFakeKubelet(t, dir)
	k.baseImageErr = errors.New("PullImage localhost:5000/web:1: connection refused")
	a := startKubeletAgent(t, k, nil)
	eventually(t, "the failed take-over", func() bool {
		st := a.Status()
		return len(st.Workloads) == 1 && st.Workloads[0].LastRestore != nil && !st.Workloads[0].LastRestore.OK
	})
	eventually(t, "the user's manifest back", func() bool { return slices.Equal(manifestFiles(t, dir), []string{"web.yaml"}) })
	if b, err := os.ReadFile(filepath.Join(dir, "web.yaml")); err != nil || string(b) != userManifest {
		t.Errorf("the manifest put back: %q, %v", b, err)
	}
	if left := manifestFiles(t, a.adoptedDir()); len(left) != 0 {
		t.Errorf("adopted/ still holds %v", left)
	}
}

// TestStaleCopyLeavesANewerManifest: stopping an old copy removes its own
// manifest, not one a newer placement wrote meanwhile.
func TestStaleCopyLeavesANewerManifest(t *testing.T) {
	dir := t.TempDir()
	a := New(Options{Settings: Settings{Node: "n1"}, Runtime: newFakeKubelet(t, dir), DataDir: t.TempDir(),
		StaticPods: &StaticPods{Dir: dir, Endpoint: "localhost:7948"}, Log: startAgentLog()})
	write := func(seq, epoch uint64) {
		p, err := staticpod.Manifest(staticpod.Options{Workload: wl, Seq: seq, Epoch: epoch, Image: "localhost:7948/x"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := staticpod.Write(dir, p); err != nil {
			t.Fatal(err)
		}
	}
	write(7, 4) // the newer placement's
	old := discovery.Workload{ID: wl, StaticPod: true, Checkpoint: wl.String() + ":7", Epoch: 3}
	if err := a.removeManifestOf(old); err != nil {
		t.Fatal(err)
	}
	if got := manifestFiles(t, dir); len(got) != 1 {
		t.Fatalf("the newer manifest was removed for a stale copy: %v", got)
	}
	old.Epoch = 4 // the copy of that very manifest
	if err := a.removeManifestOf(old); err != nil {
		t.Fatal(err)
	}
	if got := manifestFiles(t, dir); len(got) != 0 {
		t.Errorf("the copy's own manifest stayed: %v", got)
	}
}

// TestLocalStaticRestoreKeepsTheEpoch: a local restore (epoch 0 in the
// request) writes the copy's recorded epoch into the new manifest.
func TestLocalStaticRestoreKeepsTheEpoch(t *testing.T) {
	dir := t.TempDir()
	data := t.TempDir()
	k := newFakeKubelet(t, dir)
	st, err := store.Open(filepath.Join(data, "checkpoints"), 3)
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Import(context.Background(), wl, bytes.NewReader(k.archive), store.Entry{Method: MethodCRI, Source: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Settings: Settings{Node: "n1"}, Runtime: k, Store: st, DataDir: data,
		StaticPods: &StaticPods{Dir: dir, Endpoint: "localhost:7948"}, Log: startAgentLog()})
	sb := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-r1-n1", Namespace: "ns"},
		Annotations: map[string]string{discovery.AnnEpoch: "5", discovery.AnnWorkload: wl.String()}}
	if _, err := a.writeStaticPod(context.Background(), sb, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}}, e, 0); err != nil {
		t.Fatal(err)
	}
	pod, err := staticpod.Load(filepath.Join(dir, staticpod.FileName("ns", "web")))
	if err != nil {
		t.Fatal(err)
	}
	if got := pod.Annotations[discovery.AnnEpoch]; got != "5" {
		t.Errorf("epoch annotation %q, want the copy's 5", got)
	}
}
