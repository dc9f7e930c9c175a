package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/notify"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

var wid = store.Workload{Namespace: "ns", Pod: "web", Container: "app"}

// fakeState is the replicated state; propose applies to it.
type fakeState struct {
	mu      sync.Mutex
	s       *state.State
	changed notify.Signal
}

func (f *fakeState) State() *state.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s.Clone()
}

func (f *fakeState) Workload(id string) (state.Workload, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.s.Workloads[id]
	if !ok {
		return state.Workload{}, false
	}
	return *w.Clone(), true
}

func (f *fakeState) Changed() <-chan struct{} { return f.changed.Wait() }

// fakeProposer applies commands to the fake state, or fails as told.
type fakeProposer struct {
	st   *fakeState
	mu   sync.Mutex
	cmds []state.Command
	fail func(state.Command) error
	// lag: the local state applies commands this long after Apply
	// returned (a follower's state behind the leader's commit).
	lag time.Duration
}

func (p *fakeProposer) Apply(_ context.Context, cmd state.Command) error {
	p.mu.Lock()
	p.cmds = append(p.cmds, cmd)
	fail := p.fail
	p.mu.Unlock()
	if fail != nil {
		if err := fail(cmd); err != nil {
			return err
		}
	}
	apply := func() error {
		p.st.mu.Lock()
		err := p.st.s.Apply(cmd)
		p.st.mu.Unlock()
		p.st.changed.Signal()
		return err
	}
	if p.lag > 0 {
		time.AfterFunc(p.lag, func() { _ = apply() })
		return nil
	}
	return apply()
}

func (p *fakeProposer) sent() []state.Command {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]state.Command(nil), p.cmds...)
}

type fakeQuorum struct {
	mu     sync.Mutex
	leader bool
	voters []string
}

func (q *fakeQuorum) IsLeader() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.leader }
func (q *fakeQuorum) Leader() string {
	if q.IsLeader() {
		return "n1"
	}
	return ""
}
func (q *fakeQuorum) LastContact() time.Time { return time.Time{} }
func (q *fakeQuorum) Voters() ([]string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.voters, nil
}

type fakeMembers map[string]bool

func (m fakeMembers) Alive() map[string]bool { return m }

type fakeNode struct {
	mu         sync.Mutex
	reports    chan ownership.Report
	running    map[store.Workload]bool
	restored   []ownership.Placement
	removed    int
	restoreErr error
	stopped    []store.Workload
}

func newFakeNode() *fakeNode {
	return &fakeNode{reports: make(chan ownership.Report, 16), running: map[store.Workload]bool{}}
}

func (n *fakeNode) RecordConfig(context.Context, discovery.Workload) ([]byte, error) {
	return []byte(`{"sandbox":{}}`), nil
}
func (n *fakeNode) Restore(_ context.Context, p ownership.Placement) (time.Duration, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.restoreErr != nil {
		return 0, n.restoreErr
	}
	n.restored = append(n.restored, p)
	n.running[p.Entry.Workload] = true
	return time.Millisecond, nil
}
func (n *fakeNode) RemoveCopies(_ context.Context, id store.Workload) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removed++
	delete(n.running, id)
	return 1, nil
}
func (n *fakeNode) Running(id store.Workload) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running[id]
}
func (n *fakeNode) CheckpointNow(context.Context, store.Workload) (store.Entry, error) {
	return store.Entry{Workload: wid, Seq: 9, SHA256: "s9", Size: 1, Created: time.Now()}, nil
}
func (n *fakeNode) Stop(_ context.Context, id store.Workload) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopped = append(n.stopped, id)
	delete(n.running, id)
	return nil
}
func (n *fakeNode) Reports() <-chan ownership.Report { return n.reports }

type fakeReplication struct {
	prop     *fakeProposer // InOrder commits through it
	mu       sync.Mutex
	fetched  []uint64
	fetchErr error
	pushed   []string
	pushErr  error
	recorded []uint64
}

