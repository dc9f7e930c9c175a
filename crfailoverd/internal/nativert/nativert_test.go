package nativert

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// fakeCRI records the calls that reach the CRI.
type fakeCRI struct {
	pods  []cri.Pod
	calls []string
}

func (f *fakeCRI) call(s string) { f.calls = append(f.calls, s) }
func (f *fakeCRI) Version(context.Context) (string, error) {
	f.call("Version")
	return "containerd v2.4.2", nil
}
func (f *fakeCRI) ListPods(context.Context) ([]cri.Pod, error) {
	f.call("ListPods")
	return slices.Clone(f.pods), nil
}
func (f *fakeCRI) PodNetwork(_ context.Context, id string) (string, bool, error) {
	f.call("PodNetwork " + id)
	return "10.0.0.5", false, nil
}
func (f *fakeCRI) SandboxConfig(_ context.Context, id string) (*runtimeapi.PodSandboxConfig, error) {
	f.call("SandboxConfig " + id)
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "cri"}}, nil
}
func (f *fakeCRI) ContainerConfig(_ context.Context, id string) (*runtimeapi.ContainerConfig, error) {
	f.call("ContainerConfig " + id)
	return &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "cri"}}, nil
}
func (f *fakeCRI) CheckpointContainer(_ context.Context, id, loc string, _ time.Duration) error {
	f.call("CheckpointContainer " + id + " " + loc)
	return nil
}
func (f *fakeCRI) CheckpointPod(_ context.Context, id string, _ []string, _ string, _ time.Duration) error {
	f.call("CheckpointPod " + id)
	return nil
}
func (f *fakeCRI) RemovePod(_ context.Context, id string) error {
	f.call("RemovePod " + id)
	return nil
}

// fakeNative keeps containers in memory as containerd would.
type fakeNative struct {
	ctrs       map[string]nativerestore.Info
	status     map[string]string
	calls      []string
	inspects   int
	inspectErr map[string]error // by container ID
}

func newFakeNative() *fakeNative {
	return &fakeNative{ctrs: map[string]nativerestore.Info{}, status: map[string]string{}}
}

func (f *fakeNative) Restore(_ context.Context, req nativerestore.Request) (nativerestore.Result, error) {
	f.calls = append(f.calls, "Restore "+req.ID+" "+req.Archive)
	if _, dup := f.ctrs[req.ID]; dup {
		return nativerestore.Result{}, fmt.Errorf("container %s: %w", req.ID, errdefs.ErrAlreadyExists)
	}
	f.ctrs[req.ID] = nativerestore.Info{ID: req.ID, Created: time.Unix(1000, 0), Image: "img", Registration: req.Registration}
	f.status[req.ID] = "running"
	return nativerestore.Result{ID: req.ID, Image: "img"}, nil
}
func (f *fakeNative) List(context.Context) ([]nativerestore.Container, error) {
	var out []nativerestore.Container
	for id := range f.ctrs {
		out = append(out, nativerestore.Container{ID: id, Status: f.status[id]})
	}
	slices.SortFunc(out, func(a, b nativerestore.Container) int { return compare(a.ID, b.ID) })
	return out, nil
}
func (f *fakeNative) Inspect(_ context.Context, id string) (nativerestore.Info, error) {
	f.inspects++
	if err := f.inspectErr[id]; err != nil {
		return nativerestore.Info{}, err
	}
	i, ok := f.ctrs[id]
	if !ok {
		return i, fmt.Errorf("inspect %s: %w", id, errdefs.ErrNotFound)
	}
	return i, nil
}
func (f *fakeNative) Checkpoint(_ context.Context, id, loc string) (nativerestore.CheckpointResult, error) {
	f.calls = append(f.calls, "Checkpoint "+id+" "+loc)
	if _, ok := f.ctrs[id]; !ok {
		return nativerestore.CheckpointResult{}, errdefs.ErrNotFound
	}
	return nativerestore.CheckpointResult{ID: id}, nil
}
func (f *fakeNative) Remove(_ context.Context, id string) error {
	f.calls = append(f.calls, "Remove "+id)
	delete(f.ctrs, id)
	delete(f.status, id)
	return nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// registration is the counter's, as the agent restores it: the sandbox
// annotations (mode, interval, epoch) and labels of the recorded pod.
func registration(epoch string) (*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig) {
	sb := &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "default", Uid: "u1", Attempt: 7},
		Labels:      map[string]string{"app": "counter"},
		Annotations: map[string]string{discovery.AnnMode: discovery.ModeCheckpointValue, discovery.AnnInterval: "1", discovery.AnnEpoch: epoch},
	}
	ctr := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "counter", Attempt: 2},
		Image:    &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"},
	}
	return sb, ctr
}

