package leader

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/failover"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
)

type fakeRaft struct {
	mu      sync.Mutex
	servers []Server
	ops     []string
	leader  chan bool
	failAdd error
}

func (r *fakeRaft) LeaderCh() <-chan bool       { return r.leader }
func (r *fakeRaft) Barrier(time.Duration) error { return nil }
func (r *fakeRaft) Servers() ([]Server, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.servers), nil
}
func (r *fakeRaft) AddVoter(id, addr string) error { return r.add(id, addr, true) }
func (r *fakeRaft) AddNonvoter(id, addr string) error {
	return r.add(id, addr, false)
}
func (r *fakeRaft) add(id, addr string, voter bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failAdd != nil {
		return r.failAdd
	}
	kind := map[bool]string{true: "voter", false: "nonvoter"}[voter]
	r.ops = append(r.ops, "add "+kind+" "+id)
	r.servers = slices.DeleteFunc(r.servers, func(s Server) bool { return s.ID == id })
	r.servers = append(r.servers, Server{ID: id, Addr: addr, Voter: voter})
	return nil
}
func (r *fakeRaft) RemoveServer(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, "remove "+id)
	r.servers = slices.DeleteFunc(r.servers, func(s Server) bool { return s.ID == id })
	return nil
}

type fakeMembers struct {
	mu      sync.Mutex
	members []membership.Member
	changes chan struct{}
}

func (m *fakeMembers) Members() []membership.Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.members)
}
func (m *fakeMembers) Changes() <-chan struct{} { return m.changes }

type fakeState struct {
	mu sync.Mutex
	s  *state.State
}

func (f *fakeState) State() *state.State { f.mu.Lock(); defer f.mu.Unlock(); return f.s.Clone() }

type fakeProposer struct {
	st   *fakeState
	mu   sync.Mutex
	cmds []state.Command
	fail error
}

func (p *fakeProposer) Apply(_ context.Context, cmd state.Command) error {
	p.mu.Lock()
	p.cmds = append(p.cmds, cmd)
	fail := p.fail
	p.mu.Unlock()
	if fail != nil {
		return fail
	}
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	return p.st.s.Apply(cmd)
}

func member(name string, status membership.Status, dead time.Time) membership.Member {
	return membership.Member{Name: name, RPCAddr: "10.0.0." + name[1:] + ":7947", Status: status, DeadSince: dead}
}

func newLeader(r *fakeRaft, m *fakeMembers, st *fakeState, p *fakeProposer, now time.Time, evs *[]event.Event) *Leader {
	var mu sync.Mutex
	return New(Options{Node: "n1", MaxVoters: 3, DeadServerGrace: time.Minute, Policy: failover.Policy{FenceDelay: 2 * time.Second, MaxAttempts: 3, RestoreTimeout: time.Minute},
		Raft: r, Members: m, State: st, Proposer: p, Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return now },
		Events: func(e event.Event) { mu.Lock(); *evs = append(*evs, e); mu.Unlock() }})
}