func (r *fakeReplication) Record(_ discovery.Workload, _ uint64, e store.Entry) {
	r.mu.Lock()
	r.recorded = append(r.recorded, e.Seq)
	r.mu.Unlock()
}
func (r *fakeReplication) InOrder(_ string, cmd state.Command) {
	go func() { _ = r.prop.Apply(context.Background(), cmd) }()
}
func (r *fakeReplication) Fetch(_ context.Context, w state.Workload, seq uint64) (store.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fetched = append(r.fetched, seq)
	if r.fetchErr != nil {
		return store.Entry{}, r.fetchErr
	}
	return store.Entry{Workload: wid, Seq: seq}, nil
}
func (r *fakeReplication) Push(_ context.Context, node string, _ store.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pushed = append(r.pushed, node)
	return r.pushErr
}

type fakeStore map[uint64]bool

func (s fakeStore) Get(w store.Workload, seq uint64) (store.Entry, error) {
	if s[seq] {
		return store.Entry{Workload: w, Seq: seq}, nil
	}
	return store.Entry{}, fmt.Errorf("checkpoint #%d: %w", seq, errors.New("not found"))
}

type rig struct {
	c     *Controller
	st    *fakeState
	prop  *fakeProposer
	node  *fakeNode
	repl  *fakeReplication
	q     *fakeQuorum
	board *ownership.Board
	evs   chan event.Event
}

// newRig builds a controller on node "n2" of n1..n3, this node leading (so
// connected), with the state st.
func newRig(t *testing.T, s *state.State, local fakeStore) *rig {
	t.Helper()
	st := &fakeState{s: s}
	prop := &fakeProposer{st: st}
	r := &rig{st: st, prop: prop, node: newFakeNode(), repl: &fakeReplication{prop: prop},
		q: &fakeQuorum{leader: true, voters: []string{"n1", "n2", "n3"}}, board: ownership.NewBoard("n2"), evs: make(chan event.Event, 64)}
	r.c = New(Options{Node: "n2", Lease: 3 * time.Second, Policy: PolicyPeer, Local: r.node, State: st, Proposer: r.prop, Quorum: r.q,
		Members: fakeMembers{"n1": true, "n2": true, "n3": true}, Replication: r.repl, Store: local, Board: r.board,
		Events: func(e event.Event) { r.evs <- e }, Log: slog.New(slog.DiscardHandler), Tick: 10 * time.Millisecond, LostGrace: 50 * time.Millisecond})
	return r
}

func (r *rig) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// baseState: nodes n1..n3; the workload registered on n1 with checkpoint
// #3 held by n1 and n3; then optionally changed.
func baseState(t *testing.T, change func(at time.Time) []state.Command) *state.State {
	t.Helper()
	s := state.New()
	at := time.Now()
	cmds := []state.Command{
		&state.UpsertNode{At: at, Name: "n1", RPCAddr: "10.0.0.1:1"},
		&state.UpsertNode{At: at, Name: "n2", RPCAddr: "10.0.0.2:1"},
		&state.UpsertNode{At: at, Name: "n3", RPCAddr: "10.0.0.3:1"},
		&state.RegisterWorkload{At: at, ID: wid.String(), Node: "n1", Interval: time.Second, Config: []byte(`{"sandbox":{}}`)},
		&state.CommitCheckpoint{At: at, ID: wid.String(), Node: "n1", Epoch: 1, Checkpoint: state.Checkpoint{Seq: 3, SHA256: "s3", Size: 1, Created: at, Holders: []string{"n1"}}},
		&state.AddHolder{At: at, ID: wid.String(), Seq: 3, SHA256: "s3", Size: 1, Node: "n3"},
	}
	if change != nil {
		cmds = append(cmds, change(at)...)
	}
	for _, c := range cmds {
		if err := s.Apply(c); err != nil {
			t.Fatalf("%T: %v", c, err)
		}
	}
	return s
}

func lastDone(cmds []state.Command) *state.RestoreDone {
	for i := len(cmds) - 1; i >= 0; i-- {
		if d, ok := cmds[i].(*state.RestoreDone); ok {
			return d
		}
	}
	return nil
}