func newRuntime(c *fakeCRI, n *fakeNative) *Runtime {
	r := New(c, n, nil)
	seq := 0
	r.newID = func(*runtimeapi.PodSandboxConfig, *runtimeapi.ContainerConfig) string {
		seq++
		return fmt.Sprintf("crf-counter-%d", seq)
	}
	return r
}

// A restore goes native and gives synthetic IDs; every call with such an
// ID goes to the native side, every other to the CRI.
func TestIDMapping(t *testing.T) {
	ctx := context.Background()
	c, n := &fakeCRI{}, newFakeNative()
	r := newRuntime(c, n)
	sb, ctr := registration("5")
	sbID, ctrID, err := r.RestoreContainer(ctx, sb, ctr, "/tmp/plain.tar")
	if err != nil {
		t.Fatal(err)
	}
	if sbID != "native-crf-counter-1" || ctrID != "native-crf-counter-1" {
		t.Fatalf("IDs %q %q, want native-crf-counter-1 twice", sbID, ctrID)
	}
	if !slices.Equal(n.calls, []string{"Restore crf-counter-1 /tmp/plain.tar"}) || len(c.calls) != 0 {
		t.Fatalf("native calls %v, CRI calls %v: want one native restore and no CRI call", n.calls, c.calls)
	}

	ip, host, err := r.PodNetwork(ctx, sbID)
	if err != nil || ip != "" || !host {
		t.Errorf("PodNetwork of a native copy: %q %v %v, want host network", ip, host, err)
	}
	gotSB, err := r.SandboxConfig(ctx, sbID)
	if err != nil || gotSB.GetMetadata().GetName() != "counter" || gotSB.GetAnnotations()[discovery.AnnEpoch] != "5" {
		t.Errorf("SandboxConfig of a native copy: %v, %v; want the registration's (epoch 5)", gotSB, err)
	}
	gotCtr, err := r.ContainerConfig(ctx, ctrID)
	if err != nil || gotCtr.GetImage().GetImage() != "localhost:5000/counter:latest" {
		t.Errorf("ContainerConfig of a native copy: %v, %v", gotCtr, err)
	}
	// The copies handed out are the agent's to change.
	gotSB.Annotations[discovery.AnnEpoch] = "99"
	if again, _ := r.SandboxConfig(ctx, sbID); again.GetAnnotations()[discovery.AnnEpoch] != "5" {
		t.Error("changing a returned sandbox configuration changed the recorded registration")
	}
	if err := r.CheckpointContainer(ctx, ctrID, "/store/tmp1", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.CheckpointPod(ctx, sbID, []string{ctrID}, "/x", time.Second); !errors.Is(err, cri.ErrUnsupported) {
		t.Errorf("CheckpointPod of a native copy: %v, want cri.ErrUnsupported", err)
	}
	if _, _, err := r.RestorePod(ctx, "/x", sb, nil); !errors.Is(err, cri.ErrUnsupported) {
		t.Errorf("RestorePod: %v, want cri.ErrUnsupported", err)
	}
	if err := r.RemovePod(ctx, sbID); err != nil {
		t.Fatal(err)
	}
	if len(c.calls) != 0 {
		t.Errorf("calls about a native copy reached the CRI: %v", c.calls)
	}
	want := []string{"Restore crf-counter-1 /tmp/plain.tar", "Checkpoint crf-counter-1 /store/tmp1", "Remove crf-counter-1"}
	if !slices.Equal(n.calls, want) {
		t.Errorf("native calls %v, want %v", n.calls, want)
	}

	// CRI IDs go to the CRI.
	const criID = "4f2a9c0e5b7d"
	n.calls = nil
	_, host, _ = r.PodNetwork(ctx, criID)
	_, _ = r.SandboxConfig(ctx, criID)
	_, _ = r.ContainerConfig(ctx, criID)
	_ = r.CheckpointContainer(ctx, criID, "/store/tmp2", time.Second)
	_ = r.CheckpointPod(ctx, criID, nil, "/x", time.Second)
	_ = r.RemovePod(ctx, criID)
	wantCRI := []string{"PodNetwork " + criID, "SandboxConfig " + criID, "ContainerConfig " + criID, "CheckpointContainer " + criID + " /store/tmp2", "CheckpointPod " + criID, "RemovePod " + criID}
	if !slices.Equal(c.calls, wantCRI) || len(n.calls) != 0 || host {
		t.Errorf("CRI calls %v (want %v), native calls %v, host network %v", c.calls, wantCRI, n.calls, host)
	}
}

// ListPods gives the CRI's pods and the native copies as pods that
// discovery takes for the workload's copy, epoch included, in their
// task's state.
func TestListPodsMerges(t *testing.T) {
	ctx := context.Background()
	other := cri.Pod{SandboxID: "abc123", Name: "web", Namespace: "default", Annotations: map[string]string{discovery.AnnMode: discovery.ModeCheckpointValue},
		Containers: []cri.Container{{ID: "def456", Name: "web", State: cri.StateRunning}}}
	c, n := &fakeCRI{pods: []cri.Pod{other}}, newFakeNative()
	r := newRuntime(c, n)
	sb, ctr := registration("12")
	if _, _, err := r.RestoreContainer(ctx, sb, ctr, "/tmp/a.tar"); err != nil {
		t.Fatal(err)
	}
	pods, err := r.ListPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 || pods[0].SandboxID != "abc123" {
		t.Fatalf("pods %+v: want the CRI's pod, then the native copy", pods)
	}
	p := pods[1]
	if p.SandboxID != "native-crf-counter-1" || p.Name != "counter" || p.Namespace != "default" || p.UID != "u1" || p.Attempt != 7 ||
		p.Labels["app"] != "counter" || len(p.Containers) != 1 || p.Containers[0].ID != "native-crf-counter-1" ||
		p.Containers[0].Name != "counter" || p.Containers[0].State != cri.StateRunning || p.Containers[0].Image != "localhost:5000/counter:latest" {
		t.Errorf("native pod %+v", p)
	}
	ws, problems := discovery.Find(pods, discovery.Defaults{Interval: 10 * time.Second})
	if len(problems) > 0 {
		t.Fatalf("discovery problems: %v", problems)
	}
	i := slices.IndexFunc(ws, func(w discovery.Workload) bool {
		return w.ID == store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}
	})
	if len(ws) != 2 || i < 0 {
		t.Fatalf("discovered %+v: want web and the counter", ws)
	}
	if w := ws[i]; w.SandboxID != "native-crf-counter-1" || w.ContainerID != "native-crf-counter-1" || w.Epoch != 12 || w.Interval != time.Second || w.State != cri.StateRunning {
		t.Errorf("discovered counter %+v: want the native copy, epoch 12, interval 1s, running", w)
	}

	// The task's state: stopped is exited (the agent's app failure).
	n.status["crf-counter-1"] = "stopped"
	pods, _ = r.ListPods(ctx)
	if st := pods[1].Containers[0].State; st != cri.StateExited {
		t.Errorf("a stopped task shows as %s, want exited", st)
	}
}

