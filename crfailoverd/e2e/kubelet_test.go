package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// counterAnnotations protect the counter: a checkpoint every second, the
// HTTP probe on its port.
var counterAnnotations = map[string]string{
	"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "1", "hitachienergy.com/cr_probe_port": "8080",
}

// requireKubelet skips unless the bed's nodes run a real kubelet.
func requireKubelet(t *testing.T) testbed.Config {
	t.Helper()
	c := testbed.RequireE2E(t)
	if !c.Kubelet {
		t.Skipf("needs kubelet nodes (%s=1)", testbed.EnvKubelet)
	}
	return c
}

// copyWatch samples the live counter copies on every node every 100 ms
// and keeps the most seen at once.
type copyWatch struct {
	mu   sync.Mutex
	most int
	at   map[string]int
	stop chan struct{}
	done chan struct{}
}

func watchCopies(ctx context.Context, cb *clusterBed) *copyWatch {
	w := &copyWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if m, err := cb.copies(ctx); err == nil {
				w.mu.Lock()
				if n := total(m); n > w.most {
					w.most, w.at = n, m
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

// reset starts a new maximum.
func (w *copyWatch) reset() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	most := w.most
	w.most, w.at = 0, nil
	return most
}

func (w *copyWatch) halt() int {
	close(w.stop)
	<-w.done
	return w.reset()
}

// runningPods names the ready pod sandboxes on node n, as kubelet named
// them.
func runningPods(ctx context.Context, n testbed.Node) ([]string, error) {
	cri, err := testbed.DialCRI(n.Socket)
	if err != nil {
		return nil, err
	}
	defer cri.Close()
	resp, err := cri.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range resp.Items {
		out = append(out, p.Metadata.Name)
	}
	slices.Sort(out)
	return out, nil
}

// restoreAnswer is the counter's GET /restore.
type restoreAnswer struct {
	Restore bool  `json:"restore"`
	Counter int64 `json:"counter"`
}

func getRestore(ctx context.Context, b *testbed.Bed, node string) (restoreAnswer, error) {
	var r restoreAnswer
	n, err := b.Node(node)
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.AppURL()+"/restore", nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func kill(t *testing.T, b *testbed.Bed, node string) {
	t.Helper()
	n, _ := b.Node(node)
	resp, err := http.Get(n.AppURL() + "/kill")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// workloadStatus is the daemon's status of the counter on node.
func workloadStatus(ctx context.Context, cl *admin.Client) (api.WorkloadStatus, error) {
	st, err := cl.Status(ctx)
	if err != nil {
		return api.WorkloadStatus{}, err
	}
	for _, w := range st.Workloads {
		if w.ID == counterWL {
			return w, nil
		}
	}
	return api.WorkloadStatus{}, fmt.Errorf("no %s on %s", counterWL, st.Node)
}

// kubeletCheckpointsSince counts the counter's checkpoints taken through
// kubelet's API after t.
func kubeletCheckpointsSince(ctx context.Context, cl *admin.Client, t time.Time) (int, error) {
	cs, err := cl.Checkpoints(ctx, counterWL)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range cs {
		if c.Method == "kubelet" && c.Created.After(t) {
			n++
		}
	}
	return n, nil
}

// TestE2EKubeletNode: one node with a real kubelet (standalone) and
// crfailoverd (method kubelet, restore_mode static-pod). The counter runs
// as a static pod from the user's manifest; crfailoverd checkpoints it
// through kubelet's API, takes the manifest over (restored in place from
// the first checkpoint), and after GET /kill restores it once, as a static
// pod from its checkpoint image, which is checkpointed through kubelet
// again. At no 100 ms sample do two copies run. Then what kubelet does with
// a pod restored straight through the CRI on its node.
func TestE2EKubeletNode(t *testing.T) {
	c := requireKubelet(t)
	bin := daemonBinary(t, c)
	b := testbed.UpT(t, c, 1)
	cb := &clusterBed{t: t, b: b, bin: bin}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	cfg, err := b.DaemonConfig("n1", "kubelet", "")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := b.StartDaemon(ctx, "n1", bin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl := admin.NewClient(n1.DaemonSocket())
	watch := watchCopies(ctx, cb)
	if err := b.RunStaticCounter(ctx, "n1", "counter", counterAnnotations); err != nil {
		t.Fatal(err)
	}
	c0, err := b.Counter(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}

	// The take-over: the user's manifest leaves kubelet's directory for
	// DATA_DIR/adopted, crfailoverd's manifest runs the restored pod.
	ours := staticpod.FileName("default", "counter")
	waitUntil(t, 30*time.Second, "crfailoverd to take the static pod over", func() (bool, error) {
		files, err := b.StaticPodFiles("n1")
		if err != nil {
			return false, err
		}
		pods, err := runningPods(ctx, n1)
		if err != nil {
			return false, err
		}
		v, err := b.Counter(ctx, "n1")
		if err != nil {
			return false, err
		}
		// The restore from a checkpoint a moment old is too quick for
		// the counter's own restore detection (a gap of a second): the
		// counter going on from where it was says it kept its state.
		return slices.Equal(files, []string{ours}) && slices.Equal(pods, []string{"counter-r1-n1"}) && v >= c0,
			fmt.Errorf("static pod files %v, running pods %v, counter %d (at the start %d)", files, pods, v, c0)
	})
	if _, err := os.Stat(filepath.Join(n1.DaemonDir(), "adopted", "default_counter.yaml")); err != nil {
		t.Errorf("the user's manifest is not kept: %v", err)
	}
	tookOver := time.Now()
	waitUntil(t, 10*time.Second, "a checkpoint of the taken-over pod through kubelet's API", func() (bool, error) {
		n, err := kubeletCheckpointsSince(ctx, cl, tookOver)
		return n >= 1, err
	})
	adoptCopies := watch.reset()
	prev, err := workloadStatus(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}

	// GET /kill: the app exits; kubelet does not restart it (restartPolicy
	// Never); crfailoverd restores it once from its newest checkpoint.
	smp := startSampler(b, "n1")
	time.Sleep(1500 * time.Millisecond)
	kill(t, b, "n1")
	killed := time.Now()
	// GET /kill answers before the app exits: first it goes down.
	waitUntil(t, 10*time.Second, "the killed counter to stop answering", func() (bool, error) {
		_, err := getRestore(ctx, b, "n1")
		return err != nil, nil
	})
	var after restoreAnswer
	waitUntil(t, 60*time.Second, "the counter to answer again, restored", func() (bool, error) {
		after, err = getRestore(ctx, b, "n1")
		return err == nil && after.Restore && after.Counter > 0, err
	})
	servedAfter := time.Since(killed)
	waitUntil(t, 10*time.Second, "two checkpoints through kubelet's API after the restore", func() (bool, error) {
		n, err := kubeletCheckpointsSince(ctx, cl, killed.Add(servedAfter))
		return n >= 2, err
	})
	time.Sleep(3 * time.Second) // a second hand-over would show by now
	now, err := workloadStatus(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	killCopies := watch.halt()
	ckptsAfter, _ := kubeletCheckpointsSince(ctx, cl, killed)
	if handed := now.Restores - prev.Restores; handed != 1 {
		t.Errorf("restores handed to kubelet since the kill: %d, want 1", handed)
	}
	if now.State != "running" || now.ConsecutiveFailures != 0 {
		t.Errorf("after the restore: state %s, %d checkpoint failures in a row (%s)", now.State, now.ConsecutiveFailures, now.LastError)
	}
	if adoptCopies != 1 || killCopies != 1 {
		t.Errorf("most copies at once: %d during the take-over, %d after the kill; want 1", adoptCopies, killCopies)
	}
	// The counter when the restored checkpoint was taken.
	samples := smp.halt()
	atCkpt := sample{value: -1}
	if ri := now.LastRestore; ri != nil && ri.OK {
		atCkpt, _ = before(samples, ri.At.Add(-ri.Age))
	}
	if atCkpt.value < 0 || after.Counter < atCkpt.value {
		t.Errorf("counter %d after the restore, %d when the restored checkpoint was taken (last restore %+v)", after.Counter, atCkpt.value, now.LastRestore)
	}

	// A pod restored straight through the CRI on a kubelet node: with the
	// daemon stopped and its manifest gone (the counter's port is free).
	cs, err := cl.Checkpoints(ctx, counterWL)
	if err != nil || len(cs) == 0 {
		t.Fatalf("checkpoints: %v %v", cs, err)
	}
	if err := testbed.Signal(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(n1.StaticPodDir(), ours)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "kubelet to stop the counter", func() (bool, error) {
		pods, err := runningPods(ctx, n1)
		return len(pods) == 0, err
	})
	cri, err := testbed.DialCRI(n1.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cri.Close()
	// stoppedAfter waits until kubelet has stopped or removed sandbox id.
	stoppedAfter := func(what, id string, since time.Time) time.Duration {
		waitUntil(t, 60*time.Second, "kubelet to stop "+what, func() (bool, error) {
			resp, err := cri.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: id}})
			if err != nil {
				return false, err
			}
			return len(resp.Items) == 0 || resp.Items[0].State == runtimeapi.PodSandboxState_SANDBOX_NOTREADY, nil
		})
		d := time.Since(since)
		t.Logf("kubelet stopped %s %s after it started", what, d.Round(100*time.Millisecond))
		return d
	}
	// A pod created through the CRI, checkpointed at once through the CRI
	// (before kubelet gets to it), then that checkpoint restored through
	// the CRI: kubelet stops both.
	created, err := b.RunTestApp(ctx, "n1", testbed.PodSpec{Name: "direct"})
	if err != nil {
		t.Fatal(err)
	}
	direct := filepath.Join(n1.Dir, "direct.tar")
	if _, err := cri.Runtime.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: created.ContainerID, Location: direct, Timeout: 10}); err != nil {
		t.Fatalf("checkpoint the pod created through the CRI before kubelet stops it: %v", err)
	}
	createdStopped := stoppedAfter("the pod created through the CRI", created.SandboxID, time.Now().Add(-created.StartTime))
	restored, err := b.RestoreTestApp(ctx, "n1", testbed.PodSpec{Name: "direct-restored"}, direct)
	if err != nil {
		t.Fatalf("restore through the CRI on a kubelet node: %v", err)
	}
	restoredStopped := stoppedAfter("the pod restored through the CRI", restored.SandboxID, time.Now().Add(-restored.StartTime))

	if !t.Failed() {
		fmt.Printf("E2E kubelet-node: runtime=%s kubelet=%s checkpoint_api=real static_pod_restore=%t counter_at_checkpoint=%d counter_after_restore=%d served_after_kill_ms=%d checkpoints_after_restore=%d cri_created_pod_stopped_ms=%d cri_restored_pod_stopped_ms=%d\n",
			c.Runtime, strings.TrimPrefix(testbed.KubeletVersion, "v"), after.Restore, atCkpt.value, after.Counter, servedAfter.Milliseconds(), ckptsAfter, createdStopped.Milliseconds(), restoredStopped.Milliseconds())
	}
}

// waitServing waits until the counter answers on a node other than skip
// (a restored copy) and the cluster records it running there.
func (cb *clusterBed) waitServing(ctx context.Context, skip string, within time.Duration) (string, int64) {
	cb.t.Helper()
	var node string
	var v int64
	waitUntil(cb.t, within, "the counter to serve from another node than "+skip, func() (bool, error) {
		var ok bool
		if node, v, ok = cb.findServing(ctx, skip); !ok {
			return false, nil
		}
		w, err := cb.workload(ctx, node)
		return err == nil && w.Owner == node && w.Status == "running", err
	})
	return node, v
}

// TestE2EKubeletFailover: three kubelet nodes, crfailoverd clustered on
// each. The counter runs from the user's static pod manifest on n1; it is
// killed (GET /kill) and restored on a peer as a static pod; that peer is
// power-cut and the counter comes back on another; the dead node boots
// again (crfailoverd before kubelet, as the systemd units order them) and
// no copy of the counter comes back there. Across all of it, sampled every
// 100 ms on every node, never more than one copy runs, and each restored
// copy is checkpointed through its own kubelet's API.
func TestE2EKubeletFailover(t *testing.T) {
	requireKubelet(t)
	cb := startCluster(t, 3)
	b := cb.b
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	watch := watchCopies(ctx, cb)
	defer watch.halt()
	if err := b.RunStaticCounter(ctx, "n1", "counter", counterAnnotations); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "the counter taken over, registered and replicated", func() (bool, error) {
		w, err := cb.workload(ctx, "n1")
		if err != nil {
			return false, err
		}
		pods, err := runningPods(ctx, mustNode(t, b, "n1"))
		return w.Owner == "n1" && w.Status == "running" && w.Newest != nil && len(w.Newest.Holders) >= 2 &&
			slices.Equal(pods, []string{"counter-r1-n1"}), err
	})
	// checkpointedOn waits for two checkpoints of the copy on node through
	// that node's kubelet after since.
	checkpointedOn := func(node string, since time.Time) int {
		t.Helper()
		cl := cb.admin(node)
		n := 0
		waitUntil(t, 10*time.Second, "two checkpoints through the kubelet API of "+node, func() (bool, error) {
			var err error
			n, err = kubeletCheckpointsSince(ctx, cl, since)
			return n >= 2, err
		})
		return n
	}
	setupCopies := watch.reset()

	// The application fails: the cluster restores it on a peer.
	time.Sleep(time.Second)
	beforeKill, err := b.Counter(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	kill(t, b, "n1")
	killed := time.Now()
	owner, afterKill := cb.waitServing(ctx, "n1", 60*time.Second)
	t.Logf("after GET /kill on n1 (counter %d) the counter serves on %s at %d after %s", beforeKill, owner, afterKill, time.Since(killed).Round(time.Millisecond))
	if ra, err := getRestore(ctx, b, owner); err != nil || !ra.Restore {
		t.Errorf("after the kill, GET /restore on %s: %+v, %v; want the restored copy", owner, ra, err)
	}
	if afterKill+20 < beforeKill {
		// One interval (10 ticks) and the time to take and replicate a
		// checkpoint.
		t.Errorf("the counter lost %d ticks through the kill", beforeKill-afterKill)
	}
	checkpointedOn(owner, time.Now())
	killCopies := watch.reset()

	// The owner loses power: the counter comes back on the third node.
	r, err := b.PowerCutFailover(ctx, owner, otherThan(b, owner), testbed.TestWriter{T: t})
	if err != nil {
		t.Fatal(err)
	}
	ckpts := checkpointedOn(r.ServedOn, time.Now())
	failoverCopies := watch.reset()
	// The copy that serves is the restored one.
	if ra, err := getRestore(ctx, b, r.ServedOn); err != nil || !ra.Restore || ra.Counter < r.CounterAfter {
		t.Errorf("after the power cut, GET /restore on %s: %+v, %v; want the restored copy, counter at least %d", r.ServedOn, ra, err, r.CounterAfter)
	}

	// The dead node boots: crfailoverd first, then kubelet.
	dead := owner
	err = b.BootNode(ctx, dead, func(ctx context.Context) error {
		cfg, err := b.DaemonConfig(dead, "kubelet", "")
		if err != nil {
			return err
		}
		cl, err := b.ClusterConfig(dead, 3)
		if err != nil {
			return err
		}
		cb.pids[dead], err = b.StartDaemon(ctx, dead, cb.bin, cfg+cl)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, dead+" back in the cluster", func() (bool, error) {
		ms, err := cb.admin(r.ServedOn).Members(ctx)
		for _, m := range ms {
			if m.Name == dead && m.Status == "alive" {
				return true, nil
			}
		}
		return false, err
	})
	time.Sleep(10 * time.Second) // kubelet would have started a stale copy by now
	files, err := b.StaticPodFiles(dead)
	if err != nil {
		t.Fatal(err)
	}
	rebootCopies := watch.reset()
	if ra, err := getRestore(ctx, b, r.ServedOn); err != nil || !ra.Restore {
		t.Errorf("after the boot of %s, GET /restore on %s: %+v, %v; want the restored copy still serving", dead, r.ServedOn, ra, err)
	}
	if w, err := cb.workload(ctx, r.ServedOn); err != nil || w.Owner != r.ServedOn {
		t.Errorf("after the boot of %s the cluster says %+v, %v; want owner %s", dead, w, err, r.ServedOn)
	}
	if len(files) != 0 {
		t.Errorf("%s booted with static pod manifests %v, want none (the counter is %s's now)", dead, files, r.ServedOn)
	}
	if setupCopies != 1 || killCopies != 1 || failoverCopies != 1 || rebootCopies != 1 {
		t.Errorf("most copies at once: %d at the take-over, %d after the kill, %d after the power cut, %d after the boot; want 1 each",
			setupCopies, killCopies, failoverCopies, rebootCopies)
	}
	if r.CounterAfter <= 0 || r.Lost() > 30 {
		t.Errorf("after the power cut the counter is %d, %d before: lost %d ticks", r.CounterAfter, r.CounterLast, r.Lost())
	}
	if !t.Failed() {
		fmt.Printf("E2E kubelet-failover: runtime=%s app_kill_copies_max=%d failover_copies_max=%d reboot_copies_max=%d checkpoints_after_restore=%d failover_downtime_ms=%d lost_ticks=%d\n",
			b.Config().Runtime, killCopies, failoverCopies, rebootCopies, ckpts, r.Downtime.Milliseconds(), r.Lost())
	}
}

func mustNode(t *testing.T, b *testbed.Bed, name string) testbed.Node {
	t.Helper()
	n, err := b.Node(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// otherThan names a node of the bed other than these.
func otherThan(b *testbed.Bed, not ...string) string {
	for _, n := range b.Nodes() {
		if !slices.Contains(not, n.Name) {
			return n.Name
		}
	}
	return ""
}
