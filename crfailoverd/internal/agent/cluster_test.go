package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// boardWith publishes a view of node n1 in which wl has the given owner
// and epoch (no entry when owner is "").
func boardWith(owner string, epoch uint64, local bool) *ownership.Board {
	b := ownership.NewBoard("n1")
	v := &ownership.View{Node: "n1", Connected: true, LocalRestore: local, Workloads: map[string]ownership.Entry{}}
	if owner != "" {
		v.Workloads[wl.String()] = ownership.Entry{Owner: owner, Epoch: epoch, Status: "running"}
	}
	b.Publish(v)
	return b
}

// nextReport waits for a report of kind from the agent.
func nextReport(t *testing.T, a *Agent, kind ownership.ReportKind) ownership.Report {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-a.Reports():
			if r.Kind == kind {
				return r
			}
		case <-deadline:
			t.Fatalf("no %s report", kind)
		}
	}
}

func (f *fakeRuntime) removedSandboxes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.removed)
}

func TestAgentStopsACopyAnotherNodeOwns(t *testing.T) {
	rt := newFake()
	a, _ := startAgentWith(t, rt, 3, boardWith("n2", 2, false))
	eventually(t, "the copy removed", func() bool { return slices.Contains(rt.removedSandboxes(), "sb-0") })
	if n := len(a.Status().Workloads); n != 0 {
		t.Fatalf("%d workload(s) looked after; a copy another node owns must not be", n)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.checkpoints != 0 {
		t.Fatalf("%d checkpoint(s) of a copy another node owns", rt.checkpoints)
	}
}

func TestAgentReportsACopyTheClusterDoesNotKnow(t *testing.T) {
	rt := newFake()
	a, _ := startAgentWith(t, rt, 3, boardWith("", 0, false))
	r := nextReport(t, a, ownership.Unregistered)
	if r.Workload.ID != wl || r.Workload.SandboxID != "sb-0" {
		t.Fatalf("report %+v", r)
	}
	if n := len(a.Status().Workloads); n != 0 {
		t.Fatalf("an unregistered copy is looked after before the cluster knows it (%d)", n)
	}
}

func TestAgentChecksOwnedCopyAndReportsCheckpoints(t *testing.T) {
	rt := newFake()
	a, _ := startAgentWith(t, rt, 3, boardWith("n1", 1, false))
	r := nextReport(t, a, ownership.Checkpointed)
	if r.CopyEpoch != 1 || r.Entry.Seq == 0 || r.Entry.Workload != wl {
		t.Fatalf("checkpoint report %+v", r)
	}
}

func TestAgentHandsAnApplicationFailureToTheCluster(t *testing.T) {
	rt := newFake()
	a, _ := startAgentWith(t, rt, 3, boardWith("n1", 1, false))
	nextReport(t, a, ownership.Checkpointed)
	rt.exit()
	r := nextReport(t, a, ownership.AppFailed)
	if r.CopyEpoch != 1 || !strings.Contains(r.Reason, "exited") {
		t.Fatalf("failure report %+v", r)
	}
	if !slices.Contains(rt.removedSandboxes(), "sb-0") {
		t.Fatal("the failed pod was not removed before the hand-over")
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.restores) != 0 {
		t.Fatalf("restored locally under policy peer: %v", rt.restores)
	}
}

func TestAgentRestoresLocallyUnderPolicyLocal(t *testing.T) {
	rt := newFake()
	a, _, rec := startRecorded(t, rt) // in a cluster only recorded checkpoints are restored
	eventually(t, "a recorded checkpoint", func() bool { return rec.recorded() >= 1 })
	rt.exit()
	eventually(t, "a local restore", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Restores == 1 })
}

func TestPlacementRestoreNeedsTheOldCopyGone(t *testing.T) {
	rt := newFake()
	a, st := startAgentWith(t, rt, 3, boardWith("n1", 1, false))
	e := nextReport(t, a, ownership.Checkpointed).Entry
	cfg, err := a.RecordConfig(context.Background(), nextWorkload(t, a))
	if err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	rt.removeErr = errors.New("runtime: pod is busy")
	rt.mu.Unlock()
	_, err = a.Restore(context.Background(), ownership.Placement{Entry: e, Config: cfg, Epoch: 3, Reason: "test"})
	if err == nil || !strings.Contains(err.Error(), "remove the older local copy") || !strings.Contains(err.Error(), "pod is busy") {
		t.Fatalf("restore with an undead older copy: %v", err)
	}
	rt.mu.Lock()
	n := len(rt.restores)
	rt.mu.Unlock()
	if n != 0 {
		t.Fatalf("restored beside an older copy (%d restore call(s))", n)
	}
	if _, err := st.Get(wl, e.Seq); err != nil {
		t.Fatal(err)
	}
}

func TestPlacementRestoreRefusesABadConfiguration(t *testing.T) {
	rt := newFake()
	a, _ := startAgentWith(t, rt, 3, boardWith("n1", 1, false))
	e := nextReport(t, a, ownership.Checkpointed).Entry
	if _, err := a.Restore(context.Background(), ownership.Placement{Entry: e, Config: []byte(`{"sandbox": 7}`), Epoch: 3}); err == nil || !strings.Contains(err.Error(), "restore configuration") {
		t.Fatalf("restore with a broken configuration: %v", err)
	}
}

// nextWorkload returns the discovered workload the agent looks after.
func nextWorkload(t *testing.T, a *Agent) (w discovery.Workload) {
	t.Helper()
	eventually(t, "a workload", func() bool { return len(a.Status().Workloads) == 1 })
	a.mu.Lock()
	defer a.mu.Unlock()
	wk := a.workers[store.Workload{Namespace: "ns", Pod: "web", Container: "app"}]
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.spec
}
