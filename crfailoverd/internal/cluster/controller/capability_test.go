package controller

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

type capsSource struct {
	mu sync.Mutex
	c  capability.Node
}

func (s *capsSource) get() capability.Node  { s.mu.Lock(); defer s.mu.Unlock(); return s.c }
func (s *capsSource) set(c capability.Node) { s.mu.Lock(); s.c = c; s.mu.Unlock() }

func (r *rig) capsReports() []*state.NodeCapabilities {
	var out []*state.NodeCapabilities
	for _, c := range r.prop.sent() {
		if nc, ok := c.(*state.NodeCapabilities); ok {
			out = append(out, nc)
		}
	}
	return out
}

// TestControllerReportsCapabilities: nothing before the runtime was
// checked, or before the state records the node; then one report; none
// while they stay the same (a new Checked time, another flag order), nor
// while a refused one waits for its retry; one more when they change.
func TestControllerReportsCapabilities(t *testing.T) {
	src := &capsSource{}
	r := newRig(t, baseState(t, nil), fakeStore{})
	r.c.o.Capabilities = src.get
	ctx := context.Background()
	pass := func() { r.c.reportCapabilities(ctx, r.st.State()); r.c.wg.Wait() }
	pass()
	if got := r.capsReports(); len(got) != 0 {
		t.Fatalf("reported %+v before anything was found out", got[0])
	}
	at := time.Now()
	caps := capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true, Restore: capability.RestoreCreate,
		CPUFlags: []string{"avx", "sse"}, Checked: at}
	src.set(caps)
	// Not recorded yet: no report.
	unrecorded := newRig(t, state.New(), fakeStore{})
	unrecorded.c.o.Capabilities = src.get
	unrecorded.c.reportCapabilities(ctx, unrecorded.st.State())
	unrecorded.c.wg.Wait()
	if got := unrecorded.capsReports(); len(got) != 0 {
		t.Fatal("reported for a node the state does not record")
	}
	pass()
	if n := r.st.State().Nodes["n2"]; len(r.capsReports()) != 1 || n.Caps == nil || n.Caps.Restore != capability.RestoreCreate {
		t.Fatalf("%d reports, state %+v; want one, recorded", len(r.capsReports()), n.Caps)
	}
	same := caps
	same.Checked, same.CPUFlags = at.Add(time.Minute), []string{"sse", "avx"}
	src.set(same)
	for range 5 {
		pass()
	}
	if got := r.capsReports(); len(got) != 1 {
		t.Fatalf("%d reports of unchanged capabilities, want 1", len(got))
	}
	// A change is reported; when the cluster refuses it, it is sent again
	// only after capsRetry.
	off := caps
	off.Restore, off.RestoreReason = capability.RestoreNone, "restore via create is off"
	src.set(off)
	r.prop.mu.Lock()
	r.prop.fail = func(state.Command) error { return errors.New("no leader") }
	r.prop.mu.Unlock()
	for range 3 {
		pass()
	}
	if got := r.capsReports(); len(got) != 2 {
		t.Fatalf("%d reports, want 2: a refused report is not sent again at once", len(got))
	}
	r.prop.mu.Lock()
	r.prop.fail = nil
	r.prop.mu.Unlock()
	r.c.mu.Lock()
	r.c.capsReport.at = time.Now().Add(-capsRetry)
	r.c.mu.Unlock()
	pass()
	if n := r.st.State().Nodes["n2"]; len(r.capsReports()) != 3 || n.Caps.Restore != capability.RestoreNone {
		t.Fatalf("%d reports, state %+v; want the change sent again and recorded", len(r.capsReports()), n.Caps)
	}
}

func TestSameCapabilities(t *testing.T) {
	a := capability.Node{Runtime: capability.Runtime{Name: "cri-o"}, Restore: capability.RestoreCreate, CPUFlags: []string{"b", "a"}, Checked: time.Unix(1, 0)}
	b := a
	b.CPUFlags, b.Checked = []string{"a", "b", "a"}, time.Unix(2, 0)
	if !SameCapabilities(a, b) {
		t.Error("flag order and the time of the check count")
	}
	for name, change := range map[string]func(*capability.Node){
		"runtime": func(n *capability.Node) { n.Runtime.Version = "1.36.3" },
		"restore": func(n *capability.Node) { n.Restore = capability.RestoreNone },
		"reason":  func(n *capability.Node) { n.RestoreReason = "off" },
		"flags":   func(n *capability.Node) { n.CPUFlags = []string{"a"} },
		"kernel":  func(n *capability.Node) { n.Kernel = "6.1" },
		"criu":    func(n *capability.Node) { n.CRIU = "4.2" },
	} {
		c := a
		change(&c)
		if SameCapabilities(a, c) {
			t.Errorf("a change of %s is not seen", name)
		}
	}
}

// TestMigrateRefusesAnIncapableTarget: a migration to a node that cannot
// restore this node's checkpoints is refused before any checkpoint; to a
// capable one, the checkpoint records this node's needs.
func TestMigrateRefusesAnIncapableTarget(t *testing.T) {
	local := capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Restore: capability.RestoreCreate, Checked: time.Now()}
	s := runningOnN2(t)
	for n, c := range map[string]capability.Node{"n2": local,
		"n3": {Runtime: capability.Runtime{Name: "cri-o", Version: "1.36.3"}, Restore: capability.RestoreCreate}} {
		if err := s.Apply(&state.NodeCapabilities{At: time.Now(), Node: n, Caps: c}); err != nil {
			t.Fatal(err)
		}
	}
	r := newRig(t, s, fakeStore{})
	r.c.o.Capabilities = func() capability.Node { return local }
	r.c.observeQuorum()
	_, _, err := r.c.Migrate(context.Background(), wid.String(), "n3")
	if err == nil || !strings.Contains(err.Error(), "target node n3 cannot restore ns/web/app's checkpoints: it runs cri-o 1.36.3, the checkpoint was taken by containerd 2.1.9") {
		t.Fatalf("Migrate = %v, want a refusal naming the runtimes", err)
	}
	if len(r.prop.sent()) != 0 {
		t.Fatalf("the refused migration proposed %T", r.prop.sent()[0])
	}
	// n3 switches to containerd: the migration's checkpoint records the needs.
	if err := s.Apply(&state.NodeCapabilities{At: time.Now(), Node: "n3", Caps: local}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, _, _ = r.c.Migrate(ctx, wid.String(), "n3") // the fake target never reports
	for _, c := range r.prop.sent() {
		if cc, ok := c.(*state.CommitCheckpoint); ok {
			if cc.Checkpoint.Runtime != local.Runtime || cc.Checkpoint.TakenOn != "n2" {
				t.Fatalf("the migration's checkpoint records %+v", cc.Checkpoint)
			}
			return
		}
	}
	t.Fatal("no checkpoint committed for the migration")
}
