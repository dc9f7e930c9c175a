package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestRestorePolicyNext(t *testing.T) {
	p := RestorePolicy{MaxAttempts: 5, BackoffInitial: time.Second, BackoffMax: 3 * time.Second}
	c := []store.Entry{{Seq: 9}, {Seq: 8}}
	for _, x := range []struct {
		attempt int
		seq     uint64
		wait    time.Duration
		giveUp  bool
	}{
		{0, 9, 0, false}, {1, 8, time.Second, false}, {2, 9, 2 * time.Second, false},
		{3, 8, 3 * time.Second, false}, {4, 9, 3 * time.Second, false}, {5, 0, 0, true},
	} {
		e, wait, giveUp := p.Next(x.attempt, c)
		if e.Seq != x.seq || wait != x.wait || giveUp != x.giveUp {
			t.Errorf("attempt %d: got #%d wait %s giveUp %t, want #%d %s %t", x.attempt, e.Seq, wait, giveUp, x.seq, x.wait, x.giveUp)
		}
	}
	if _, _, giveUp := p.Next(0, nil); !giveUp {
		t.Error("no candidates: want give up")
	}
}

func TestNextDueStartToStart(t *testing.T) {
	t0 := time.Unix(1000, 0)
	if got := nextDue(t0, t0.Add(200*time.Millisecond), time.Second); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("short checkpoint: next %s", got)
	}
	if got := nextDue(t0, t0.Add(1500*time.Millisecond), time.Second); !got.Equal(t0.Add(1500 * time.Millisecond)) {
		t.Errorf("overrun: next %s, want at once", got)
	}
}

func TestHealthThreshold(t *testing.T) {
	h := &health{threshold: 3}
	seq := []bool{false, false, true, false, false, false}
	want := []bool{false, false, false, false, false, true}
	for i, ok := range seq {
		if got := h.observe(ok); got != want[i] {
			t.Errorf("step %d: failed=%t, want %t", i, got, want[i])
		}
	}
}

// fakeRuntime is an in-memory runtime: one pod whose container can be
// made to exit, checkpoints written as small files, restores that can be
// made to fail.
type fakeRuntime struct {
	mu           sync.Mutex
	pod          cri.Pod
	checkpoints  int
	restores     []string // archives restored from
	failRestores int      // how many restores fail before one works
	removed      []string
	active       map[string]time.Time // checkpoints running now, per container
	overlap      bool
	podLevel     bool // implements CheckpointPod/RestorePod
	podCalls     int
	removeErr    error // RemovePod fails with it
	// spec makes the spec.dump of checkpoint n (nil: testSpec, what an
	// unprivileged container's looks like).
	spec func(n int) *specs.Spec
}

func (f *fakeRuntime) specOf(n int) *specs.Spec {
	if f.spec != nil {
		return f.spec(n)
	}
	return testSpec()
}

func (f *fakeRuntime) CheckpointPod(_ context.Context, sandboxID string, ids []string, outDir string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.podCalls++
	if !f.podLevel {
		return fmt.Errorf("CRI CheckpointPod: %w", cri.ErrUnsupported)
	}
	if len(ids) != 1 || ids[0] != f.pod.Containers[0].ID || sandboxID != f.pod.SandboxID {
		return fmt.Errorf("wrong pod checkpoint request %s %v", sandboxID, ids)
	}
	if err := os.MkdirAll(outDir+"/checkpoint", 0o700); err != nil {
		return err
	}
	if err := writeTestMetadata(outDir, f.specOf(f.podCalls)); err != nil {
		return err
	}
	return os.WriteFile(outDir+"/checkpoint/pages-1.img", []byte("pages"), 0o600)
}

func (f *fakeRuntime) RestorePod(_ context.Context, dir string, sb *runtimeapi.PodSandboxConfig, ctrs []*runtimeapi.ContainerConfig) (string, []string, error) {
	b, err := os.ReadFile(dir + "/checkpoint/pages-1.img")
	if err != nil || string(b) != "pages" {
		return "", nil, fmt.Errorf("pod checkpoint not unpacked: %v", err)
	}
	sbID, ctrID, err := f.RestoreContainer(context.Background(), sb, ctrs[0], dir)
	return sbID, []string{ctrID}, err
}