func TestReconcile(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	long, recent := now.Add(-2*time.Minute), now.Add(-10*time.Second)
	cases := []struct {
		name    string
		servers []Server
		members []membership.Member
		wantOps []string
	}{
		{"alive members become voters up to the limit, then non-voters",
			[]Server{{ID: "n1", Addr: "10.0.0.1:7947", Voter: true}},
			[]membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{}), member("n3", membership.StatusAlive, time.Time{}), member("n4", membership.StatusAlive, time.Time{})},
			[]string{"add voter n2", "add voter n3", "add nonvoter n4"}},
		{"a member whose address changed is added again",
			[]Server{{ID: "n1", Addr: "10.0.0.1:7947", Voter: true}, {ID: "n2", Addr: "10.9.9.9:1", Voter: true}},
			[]membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{})},
			[]string{"add voter n2"}},
		{"dead past the grace is removed, but never below three voters",
			[]Server{{ID: "n1", Voter: true, Addr: "10.0.0.1:7947"}, {ID: "n2", Voter: true, Addr: "10.0.0.2:7947"}, {ID: "n3", Voter: true, Addr: "10.0.0.3:7947"}},
			[]membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{}), member("n3", membership.StatusDead, long)},
			nil},
		{"a dead non-voter past the grace is removed; a recent death is not",
			[]Server{{ID: "n1", Voter: true, Addr: "10.0.0.1:7947"}, {ID: "n2", Voter: true, Addr: "10.0.0.2:7947"}, {ID: "n3", Voter: true, Addr: "10.0.0.3:7947"},
				{ID: "n4", Addr: "10.0.0.4:7947"}, {ID: "n5", Addr: "10.0.0.5:7947"}},
			[]membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{}), member("n3", membership.StatusAlive, time.Time{}),
				member("n4", membership.StatusDead, long), member("n5", membership.StatusDead, recent)},
			[]string{"remove n4"}},
		{"a member that left is removed without waiting",
			[]Server{{ID: "n1", Voter: true, Addr: "10.0.0.1:7947"}, {ID: "n2", Voter: true, Addr: "10.0.0.2:7947"}, {ID: "n3", Voter: true, Addr: "10.0.0.3:7947"},
				{ID: "n4", Addr: "10.0.0.4:7947"}},
			[]membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{}), member("n3", membership.StatusAlive, time.Time{}),
				member("n4", membership.StatusLeft, recent)},
			[]string{"remove n4"}},
		{"this node is never removed",
			[]Server{{ID: "n1", Voter: true, Addr: "10.0.0.1:7947"}, {ID: "n2", Voter: true}, {ID: "n3", Voter: true}, {ID: "n4", Voter: true}},
			[]membership.Member{member("n1", membership.StatusDead, long)},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeRaft{servers: tc.servers}
			st := &fakeState{s: state.New()}
			p := &fakeProposer{st: st}
			var evs []event.Event
			l := newLeader(r, &fakeMembers{members: tc.members}, st, p, now, &evs)
			l.Reconcile()
			if !slices.Equal(r.ops, tc.wantOps) {
				t.Fatalf("raft changes %q, want %q", r.ops, tc.wantOps)
			}
			// Every alive member's address is recorded in the state.
			var want, got []string
			for _, m := range tc.members {
				if m.Status.Alive() {
					want = append(want, m.Name+"="+m.RPCAddr)
				}
			}
			for _, n := range st.State().Nodes {
				got = append(got, n.Name+"="+n.RPCAddr)
			}
			sort.Strings(got)
			if !slices.Equal(got, want) {
				t.Fatalf("recorded nodes %v, want %v", got, want)
			}
		})
	}
}

func TestReconcileSurvivesRaftErrors(t *testing.T) {
	r := &fakeRaft{failAdd: errors.New("leadership lost")}
	st := &fakeState{s: state.New()}
	var evs []event.Event
	l := newLeader(r, &fakeMembers{members: []membership.Member{member("n2", membership.StatusAlive, time.Time{})}}, st, &fakeProposer{st: st}, time.Now(), &evs)
	l.Reconcile() // must not panic or block
	if len(r.servers) != 0 {
		t.Fatalf("servers %v after a failed add", r.servers)
	}
}