func TestControllerPlacements(t *testing.T) {
	placeOnN2 := func(since time.Duration) func(time.Time) []state.Command {
		return func(at time.Time) []state.Command {
			return []state.Command{&state.Place{At: at.Add(-since), ID: wid.String(), Owner: "n2", Epoch: 2, Seq: 3, Reason: "node n1 dead"}}
		}
	}
	cases := []struct {
		name      string
		place     func(time.Time) []state.Command
		local     fakeStore
		fetchErr  error
		restore   error
		refuse    error // the proposer refuses the RestoreDone report with it
		wantOK    bool
		wantErr   string // in the RestoreDone report
		fetched   bool
		restored  bool
		removedAt int // RemoveCopies calls expected (the refused copy)
	}{
		{name: "local checkpoint restored", place: placeOnN2(0), local: fakeStore{3: true}, wantOK: true, restored: true},
		{name: "missing checkpoint fetched first", place: placeOnN2(0), local: fakeStore{}, wantOK: true, fetched: true, restored: true},
		{name: "fetch fails: reported", place: placeOnN2(0), local: fakeStore{}, fetchErr: errors.New("holder n3 unreachable"), wantErr: "holder n3 unreachable", fetched: true},
		{name: "runtime restore fails: reported", place: placeOnN2(0), local: fakeStore{3: true}, restore: errors.New("criu: restore failed"), wantErr: "criu: restore failed"},
		{name: "placement past its deadline is not acted on", place: placeOnN2(RestoreTimeout), local: fakeStore{3: true}, wantErr: "too old to act on"},
		{name: "report refused after a restore: the copy is stopped", place: placeOnN2(0), local: fakeStore{3: true},
			refuse: fmt.Errorf("restore report: %w", state.ErrStale), wantOK: true, restored: true, removedAt: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, baseState(t, tc.place), tc.local)
			r.repl.fetchErr = tc.fetchErr
			r.node.restoreErr = tc.restore
			if tc.refuse != nil {
				r.prop.fail = func(c state.Command) error {
					if _, ok := c.(*state.RestoreDone); ok {
						return tc.refuse
					}
					return nil
				}
			}
			r.run(t)
			poll.True(t, 5*time.Second, "a restore report", func() bool { return lastDone(r.prop.sent()) != nil })
			d := lastDone(r.prop.sent())
			if d.OK != tc.wantOK || d.Node != "n2" || d.Epoch != 2 || d.Seq != 3 {
				t.Fatalf("report %+v, want OK=%t from n2 at epoch 2 of #3", d, tc.wantOK)
			}
			if tc.wantErr != "" && !strings.Contains(d.Error, tc.wantErr) {
				t.Fatalf("report error %q, want it to say %q", d.Error, tc.wantErr)
			}
			if got := len(r.repl.fetched) > 0; got != tc.fetched {
				t.Errorf("fetched=%t, want %t", got, tc.fetched)
			}
			r.node.mu.Lock()
			restored, removed := len(r.node.restored) > 0, r.node.removed
			r.node.mu.Unlock()
			if restored != tc.restored {
				t.Errorf("restored=%t, want %t", restored, tc.restored)
			}
			if tc.removedAt > 0 {
				poll.True(t, 5*time.Second, "the refused copy removed", func() bool { r.node.mu.Lock(); defer r.node.mu.Unlock(); return r.node.removed >= tc.removedAt })
			} else if removed != 0 {
				t.Errorf("RemoveCopies called %d times", removed)
			}
			var ev event.Event
			select {
			case ev = <-r.evs:
			case <-time.After(5 * time.Second):
				t.Fatal("no restore event")
			}
			if wantKind := map[bool]event.Kind{true: event.Restored, false: event.RestoreFailed}[tc.wantOK]; ev.Kind != wantKind {
				t.Errorf("event %s, want %s", ev.Kind, wantKind)
			}
			// The placement is acted on once.
			time.Sleep(50 * time.Millisecond)
			n := 0
			for _, c := range r.prop.sent() {
				if _, ok := c.(*state.RestoreDone); ok {
					n++
				}
			}
			if tc.refuse == nil && n != 1 {
				t.Errorf("%d restore reports, want 1", n)
			}
		})
	}
}

