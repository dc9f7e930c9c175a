package testbed

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
)

// TestE2ENativeDaemon runs the real crfailoverd as a cluster of three
// containerd 2.4.2 nodes without kubelet, where the CRI checkpoints but
// does not restore: the daemons restore natively (nativert). The
// protected counter starts on n1 through the CRI; a power cut of n1 brings
// it back on a peer natively with its state; the daemon there supervises
// that copy and checkpoints it natively, the checkpoint is replicated,
// and a power cut of that node brings it back a second time, on the last
// node, from the native checkpoint.
func TestE2ENativeDaemon(t *testing.T) {
	c := requireNativeBed(t, "the native daemon")
	b := upBed(t, c, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin := buildDaemon(t, c)
	if _, err := b.StartCluster(ctx, bin); err != nil {
		t.Fatal(err)
	}
	for _, n := range b.Nodes() {
		waitLog(ctx, t, n.DaemonLog(), "restoring natively through containerd's client")
	}
	if err := b.RunProtectedCounter(ctx, "n1", false); err != nil {
		t.Fatal(err)
	}

	owner, observer := "n1", "n2"
	dead := map[string]bool{}
	// The first cut's node comes back for the second (see below).
	var downtimes []string
	restoredOK := true
	for cut := 1; cut <= 2; cut++ {
		before, err := b.Counter(ctx, owner)
		if err != nil {
			t.Fatal(err)
		}
		// The restored counter can only be held to "not below before" if
		// a peer holds a checkpoint begun after before was read (CI once
		// cut n1 when the newest replicated checkpoint was older).
		waitProtected(ctx, t, b, owner, time.Now())
		r, err := b.PowerCutFailover(ctx, owner, observer, testWriter{t})
		if err != nil {
			t.Fatalf("cut %d of %s: %v", cut, owner, err)
		}
		dead[owner] = true
		served, _ := b.Node(r.ServedOn)
		var ans struct {
			Restore bool  `json:"restore"`
			Counter int64 `json:"counter"`
		}
		if err := httpGet(ctx, served.AppURL()+"/restore", &ans); err != nil {
			t.Fatalf("GET /restore on %s: %v", r.ServedOn, err)
		}
		// As in the mixed-runtimes test: the state is kept when the
		// counter goes on from at least before (a fresh start counts from
		// 0); the app's restore flag, a pause of its clock, is a hint.
		if r.CounterAfter < before || before == 0 {
			restoredOK = false
			t.Errorf("cut %d: on %s counter %d after the restore, %d before the cut (restore flag %v): want not below %d", cut, r.ServedOn, r.CounterAfter, before, ans.Restore, before)
		}
		// The copy is native: containerd has it in crfailoverd's
		// namespace, the CRI does not.
		ids := nativeContainers(ctx, t, served)
		if len(ids) != 1 {
			t.Errorf("cut %d: native containers on %s: %v, want the counter's", cut, r.ServedOn, ids)
		}
		for _, id := range ids {
			if slices.Contains(criContainerIDs(ctx, t, served.Socket), id) {
				t.Errorf("cut %d: the CRI of %s lists the native copy %s", cut, r.ServedOn, id)
			}
		}
		t.Logf("cut %d: %s -> %s detect_ms=%d downtime_ms=%d counter %d -> %d (lost %d ticks) restore=%v epoch=%d native=%v",
			cut, owner, r.ServedOn, r.Detect.Milliseconds(), r.Downtime.Milliseconds(), r.CounterLast, r.CounterAfter, r.Lost(), ans.Restore, r.Workload.Epoch, ids)
		downtimes = append(downtimes, fmt.Sprint(r.Downtime.Milliseconds()))
		owner = r.ServedOn
		if cut == 2 {
			break
		}
		// Three voters stay three (the leader never shrinks Raft below
		// that), so a second cut needs the first node back: boot n1 again
		// with its daemon, as after a repair.
		first := "n1"
		if err := b.StartNode(ctx, first); err != nil {
			t.Fatal(err)
		}
		if err := restartDaemon(ctx, b, first, bin); err != nil {
			t.Fatal(err)
		}
		dead[first] = false
		observer = first
		// The daemon on the new owner supervises the native copy and
		// checkpoints it natively; the checkpoint reaches the other
		// alive node.
		restored := r.LastGood.Add(r.Downtime)
		err = poll(ctx, 60*time.Second, fmt.Sprintf("a checkpoint of the native copy on %s held by a peer too", owner), func() (bool, error) {
			w, err := b.ClusterWorkload(ctx, observer, CounterWorkload)
			if err != nil {
				return false, err
			}
			return w.Owner == owner && w.Status == "running" && w.Newest != nil && w.Newest.Created.After(restored) &&
				slices.Contains(w.Newest.Holders, owner) && len(w.Newest.Holders) >= 2, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := countLog(t, served.DaemonLog(), "checkpointed natively"); n == 0 {
			t.Fatalf("the daemon on %s logged no native checkpoint", owner)
		}
	}
	line := fmt.Sprintf("E2E native-daemon: containerd=%s failovers=2 restored_ok=%v downtime_ms=%s", nativeContainerd, restoredOK, strings.Join(downtimes, ","))
	if t.Failed() {
		t.Log(line)
		return
	}
	fmt.Println(line)
}

// restartDaemon starts node's crfailoverd again with the configuration
// StartCluster gave it, and waits until the cluster has it as an alive
// Raft member again.
func restartDaemon(ctx context.Context, b *Bed, node, bin string) error {
	cfg, err := b.DaemonConfig(node, "cri", "")
	if err != nil {
		return err
	}
	cl, err := b.ClusterConfig(node, len(b.Nodes()))
	if err != nil {
		return err
	}
	if _, err := b.StartDaemon(ctx, node, bin, cfg+cl); err != nil {
		return err
	}
	a, err := b.Admin(node)
	if err != nil {
		return err
	}
	return poll(ctx, 90*time.Second, node+" back as an alive Raft member", func() (bool, error) {
		ms, err := a.Members(ctx)
		if err != nil {
			return false, err
		}
		alive := 0
		for _, m := range ms {
			if m.Status == "alive" && m.Raft != "" {
				alive++
			}
		}
		return alive == len(b.Nodes()), nil
	})
}

// nativeContainers lists crfailoverd's containers in containerd on node
// n (the daemon's native state directory is only read).
func nativeContainers(ctx context.Context, t *testing.T, n Node) []string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "native-list")
	r, err := nativerestore.New(n.Socket, nativerestore.Options{StateDir: dir, Log: slog.New(slog.NewTextHandler(TestWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cs, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cs {
		// A copy being checkpointed is paused for a tenth of a second.
		if c.Status == "running" || c.Status == "paused" || c.Status == "pausing" {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

// waitLog waits until the log at path has a line containing s.
func waitLog(ctx context.Context, t *testing.T, path, s string) {
	t.Helper()
	if err := poll(ctx, 30*time.Second, fmt.Sprintf("%q in %s", s, path), func() (bool, error) {
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), s), err
	}); err != nil {
		t.Fatal(err)
	}
}

// countLog counts the lines of the log at path that contain s.
func countLog(t *testing.T, path, s string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}