// stateWith: nodes n1..n3, workload w registered on n2 with checkpoint #1
// held by n2 and n3.
func stateWith(t *testing.T, extra ...state.Command) *state.State {
	t.Helper()
	at := time.Unix(999_000, 0)
	s := state.New()
	cmds := append([]state.Command{
		&state.UpsertNode{At: at, Name: "n1", RPCAddr: "a"}, &state.UpsertNode{At: at, Name: "n2", RPCAddr: "b"}, &state.UpsertNode{At: at, Name: "n3", RPCAddr: "c"},
		&state.RegisterWorkload{At: at, ID: "ns/p/c", Node: "n2", Interval: time.Second, Config: []byte("{}")},
		&state.CommitCheckpoint{At: at, ID: "ns/p/c", Node: "n2", Epoch: 1, Checkpoint: state.Checkpoint{Seq: 1, SHA256: "x", Size: 1, Created: at, Holders: []string{"n2"}}},
		&state.AddHolder{At: at, ID: "ns/p/c", Seq: 1, Node: "n3"},
	}, extra...)
	for _, c := range cmds {
		if err := s.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestDecide(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	alive := func(names ...string) []membership.Member {
		var out []membership.Member
		for _, n := range names {
			out = append(out, member(n, membership.StatusAlive, time.Time{}))
		}
		return out
	}
	cases := []struct {
		name    string
		s       *state.State
		members []membership.Member
		fail    error
		want    string // the commands, described
		events  string // event kinds
	}{
		{"owner alive: nothing", stateWith(t), alive("n1", "n2", "n3"), nil, "", ""},
		{"owner dead within the fence delay: wait", stateWith(t),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-time.Second))), nil, "", "node-dead"},
		{"owner dead past the fence delay: placed on the holder", stateWith(t),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-3*time.Second))), nil, "place ns/p/c on n3", "node-dead,placed"},
		{"a commit that fails is not an event", stateWith(t),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-3*time.Second))), errors.New("not the leader"), "place ns/p/c on n3", "node-dead"},
		// A leader that takes over in the middle of a placement (restoring
		// on n3, no report yet) leaves it to the target while it lives.
		{"new leader in the middle of a placement: left to the target", stateWith(t,
			&state.Place{At: now.Add(-5 * time.Second), ID: "ns/p/c", Owner: "n3", Epoch: 2, Seq: 1, Reason: "node n2 dead"}),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-10*time.Second))), nil, "", "node-dead"},
		// ... and counts it as failed once the report is overdue.
		{"placement with an overdue report: recorded as failed", stateWith(t,
			&state.Place{At: now.Add(-2 * time.Minute), ID: "ns/p/c", Owner: "n3", Epoch: 2, Seq: 1, Reason: "node n2 dead"}),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-3*time.Minute))), nil, "restore of ns/p/c on n3 failed: restore timed out: no report within 1m0s", "node-dead"},
		{"the only other holder cannot restore: a node that can fetches it", stateWith(t,
			&state.NodeCapabilities{At: now, Node: "n3", Caps: capability.Node{Restore: capability.RestoreNone, RestoreReason: "restore is off"}}),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-3*time.Second))), nil, "place ns/p/c on n1", "node-dead,placed"},
		{"no other node can restore: reported once, with each node and why", stateWith(t,
			&state.NodeCapabilities{At: now, Node: "n1", Caps: capability.Node{Restore: capability.RestoreNone, RestoreReason: "restore is off"}},
			&state.NodeCapabilities{At: now, Node: "n3", Caps: capability.Node{Restore: capability.RestoreNone, RestoreReason: "restore is off"}}),
			append(alive("n1", "n3"), member("n2", membership.StatusDead, now.Add(-3*time.Second))), nil,
			"no node can restore ns/p/c: node n2 dead since 1970-01-12T13:46:37Z; waiting for n2 to come back; no node can restore it: " +
				"n1: its runtime an unknown runtime cannot restore: restore is off; n3: its runtime an unknown runtime cannot restore: restore is off", "node-dead,unplaceable"},
		{"application failure: placed on a peer", stateWith(t,
			&state.AppFailed{At: now, ID: "ns/p/c", Node: "n2", Epoch: 1, Reason: "probe"}),
			alive("n1", "n2", "n3"), nil, "place ns/p/c on n3", "placed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := &fakeState{s: tc.s}
			p := &fakeProposer{st: st, fail: tc.fail}
			var evs []event.Event
			l := newLeader(&fakeRaft{}, &fakeMembers{members: tc.members}, st, p, now, &evs)
			l.Decide(context.Background())
			var got []string
			for _, c := range p.cmds {
				got = append(got, describe(c))
			}
			if g := strings.Join(got, "; "); g != tc.want {
				t.Fatalf("commands %q, want %q", g, tc.want)
			}
			var kinds []string
			for _, e := range evs {
				kinds = append(kinds, string(e.Kind))
			}
			if g := strings.Join(kinds, ","); g != tc.events {
				t.Fatalf("events %q, want %q", g, tc.events)
			}
			// A second pass reports a death, and a workload no node can
			// restore, only once.
			unplaceable := strings.Contains(tc.events, string(Unplaceable))
			evs = nil
			p.cmds = nil
			l.Decide(context.Background())
			for _, e := range evs {
				if e.Kind == event.NodeDead || (e.Kind == Unplaceable && unplaceable && tc.fail == nil) {
					t.Fatalf("%s reported twice", e.Kind)
				}
			}
		})
	}
}