func TestControllerFencedDoesNotRestore(t *testing.T) {
	r := newRig(t, baseState(t, func(at time.Time) []state.Command {
		return []state.Command{&state.Place{At: at, ID: wid.String(), Owner: "n2", Epoch: 2, Seq: 3, Reason: "test"}}
	}), fakeStore{3: true})
	// Connected once, then sees only itself of three voters.
	r.c.observeQuorum()
	r.c.o.Members = fakeMembers{"n2": true}
	r.q.mu.Lock()
	r.q.leader = false
	r.q.mu.Unlock()
	r.run(t)
	poll.True(t, 5*time.Second, "a fenced view published", func() bool { return r.board.View().Fenced })
	if why := r.board.View().FenceWhy; !strings.Contains(why, "1 of 3 raft voters") {
		t.Errorf("fence reason %q", why)
	}
	time.Sleep(100 * time.Millisecond)
	if d := lastDone(r.prop.sent()); d != nil {
		t.Fatalf("a fenced node acted on a placement: %+v", d)
	}
	w := discovery.Workload{ID: wid, SandboxID: "sb", Epoch: 2}
	if v, _ := r.board.View().Admit(w); v != ownership.Stop {
		t.Fatalf("a fenced node admits a copy: %s", v)
	}
}

func TestControllerReportsLostCopies(t *testing.T) {
	// n2 owns the workload (it was placed and reported running) but the
	// node runs no copy of it.
	r := newRig(t, runningOnN2(t), fakeStore{3: true})
	r.run(t)
	poll.True(t, 5*time.Second, "the lost copy reported", func() bool {
		for _, c := range r.prop.sent() {
			if f, ok := c.(*state.AppFailed); ok && f.Node == "n2" && f.Epoch == 2 && strings.Contains(f.Reason, "no copy running on n2") {
				return true
			}
		}
		return false
	})
}

func TestControllerHandlesReports(t *testing.T) {
	r := newRig(t, baseState(t, nil), fakeStore{})
	r.run(t)
	// n2 finds a copy the cluster does not know: it registers it.
	other := store.Workload{Namespace: "ns", Pod: "db", Container: "pg"}
	r.node.reports <- ownership.Report{Kind: ownership.Unregistered, Workload: discovery.Workload{ID: other, SandboxID: "sb-db", Interval: time.Second}}
	poll.True(t, 5*time.Second, "registered and in the view", func() bool {
		e, ok := r.board.View().Workloads[other.String()]
		return ok && e.Owner == "n2" && e.Epoch == 1
	})
	r.node.reports <- ownership.Report{Kind: ownership.Checkpointed, Workload: discovery.Workload{ID: other}, CopyEpoch: 1, Entry: store.Entry{Seq: 1}}
	poll.True(t, 5*time.Second, "the checkpoint handed to replication", func() bool {
		r.repl.mu.Lock()
		defer r.repl.mu.Unlock()
		return len(r.repl.recorded) == 1
	})
	r.node.reports <- ownership.Report{Kind: ownership.AppFailed, Workload: discovery.Workload{ID: other}, CopyEpoch: 1, Reason: "probe failed"}
	poll.True(t, 5*time.Second, "app failure proposed", func() bool {
		w, _ := r.st.Workload(other.String())
		return w.Status == state.StatusAppFailed && w.Reason == "probe failed"
	})
}

// A workload the cluster gave up on, found running again (started by
// hand): its registration gives it a new epoch, and the view adopts the
// running original copy at that epoch, so the agent keeps it.
func TestControllerReRegisteredCopyIsAdopted(t *testing.T) {
	for _, lag := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("state lag %s", lag), func(t *testing.T) { testReRegisteredCopyIsAdopted(t, lag) })
	}
}