// A daemon started again (a new Runtime, nothing in memory) recovers each
// copy's registration from containerd, once, and forgets removed ones.
func TestRegistrationAfterRestart(t *testing.T) {
	ctx := context.Background()
	n := newFakeNative()
	sb, ctr := registration("3")
	if _, _, err := newRuntime(&fakeCRI{}, n).RestoreContainer(ctx, sb, ctr, "/tmp/a.tar"); err != nil {
		t.Fatal(err)
	}
	r := newRuntime(&fakeCRI{}, n) // the restarted daemon
	for range 3 {
		pods, err := r.ListPods(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) != 1 || pods[0].Annotations[discovery.AnnEpoch] != "3" {
			t.Fatalf("after a restart: pods %+v, want the native copy with epoch 3", pods)
		}
	}
	if n.inspects != 1 {
		t.Errorf("%d inspections of one container over three listings, want 1", n.inspects)
	}
	got, err := r.ContainerConfig(ctx, "native-crf-counter-1")
	if err != nil || got.GetMetadata().GetName() != "counter" {
		t.Errorf("ContainerConfig after a restart: %v, %v", got, err)
	}
	delete(n.ctrs, "crf-counter-1") // removed behind the daemon's back
	if pods, _ := r.ListPods(ctx); len(pods) != 0 {
		t.Errorf("pods %+v after the copy went", pods)
	}
	if _, err := r.SandboxConfig(ctx, "native-crf-counter-1"); !errdefs.IsNotFound(err) {
		t.Errorf("SandboxConfig of a removed copy: %v, want not found", err)
	}
}

func TestStateOf(t *testing.T) {
	for _, tc := range []struct {
		status string
		age    time.Duration
		want   cri.ContainerState
	}{
		{"running", time.Hour, cri.StateRunning},
		{"paused", time.Second, cri.StateRunning}, // a checkpoint in progress
		{"pausing", time.Second, cri.StateRunning},
		{"created", time.Second, cri.StateCreated},
		{"stopped", time.Second, cri.StateExited},
		// No task: being restored while young, gone (a reboot) later.
		{"", 100 * time.Millisecond, cri.StateCreated},
		{"", restoreWindow, cri.StateExited},
		{"", 24 * time.Hour, cri.StateExited},
		{"weird", time.Second, cri.StateUnknown},
	} {
		if got := stateOf(tc.status, tc.age); got != tc.want {
			t.Errorf("stateOf(%q, %s) = %s, want %s", tc.status, tc.age, got, tc.want)
		}
	}
}