func TestRunFollowsLeadership(t *testing.T) {
	r := &fakeRaft{leader: make(chan bool, 1), servers: []Server{{ID: "n1", Addr: "10.0.0.1:7947", Voter: true}}}
	m := &fakeMembers{members: []membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{})}, changes: make(chan struct{}, 1)}
	st := &fakeState{s: state.New()}
	var evs []event.Event
	l := newLeader(r, m, st, &fakeProposer{st: st}, time.Now(), &evs)
	l.o.Every = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	if l.Passes() != 0 {
		t.Fatal("a follower made leader passes")
	}
	r.leader <- true
	poll.True(t, 5*time.Second, "leader passes", func() bool { return l.Passes() > 2 })
	r.mu.Lock()
	ops := slices.Clone(r.ops)
	r.mu.Unlock()
	if !slices.Contains(ops, "add voter n2") {
		t.Fatalf("raft changes %v: the leader did not add n2", ops)
	}
	r.leader <- false
	poll.True(t, 5*time.Second, "the loop stopped", func() bool { return !l.Leading() })
	n := l.Passes()
	time.Sleep(30 * time.Millisecond)
	if l.Passes() != n {
		t.Fatal("passes go on after leadership was lost")
	}
	r.leader <- true // regained
	poll.True(t, 5*time.Second, "passes again", func() bool { return l.Passes() > n })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFenceDelay(t *testing.T) {
	if got := FenceDelay(3 * time.Second); got != 2300*time.Millisecond {
		t.Errorf("FenceDelay(3s) = %s, want 2.3s", got)
	}
	if got := FenceDelay(2 * time.Second); got != 1300*time.Millisecond {
		t.Errorf("FenceDelay(2s) = %s, want 1.3s", got)
	}
	if got := LeaderDelay(2 * time.Second); got != 2500*time.Millisecond {
		t.Errorf("LeaderDelay(2s) = %s, want 2.5s", got)
	}
}

func TestViewCountsNeverSeenNodesFromTheWin(t *testing.T) {
	won := time.Unix(1_000_000, 0)
	nodes := map[string]*state.Node{"n1": {Name: "n1"}, "n2": {Name: "n2"}, "n3": {Name: "n3"}}
	v := View(won.Add(time.Second), won, []membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusDead, won.Add(-time.Hour))}, nodes)
	if !v.Alive["n1"] || !v.DeadSince["n2"].Equal(won.Add(-time.Hour)) || !v.DeadSince["n3"].Equal(won) || !v.LeaderSince.Equal(won) {
		t.Fatalf("view %+v", v)
	}
	if v := View(won, time.Time{}, nil, nodes); len(v.DeadSince) != 0 {
		t.Fatalf("without a win time nothing is presumed dead: %+v", v.DeadSince)
	}
}

func TestReconcileWantsProofAndStability(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	members := &fakeMembers{members: []membership.Member{member("n1", membership.StatusAlive, time.Time{}), member("n2", membership.StatusAlive, time.Time{})}}
	cases := []struct {
		name    string
		prove   error
		waited  time.Duration
		wantOps []string
	}{
		{"not stable yet", nil, 0, nil},
		{"stable and proven", nil, 6 * time.Second, []string{"add voter n2"}},
		{"stable but not proven", errors.New("x509: certificate is valid for mallory, not n2"), 6 * time.Second, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeRaft{servers: []Server{{ID: "n1", Addr: "10.0.0.1:7947", Voter: true}}}
			st := &fakeState{s: state.New()}
			var evs []event.Event
			clock := now
			l := newLeader(r, members, st, &fakeProposer{st: st}, now, &evs)
			l.o.Now = func() time.Time { return clock }
			l.o.Stabilization = 5 * time.Second
			var mu sync.Mutex
			var proved []string
			l.o.Prove = func(_ context.Context, name, addr string) error {
				mu.Lock()
				defer mu.Unlock()
				proved = append(proved, name+"@"+addr)
				return tc.prove
			}
			l.Reconcile()
			clock = clock.Add(tc.waited)
			l.Reconcile() // starts the proof in the background
			// The proof's outcome counts at the next pass.
			poll.True(t, 5*time.Second, "the proof done", func() bool {
				l.mu.Lock()
				defer l.mu.Unlock()
				for _, p := range l.proofs {
					if p.running {
						return false
					}
				}
				return true
			})
			l.Reconcile()
			r.mu.Lock()
			ops := slices.Clone(r.ops)
			r.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(ops, tc.wantOps) {
				t.Fatalf("raft changes %q, want %q (proofs asked: %v)", ops, tc.wantOps, proved)
			}
		})
	}
}