func testReRegisteredCopyIsAdopted(t *testing.T, lag time.Duration) {
	r := newRig(t, baseState(t, func(at time.Time) []state.Command {
		return []state.Command{&state.GiveUp{At: at, ID: wid.String(), Epoch: 1, Reason: "no candidate"}}
	}), fakeStore{})
	r.prop.lag = lag
	r.run(t)
	copy := discovery.Workload{ID: wid, SandboxID: "sb-by-hand", Interval: time.Second}
	poll.True(t, 5*time.Second, "the given-up workload is unknown to the view", func() bool {
		_, known := r.board.View().Admit(copy)
		return !known
	})
	r.node.reports <- ownership.Report{Kind: ownership.Unregistered, Workload: copy, CopyEpoch: 1}
	poll.True(t, 5*time.Second, "re-registered on n2 and the copy admitted", func() bool {
		v := r.board.View()
		verdict, _ := v.Admit(copy)
		return v.Workloads[wid.String()].Owner == "n2" && v.Workloads[wid.String()].Epoch == 2 && verdict == ownership.Run
	})
	if got := r.board.View().CopyEpoch(copy); got != 2 {
		t.Fatalf("copy epoch %d, want 2 (adopted)", got)
	}
}

// runningOnN2: the workload moved to n2 (epoch 2) and runs there.
func runningOnN2(t *testing.T) *state.State {
	return baseState(t, func(at time.Time) []state.Command {
		return []state.Command{
			&state.Place{At: at, ID: wid.String(), Owner: "n2", Epoch: 2, Seq: 3, Reason: "test"},
			&state.RestoreDone{At: at, ID: wid.String(), Node: "n2", Epoch: 2, Seq: 3, OK: true},
		}
	})
}

func TestMigrateRefusals(t *testing.T) {
	running := runningOnN2(t)
	cases := []struct {
		name     string
		s        *state.State
		workload string
		to       string
		members  fakeMembers
		want     string
	}{
		{"unknown workload", running, "ns/x/y", "n3", nil, "no workload"},
		{"already there", running, wid.String(), "n2", nil, "already runs on n2"},
		{"not the owner", baseState(t, nil), wid.String(), "n3", nil, "owned by n1"},
		{"target not alive", running, wid.String(), "n3", fakeMembers{"n1": true, "n2": true}, "not an alive member"},
		{"not running", baseState(t, func(at time.Time) []state.Command {
			return []state.Command{&state.Place{At: at, ID: wid.String(), Owner: "n2", Epoch: 2, Seq: 3, Reason: "test"}}
		}), wid.String(), "n3", nil, "restoring, not running"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.s, fakeStore{})
			if tc.members != nil {
				r.c.o.Members = tc.members
			}
			_, _, err := r.c.Migrate(context.Background(), tc.workload, tc.to)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestMigrateHandsBackWhenThePlacementFails(t *testing.T) {
	r := newRig(t, runningOnN2(t), fakeStore{})
	r.c.observeQuorum()
	r.prop.fail = func(c state.Command) error {
		if _, ok := c.(*state.Place); ok {
			return errors.New("no cluster leader (no quorum?)")
		}
		return nil
	}
	_, _, err := r.c.Migrate(context.Background(), wid.String(), "n3")
	if err == nil || !strings.Contains(err.Error(), "commit the new placement") {
		t.Fatalf("err %v", err)
	}
	if len(r.node.stopped) != 1 {
		t.Fatalf("local copy stopped %d times, want once", len(r.node.stopped))
	}
	w, _ := r.st.Workload(wid.String())
	if w.Status != state.StatusAppFailed || !strings.Contains(w.Reason, "migration failed") {
		t.Fatalf("workload %s (%s): want handed to the leader as app-failed", w.Status, w.Reason)
	}
	if len(r.repl.pushed) != 1 || r.repl.pushed[0] != "n3" {
		t.Fatalf("pushed to %v, want n3", r.repl.pushed)
	}
}

func TestMigrateWaitsForTheTarget(t *testing.T) {
	r := newRig(t, runningOnN2(t), fakeStore{})
	r.c.observeQuorum()
	go func() {
		// The target reports the restore once it is placed there.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if w, _ := r.st.Workload(wid.String()); w.Owner == "n3" {
				_ = r.prop.Apply(context.Background(), &state.RestoreDone{At: time.Now(), ID: wid.String(), Node: "n3", Epoch: 3, Seq: 9, OK: true})
				return
			}
		}
	}()
	seq, _, err := r.c.Migrate(context.Background(), wid.String(), "n3")
	if err != nil || seq != 9 {
		t.Fatalf("migrate: seq %d, err %v", seq, err)
	}
	w, _ := r.st.Workload(wid.String())
	if w.Owner != "n3" || w.Epoch != 3 || w.Status != state.StatusRunning {
		t.Fatalf("after the migration: %+v", w)
	}
}