// A listing taken while a restore runs (the container made, its task not
// yet) shows the copy created, not exited: the agent must not take it for
// the application's exit and restore again.
func TestListDuringRestore(t *testing.T) {
	ctx := context.Background()
	n := newFakeNative()
	r := newRuntime(&fakeCRI{}, n)
	now := time.Unix(1000, 0).Add(300 * time.Millisecond)
	r.now = func() time.Time { return now }
	sb, ctr := registration("2")
	n.ctrs["crf-counter-9"] = nativerestore.Info{ID: "crf-counter-9", Created: time.Unix(1000, 0), Registration: restorecfgOf(sb, ctr)}
	n.status["crf-counter-9"] = "" // no task yet
	pods, err := r.ListPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Containers[0].State != cri.StateCreated {
		t.Fatalf("during a restore: %+v, want the copy created", pods)
	}
	now = now.Add(restoreWindow) // long after: the task is gone, the copy has exited
	if pods, _ := r.ListPods(ctx); pods[0].Containers[0].State != cri.StateExited {
		t.Errorf("a copy without a task long after its creation shows %s, want exited", pods[0].Containers[0].State)
	}
}

func TestRandomID(t *testing.T) {
	sb := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "My Pod/with:odd*chars-and-a-very-long-name-that-goes-on-and-on-and-on"}}
	a, b := randomID(sb, nil), randomID(sb, nil)
	if a == b {
		t.Errorf("two IDs alike: %s", a)
	}
	for _, id := range []string{a, b, randomID(&runtimeapi.PodSandboxConfig{}, nil)} {
		if len(id) > 76 || !regexpID.MatchString(id) {
			t.Errorf("ID %q breaks containerd's rules", id)
		}
	}
}

func restorecfgOf(sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig) restorecfg.Config {
	return restorecfg.Config{Sandbox: sb, Container: ctr}
}

// regexpID is nativerestore's rule for container IDs.
var regexpID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,75}$`)

func TestWanted(t *testing.T) {
	for _, tc := range []struct {
		name, version string
		kubelet       bool
		want          bool
	}{
		{"containerd", "v2.4.2", false, true},
		{"containerd", "2.5.0", false, true},
		{"containerd", "v2.4.2", true, false}, // kubelet would not see native copies
		{"containerd", "v2.3.7", false, false},
		{"containerd", "v2.1.9", false, false},
		{"cri-o", "1.36.3", false, false},
		{"containerd", "garbage", false, false},
	} {
		if got := Wanted(tc.name, tc.version, tc.kubelet); got != tc.want {
			t.Errorf("Wanted(%s %s, kubelet %v) = %v, want %v", tc.name, tc.version, tc.kubelet, got, tc.want)
		}
	}
}

// TestListPodsUnreadableCopies: a native copy whose registration cannot
// be read by any daemon is removed (it could be neither supervised nor
// fenced); a transient failure to inspect one fails the listing, so that
// the agent keeps what it knew instead of taking the copy for lost.
func TestListPodsUnreadableCopies(t *testing.T) {
	ctx := context.Background()
	c, n := &fakeCRI{}, newFakeNative()
	r := newRuntime(c, n)
	sb, ctr := registration("12")
	if _, _, err := r.RestoreContainer(ctx, sb, ctr, "/tmp/a.tar"); err != nil {
		t.Fatal(err)
	}
	var id string
	for k := range n.ctrs {
		id = k
	}
	r = newRuntime(c, n) // a restarted daemon: nothing cached
	n.inspectErr = map[string]error{id: fmt.Errorf("inspect %s: %w", id, errors.New("connection reset"))}
	if pods, err := r.ListPods(ctx); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("transient inspect failure: pods %+v, %v; want the listing to fail", pods, err)
	}
	if _, still := n.ctrs[id]; !still {
		t.Fatal("a transient failure removed the copy")
	}
	n.inspectErr = map[string]error{id: fmt.Errorf("inspect %s: %w", id, nativerestore.ErrBadRegistration)}
	pods, err := r.ListPods(ctx)
	if err != nil || len(pods) != 0 {
		t.Errorf("unreadable registration: pods %+v, %v; want none listed", pods, err)
	}
	if _, still := n.ctrs[id]; still || !slices.Contains(n.calls, "Remove "+id) {
		t.Errorf("a copy with an unreadable registration was not removed (calls %v)", n.calls)
	}
}