func (f *fakeRuntime) Version(context.Context) (string, error) { return "fake 1.0", nil }
func (f *fakeRuntime) ListPods(context.Context) ([]cri.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.pod
	p.Containers = append([]cri.Container(nil), f.pod.Containers...)
	return []cri.Pod{p}, nil
}
func (f *fakeRuntime) PodNetwork(context.Context, string) (string, bool, error) {
	return "", true, nil
}
func (f *fakeRuntime) SandboxConfig(_ context.Context, id string) (*runtimeapi.PodSandboxConfig, error) {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: f.pod.Name, Namespace: f.pod.Namespace, Uid: "u"}}, nil
}
func (f *fakeRuntime) ContainerConfig(_ context.Context, id string) (*runtimeapi.ContainerConfig, error) {
	return &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}}, nil
}
func (f *fakeRuntime) CheckpointContainer(_ context.Context, id, location string, _ time.Duration) error {
	f.mu.Lock()
	if _, busy := f.active[id]; busy {
		f.overlap = true
	}
	f.active[id] = time.Now()
	f.checkpoints++
	n := f.checkpoints
	spec := f.specOf(n)
	f.mu.Unlock()
	time.Sleep(5 * time.Millisecond)
	f.mu.Lock()
	delete(f.active, id)
	f.mu.Unlock()
	return writeTestArchive(location, spec, fmt.Sprintf("checkpoint %d", n))
}
func (f *fakeRuntime) RestoreContainer(_ context.Context, sb *runtimeapi.PodSandboxConfig, _ *runtimeapi.ContainerConfig, archive string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, archive)
	if f.failRestores > 0 {
		f.failRestores--
		return "", "", errors.New("criu failed: type RESTORE errno 0")
	}
	n := len(f.restores)
	f.pod.SandboxID = fmt.Sprintf("sb-%d", n)
	f.pod.CreatedAt = time.Now()
	f.pod.Containers = []cri.Container{{ID: fmt.Sprintf("ctr-%d", n), Name: "app", State: cri.StateRunning, CreatedAt: time.Now()}}
	return f.pod.SandboxID, f.pod.Containers[0].ID, nil
}
func (f *fakeRuntime) RemovePod(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.removeErr != nil {
		return f.removeErr
	}
	f.removed = append(f.removed, id)
	return nil
}
func (f *fakeRuntime) exit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pod.Containers[0].State = cri.StateExited
}

func newFake() *fakeRuntime {
	return &fakeRuntime{active: map[string]time.Time{}, pod: cri.Pod{SandboxID: "sb-0", Name: "web", Namespace: "ns", UID: "u",
		Annotations: map[string]string{discovery.AnnMode: "cr", discovery.AnnInterval: "0.1"}, CreatedAt: time.Now(),
		Containers: []cri.Container{{ID: "ctr-0", Name: "app", State: cri.StateRunning, CreatedAt: time.Now()}}}}
}

func startAgentLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startAgent(t *testing.T, rt *fakeRuntime, attempts int) (*Agent, *store.Store) {
	t.Helper()
	return startAgentWith(t, rt, attempts, nil)
}