// TestControllerThreadsTheRecord: the view and the placement carry the
// cluster's record of each checkpoint (sha256 and size), for the agent to
// check the archive against before it restores.
func TestControllerThreadsTheRecord(t *testing.T) {
	r := newRig(t, baseState(t, func(at time.Time) []state.Command {
		return []state.Command{&state.Place{At: at, ID: wid.String(), Owner: "n2", Epoch: 2, Seq: 3, Reason: "node n1 dead"}}
	}), fakeStore{3: true})
	r.run(t)
	poll.True(t, 5*time.Second, "a restore", func() bool { r.node.mu.Lock(); defer r.node.mu.Unlock(); return len(r.node.restored) == 1 })
	r.node.mu.Lock()
	p := r.node.restored[0]
	r.node.mu.Unlock()
	if want := (ownership.Record{Seq: 3, SHA256: "s3", Size: 1}); p.Record != want {
		t.Fatalf("placement carries record %+v, want %+v", p.Record, want)
	}
	e := r.board.View().Workloads[wid.String()]
	if rec, ok := e.Checkpoint(3); !ok || rec.SHA256 != "s3" || rec.Size != 1 {
		t.Fatalf("view's records %+v lack #3 with sha256 s3 and 1 byte", e.Checkpoints)
	}
}

// TestControllerDropsARefusedCopy: a bad-copy report of the agent becomes
// DropHolder for this node (n2), of the record the copy was judged
// against; the state then no longer lists n2 as a holder.
func TestControllerDropsARefusedCopy(t *testing.T) {
	r := newRig(t, baseState(t, func(at time.Time) []state.Command {
		return []state.Command{&state.AddHolder{At: at, ID: wid.String(), Seq: 3, SHA256: "s3", Size: 1, Node: "n2"}}
	}), fakeStore{})
	r.run(t)
	r.node.reports <- ownership.Report{Kind: ownership.BadCopy, Workload: discovery.Workload{ID: wid}, Entry: store.Entry{Workload: wid, Seq: 3, SHA256: "planted"},
		Record: ownership.Record{Seq: 3, SHA256: "s3", Size: 1}, Reason: "sha256 planted, the cluster records s3"}
	poll.True(t, 5*time.Second, "n2 dropped from the holders of #3", func() bool {
		w, _ := r.st.Workload(wid.String())
		cp := w.Checkpoint(3)
		return cp != nil && !slices.Contains(cp.Holders, "n2")
	})
	var drop *state.DropHolder
	for _, c := range r.prop.sent() {
		if d, ok := c.(*state.DropHolder); ok {
			drop = d
		}
	}
	if drop == nil || drop.Node != "n2" || drop.Seq != 3 || drop.SHA256 != "s3" || !strings.Contains(drop.Reason, "planted") {
		t.Fatalf("proposed %+v, want a DropHolder of n2's #3 (s3) naming the reason", drop)
	}
	w, _ := r.st.Workload(wid.String())
	if cp := w.Checkpoint(3); !slices.Equal(cp.Holders, []string{"n1", "n3"}) {
		t.Fatalf("holders %v, want n1 and n3 kept", cp.Holders)
	}
}