func startAgentWith(t *testing.T, rt *fakeRuntime, attempts int, own Ownership) (*Agent, *store.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(dir+"/checkpoints", 3)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{
		Settings: Settings{Node: "n1", Method: MethodCRI, Defaults: discovery.Defaults{Interval: time.Second, ProbePeriod: time.Second, FailureThreshold: 3},
			CheckpointTimeout: time.Second, Retention: 3, ProbeTimeout: time.Second,
			Restore: RestorePolicy{MaxAttempts: attempts, BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}},
		Runtime: rt, Store: st, DataDir: dir, MaxConcurrent: 2, DiscoverEvery: 20 * time.Millisecond, Ownership: own,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, st
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

var wl = store.Workload{Namespace: "ns", Pod: "web", Container: "app"}

func TestAgentCheckpointsAndRestoresNewest(t *testing.T) {
	rt := newFake()
	a, st := startAgent(t, rt, 3)
	eventually(t, "4 checkpoints", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Checkpoints >= 4 })
	rt.exit()
	eventually(t, "a restore", func() bool { s := a.Status(); return s.Workloads[0].Restores == 1 })
	s := a.Status().Workloads[0]
	rt.mu.Lock()
	restored, removed, overlap := rt.restores[0], rt.removed, rt.overlap
	rt.mu.Unlock()
	if overlap {
		t.Error("two checkpoints of one container ran at once")
	}
	if s.LastRestore.Seq == 0 || !s.LastRestore.OK {
		t.Fatalf("last restore %+v", s.LastRestore)
	}
	used, err := st.Get(wl, s.LastRestore.Seq)
	if err != nil || used.Path != restored {
		t.Fatalf("restored from %s, want the archive of #%d (%v)", restored, s.LastRestore.Seq, err)
	}
	if len(removed) == 0 || removed[0] != "sb-0" {
		t.Errorf("the failed pod was not removed first: %v", removed)
	}
	// The restored container is checkpointed again under the same workload.
	before := s.Checkpoints
	eventually(t, "checkpoints of the restored container", func() bool { return a.Status().Workloads[0].Checkpoints > before+1 })
	if got := a.Status().Workloads[0].ContainerID; got != "ctr-1" {
		t.Errorf("workload now tracks container %s, want ctr-1", got)
	}
}

func TestAgentFallsBackToOlderCheckpointThenGivesUp(t *testing.T) {
	rt := newFake()
	rt.failRestores = 1
	a, st := startAgent(t, rt, 3)
	eventually(t, "3 checkpoints", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Checkpoints >= 3 })
	rt.exit()
	eventually(t, "a restore", func() bool { return a.Status().Workloads[0].Restores == 1 })
	rt.mu.Lock()
	first, second := rt.restores[0], rt.restores[1]
	rt.mu.Unlock()
	es, _ := st.List(wl)
	_ = es
	if first == second {
		t.Fatalf("the second attempt used the same archive %s, want the previous checkpoint", first)
	}

	// Now every restore fails: the agent gives up after 3 attempts.
	rt.mu.Lock()
	rt.failRestores = 100
	rt.mu.Unlock()
	rt.exit()
	eventually(t, "giving up", func() bool { return a.Status().Workloads[0].State == stateFailed })
	rt.mu.Lock()
	n := len(rt.restores)
	rt.mu.Unlock()
	if n != 2+3 {
		t.Errorf("%d restore calls, want 2 then 3 more before giving up", n)
	}
	time.Sleep(200 * time.Millisecond)
	rt.mu.Lock()
	if len(rt.restores) != n {
		t.Errorf("restores went on after giving up: %d calls", len(rt.restores))
	}
	rt.mu.Unlock()
}

func TestAgentUsesPodLevelCallsWhereImplemented(t *testing.T) {
	rt := newFake()
	rt.podLevel = true
	a, st := startAgent(t, rt, 3)
	eventually(t, "2 checkpoints", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Checkpoints >= 2 })
	es, err := st.List(wl)
	if err != nil || len(es) == 0 || es[0].Method != MethodCRIPod {
		t.Fatalf("checkpoints %+v (%v): want method %s", es, err, MethodCRIPod)
	}
	rt.exit()
	eventually(t, "a restore", func() bool { return a.Status().Workloads[0].Restores == 1 })

	// A runtime without the calls: asked once, then per-container calls.
	rt2 := newFake()
	a2, st2 := startAgent(t, rt2, 3)
	eventually(t, "3 checkpoints", func() bool { s := a2.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Checkpoints >= 3 })
	es, _ = st2.List(wl)
	rt2.mu.Lock()
	calls := rt2.podCalls
	rt2.mu.Unlock()
	if calls != 1 || es[0].Method != MethodCRI {
		t.Fatalf("CheckpointPod asked %d times, newest method %q: want 1 and %q", calls, es[0].Method, MethodCRI)
	}
}
