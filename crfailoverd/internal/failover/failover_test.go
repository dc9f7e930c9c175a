package failover

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

var (
	now    = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	policy = Policy{FenceDelay: 30 * time.Second, MaxAttempts: 3, RestoreTimeout: 2 * time.Minute}
)

// wl builds a workload; cps lists its checkpoints newest first.
func wl(id, owner string, epoch uint64, status state.Status, seq uint64, cps ...state.Checkpoint) *state.Workload {
	return &state.Workload{ID: id, Owner: owner, Epoch: epoch, Status: status, Seq: seq, Since: now.Add(-time.Minute), Checkpoints: cps}
}

func cp(seq uint64, holders ...string) state.Checkpoint {
	return state.Checkpoint{Seq: seq, SHA256: fmt.Sprint("sha-", seq), Holders: holders}
}

func tried(w *state.Workload, ts ...state.Try) *state.Workload {
	w.Tried = ts
	if len(ts) > 0 {
		w.LastError = ts[len(ts)-1].Error
	}
	return w
}

func reason(w *state.Workload, r string) *state.Workload { w.Reason = r; return w }

func since(w *state.Workload, ago time.Duration) *state.Workload { w.Since = now.Add(-ago); return w }

func newState(ws ...*state.Workload) *state.State {
	s := state.New()
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		s.Nodes[n] = &state.Node{Name: n}
	}
	for _, w := range ws {
		s.Workloads[w.ID] = w
	}
	return s
}

// view: the listed nodes alive, the others dead since the given time ago
// (nodes in neither list are absent from DeadSince).
func view(alive []string, deadAgo map[string]time.Duration) View {
	v := View{Now: now, Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	for _, n := range alive {
		v.Alive[n] = true
	}
	for n, ago := range deadAgo {
		v.DeadSince[n] = now.Add(-ago)
	}
	return v
}

func deadAt(v View, n string, at time.Time) View { v.DeadSince[n] = at; return v }

// leaderFor sets the view's LeaderSince to d before now.
func leaderFor(v View, d time.Duration) View { v.LeaderSince = now.Add(-d); return v }

func withLeaderDelay(d time.Duration) Policy { p := policy; p.LeaderDelay = d; return p }

func place(id, owner string, epoch, seq uint64, reason string) *state.Place {
	return &state.Place{At: now, ID: id, Owner: owner, Epoch: epoch, Seq: seq, Reason: reason}
}

func giveUp(id string, epoch uint64, reason string) *state.GiveUp {
	return &state.GiveUp{At: now, ID: id, Epoch: epoch, Reason: reason}
}

const deadN1 = "node n1 dead since 2026-11-24T11:59:00Z"

// waiting is the report of a workload only dead nodes hold checkpoints of.
func waiting(id string, epoch uint64, reason string) state.Command {
	return &state.Unplaceable{At: now, ID: id, Epoch: epoch, Reason: reason + "; no node can restore it: no alive node holds a checkpoint of it"}
}

func TestDecideRules(t *testing.T) {
	all := []string{"n1", "n2", "n3", "n4"}
	notN1 := []string{"n2", "n3", "n4"}
	n1DeadMinute := map[string]time.Duration{"n1": time.Minute}
	for _, tc := range []struct {
		name string
		s    *state.State
		v    View
		p    Policy
		want []state.Command
	}{
		// Rule 1
		{"running on a live owner", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			view(all, nil), policy, nil},
		{"failed is skipped", newState(wl("a", "", 4, state.StatusFailed, 3, cp(3, "n2"))),
			view(all, nil), policy, nil},

		// Rule 2
		{"owner dead shorter than the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			view(notN1, map[string]time.Duration{"n1": 29 * time.Second}), policy, nil},
		{"owner dead exactly the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			view(notN1, map[string]time.Duration{"n1": 30 * time.Second}), policy,
			[]state.Command{place("a", "n2", 2, 3, "node n1 dead since 2026-11-24T11:59:30Z")}},
		{"owner dead since the zero time", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			deadAt(view(notN1, nil), "n1", time.Time{}), policy,
			[]state.Command{place("a", "n2", 2, 3, "node n1 dead since 0001-01-01T00:00:00Z")}},
		{"dead owner while restoring", newState(wl("a", "n1", 2, state.StatusRestoring, 3, cp(3, "n1", "n2"))),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n2", 3, 3, deadN1)}},
		{"dead owner while app-failed", newState(wl("a", "n1", 2, state.StatusAppFailed, 3, cp(3, "n1", "n3"))),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n3", 3, 3, deadN1)}},
		{"dead owner holds the newest only: older checkpoint", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(4, "n1"), cp(3, "n1", "n4"))),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n4", 2, 3, deadN1)}},
		{"dead owner is the only holder: wait for it", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(4, "n1"))),
			view(notN1, n1DeadMinute), policy, []state.Command{waiting("a", 1, deadN1+"; waiting for n1 to come back")}},
		{"only holder is another dead node: wait for it", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(4, "n1", "n2"))),
			view([]string{"n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n2": time.Minute}), policy,
			[]state.Command{waiting("a", 1, deadN1+"; waiting for n1, n2 to come back")}},
		{"holder removed from the cluster is no candidate", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(4, "n1", "n9"))),
			view([]string{"n2", "n9"}, n1DeadMinute), policy, []state.Command{waiting("a", 1, deadN1+"; waiting for n1 to come back")}},
		{"dead owner, no checkpoint at all", newState(wl("a", "n1", 1, state.StatusRunning, 0)),
			view(notN1, n1DeadMinute), policy,
			[]state.Command{giveUp("a", 1, deadN1+"; no checkpoint of it exists")}},
		{"dead owner, checkpoints without holders", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(4))),
			view(notN1, n1DeadMinute), policy,
			[]state.Command{giveUp("a", 1, deadN1+"; no untried copy of a checkpoint left (#4 on no holder)")}},

		// Rule 2: the leader wait
		{"dead owner, new leader within the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			leaderFor(view(notN1, n1DeadMinute), 29*time.Second), policy, nil},
		{"dead owner, new leader for exactly the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			leaderFor(view(notN1, n1DeadMinute), 30*time.Second), policy, []state.Command{place("a", "n2", 2, 3, deadN1)}},
		{"dead owner, LeaderDelay longer than the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			leaderFor(view(notN1, n1DeadMinute), 40*time.Second), withLeaderDelay(45 * time.Second), nil},
		{"dead owner, new leader for LeaderDelay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			leaderFor(view(notN1, n1DeadMinute), 45*time.Second), withLeaderDelay(45 * time.Second), []state.Command{place("a", "n2", 2, 3, deadN1)}},
		{"dead owner, LeaderDelay shorter than the fence delay: the fence delay", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			leaderFor(view(notN1, n1DeadMinute), 20*time.Second), withLeaderDelay(10 * time.Second), nil},
		{"dead owner, no checkpoint: no give-up within the leader wait", newState(wl("a", "n1", 1, state.StatusRunning, 0)),
			leaderFor(view(notN1, n1DeadMinute), time.Second), policy, nil},
		{"dead owner while app-failed: waits for the leader too", newState(wl("a", "n1", 2, state.StatusAppFailed, 3, cp(3, "n1", "n3"))),
			leaderFor(view(notN1, n1DeadMinute), time.Second), policy, nil},
		{"app failed on a live owner: at once, within the leader wait", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1", "n3")), "exited")),
			leaderFor(view(all, nil), 0), policy, []state.Command{place("a", "n3", 4, 5, "application failed on n1: exited")}},
		{"restore failed on a live owner: at once, within the leader wait",
			newState(tried(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2", "n3")), state.Try{Node: "n2", Seq: 5, Error: "criu: exit 1"})),
			leaderFor(view(all, nil), 0), policy, []state.Command{place("a", "n3", 3, 5, "restore of #5 on n2 failed: criu: exit 1")}},
		{"restore timed out on a live owner: at once, within the leader wait", newState(since(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2")), 2*time.Minute)),
			leaderFor(view(all, nil), 0), policy,
			[]state.Command{&state.RestoreDone{At: now, ID: "a", Node: "n2", Epoch: 2, Seq: 5, Error: "restore timed out: no report within 2m0s"}}},

		// Rule 3
		{"owner never seen: wait", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2"))),
			view(notN1, nil), policy, nil},
		{"owner never seen, app-failed: wait", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1", "n3")), "x")),
			view(notN1, nil), policy, nil},
		{"owner never seen, restore failed: wait",
			newState(tried(wl("a", "n1", 2, state.StatusRestoring, 5, cp(5, "n1", "n3")), state.Try{Node: "n1", Seq: 5, Error: "e"})),
			view(notN1, nil), policy, nil},
		{"owner never seen, restore timed out: wait", newState(since(wl("a", "n1", 2, state.StatusRestoring, 5, cp(5, "n1", "n3")), time.Hour)),
			view(notN1, nil), policy, nil},
		{"owner never seen, no checkpoint: no give-up", newState(wl("a", "n1", 1, state.StatusRunning, 0)),
			view(notN1, nil), policy, nil},
		{"only untried holder never seen: wait", newState(tried(wl("a", "n2", 3, state.StatusRestoring, 5, cp(5, "n2", "n3")),
			state.Try{Node: "n2", Seq: 5, Error: "e2"})),
			view([]string{"n1", "n2"}, nil), policy, []state.Command{waiting("a", 3, "restore of #5 on n2 failed: e2; waiting for n3 to come back")}},

		// Rule 4
		{"app failed: another holder", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1", "n3")), "probe failed")),
			view(all, nil), policy, []state.Command{place("a", "n3", 4, 5, "application failed on n1: probe failed")}},
		{"app failed: owner is the only holder, restore it locally", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1")), "exited")),
			view(all, nil), policy, []state.Command{place("a", "n1", 4, 5, "application failed on n1: exited")}},
		{"app failed: another node beats the owner's newer checkpoint", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1"), cp(4, "n1", "n2")), "x")),
			view(all, nil), policy, []state.Command{place("a", "n2", 4, 4, "application failed on n1: x")}},
		{"app failed: other holder dead, owner takes it back", newState(reason(wl("a", "n1", 3, state.StatusAppFailed, 2, cp(5, "n1", "n2")), "x")),
			view([]string{"n1", "n3"}, map[string]time.Duration{"n2": time.Hour}), policy,
			[]state.Command{place("a", "n1", 4, 5, "application failed on n1: x")}},

		// Rule 5
		{"restoring, no report yet", newState(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n1", "n2"))),
			view(all, nil), policy, nil},
		{"restore failed: next holder of the same checkpoint",
			newState(tried(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2", "n3")), state.Try{Node: "n2", Seq: 5, Error: "criu: exit 1"})),
			view(all, nil), policy, []state.Command{place("a", "n3", 3, 5, "restore of #5 on n2 failed: criu: exit 1")}},
		{"restore failed: tried pairs skipped, older checkpoint",
			newState(tried(wl("a", "n3", 3, state.StatusRestoring, 5, cp(5, "n2", "n3"), cp(4, "n2", "n4")),
				state.Try{Node: "n2", Seq: 5, Error: "e1"}, state.Try{Node: "n3", Seq: 5, Error: "e2"})),
			view(all, nil), policy, []state.Command{place("a", "n2", 4, 4, "restore of #5 on n3 failed: e2")}},
		{"restore failed: the owner last, from another checkpoint",
			newState(tried(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2"), cp(4, "n2")), state.Try{Node: "n2", Seq: 5, Error: "bad archive"})),
			view(all, nil), policy, []state.Command{place("a", "n2", 3, 4, "restore of #5 on n2 failed: bad archive")}},
		{"restore failed: a Try of an earlier attempt is no report",
			newState(tried(wl("a", "n2", 3, state.StatusRestoring, 4, cp(5, "n2"), cp(4, "n2")), state.Try{Node: "n2", Seq: 5, Error: "x"})),
			view(all, nil), policy, nil},
		{"restore timed out", newState(since(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2")), 2*time.Minute)),
			view(all, nil), policy,
			[]state.Command{&state.RestoreDone{At: now, ID: "a", Node: "n2", Epoch: 2, Seq: 5, Error: "restore timed out: no report within 2m0s"}}},
		{"restore not yet timed out", newState(since(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2")), 2*time.Minute-time.Nanosecond)),
			view(all, nil), policy, nil},
		{"restore timeout disabled", newState(since(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2")), 24*time.Hour)),
			view(all, nil), Policy{FenceDelay: time.Second}, nil},
		{"restore timed out but owner dead: rule 2 waits for the fence delay",
			newState(since(wl("a", "n2", 2, state.StatusRestoring, 5, cp(5, "n2", "n3")), time.Hour)),
			view([]string{"n1", "n3"}, map[string]time.Duration{"n2": 10 * time.Second}), policy, nil},

		// Rule 6
		{"fewest owned workloads wins, then name", newState(
			wl("a", "n1", 1, state.StatusRunning, 0, cp(2, "n1", "n2", "n3", "n4")),
			wl("b", "n2", 1, state.StatusRunning, 0),
			wl("c", "n3", 1, state.StatusRunning, 0)),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n4", 2, 2, deadN1)}},
		{"ties by name", newState(wl("a", "n1", 1, state.StatusRunning, 0, cp(2, "n1", "n4", "n3"))),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n3", 2, 2, deadN1)}},
		{"placements in one pass spread the load", newState(
			wl("a", "n1", 1, state.StatusRunning, 0, cp(2, "n2", "n3")),
			wl("b", "n1", 1, state.StatusRunning, 0, cp(2, "n2", "n3")),
			wl("c", "n1", 1, state.StatusRunning, 0, cp(2, "n2", "n3"))),
			view([]string{"n2", "n3"}, n1DeadMinute), policy,
			[]state.Command{place("a", "n2", 2, 2, deadN1), place("b", "n3", 2, 2, deadN1), place("c", "n2", 2, 2, deadN1)}},
		{"failed workloads count for nobody", newState(
			wl("a", "n1", 1, state.StatusRunning, 0, cp(2, "n2", "n3")),
			wl("b", "", 1, state.StatusFailed, 0)),
			view([]string{"n2", "n3"}, n1DeadMinute), policy, []state.Command{place("a", "n2", 2, 2, deadN1)}},
		{"newest checkpoint first, even on a busier node", newState(
			wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n2"), cp(2, "n3")),
			wl("b", "n2", 1, state.StatusRunning, 0)),
			view(notN1, n1DeadMinute), policy, []state.Command{place("a", "n2", 2, 3, deadN1)}},

		// Rule 7
		{"attempts exhausted", newState(tried(wl("a", "n3", 4, state.StatusRestoring, 5, cp(5, "n1", "n2", "n3", "n4")),
			state.Try{Node: "n1", Seq: 5, Error: "e1"}, state.Try{Node: "n2", Seq: 5, Error: "e2"}, state.Try{Node: "n3", Seq: 5, Error: "e3"})),
			view(all, nil), policy,
			[]state.Command{giveUp("a", 4, "restore of #5 on n3 failed: e3; gave up after 3 failed restore attempts: n1#5 (e1), n2#5 (e2), n3#5 (e3)")}},
		{"no attempt limit", newState(tried(wl("a", "n3", 4, state.StatusRestoring, 5, cp(5, "n1", "n2", "n3", "n4")),
			state.Try{Node: "n1", Seq: 5, Error: "e1"}, state.Try{Node: "n2", Seq: 5, Error: "e2"}, state.Try{Node: "n3", Seq: 5, Error: "e3"})),
			view(all, nil), Policy{}, []state.Command{place("a", "n4", 5, 5, "restore of #5 on n3 failed: e3")}},
		{"every pair tried", newState(tried(wl("a", "n2", 3, state.StatusRestoring, 5, cp(5, "n2", "n3")),
			state.Try{Node: "n3", Seq: 5, Error: "e1"}, state.Try{Node: "n2", Seq: 5, Error: "e2"})),
			view(all, nil), policy,
			[]state.Command{giveUp("a", 3, "restore of #5 on n2 failed: e2; no untried copy of a checkpoint left (#5 on n2 n3); tried n3#5 (e1), n2#5 (e2)")}},
		{"untried pair on a dead node: wait", newState(tried(wl("a", "n2", 3, state.StatusRestoring, 5, cp(5, "n2", "n3")),
			state.Try{Node: "n2", Seq: 5, Error: "e2"})),
			view([]string{"n1", "n2"}, map[string]time.Duration{"n3": time.Hour}), policy,
			[]state.Command{waiting("a", 3, "restore of #5 on n2 failed: e2; waiting for n3 to come back")}},

		// Output order
		{"sorted by workload ID, one command each", newState(
			wl("c", "n1", 1, state.StatusRunning, 0, cp(1, "n2")),
			since(wl("a", "n2", 1, state.StatusRestoring, 1, cp(1, "n2")), time.Hour),
			wl("b", "n1", 7, state.StatusRunning, 0)),
			view([]string{"n2", "n3"}, n1DeadMinute), policy,
			[]state.Command{
				&state.RestoreDone{At: now, ID: "a", Node: "n2", Epoch: 1, Seq: 1, Error: "restore timed out: no report within 2m0s"},
				giveUp("b", 7, deadN1+"; no checkpoint of it exists"),
				place("c", "n2", 2, 1, deadN1),
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.s.Clone()
			got := Decide(tc.s, tc.v, tc.p)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Decide:\n got %s\nwant %s", show(got), show(tc.want))
			}
			if !reflect.DeepEqual(tc.s, before) {
				t.Error("Decide changed the state")
			}
			// Every command applies to the state it was computed from.
			s := tc.s.Clone()
			for _, cmd := range got {
				if err := s.Apply(cmd); err != nil {
					t.Errorf("%s does not apply: %v", show([]state.Command{cmd}), err)
				}
			}
		})
	}
}

func show(cmds []state.Command) string {
	var b strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&b, "\n  %T %+v", c, c)
	}
	if b.Len() == 0 {
		return "(none)"
	}
	return b.String()
}

// randomState builds a plausible state of up to 8 workloads over 5 nodes.
func randomState(rng *rand.Rand) (*state.State, View) {
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	s := state.New()
	v := View{Now: now, Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	for _, n := range nodes {
		if rng.IntN(4) > 0 {
			s.Nodes[n] = &state.Node{Name: n}
		}
		switch rng.IntN(3) {
		case 0, 1:
			v.Alive[n] = true
		case 2:
			if rng.IntN(2) == 0 {
				v.DeadSince[n] = now.Add(-time.Duration(rng.IntN(60)) * time.Second)
			}
		}
	}
	if rng.IntN(2) == 0 {
		v.LeaderSince = now.Add(-time.Duration(rng.IntN(60)) * time.Second)
	}
	statuses := []state.Status{state.StatusRunning, state.StatusRestoring, state.StatusAppFailed, state.StatusFailed}
	for i := range 1 + rng.IntN(8) {
		w := &state.Workload{ID: fmt.Sprintf("w%d", i), Epoch: 1 + uint64(rng.IntN(5)), Status: statuses[rng.IntN(4)],
			Since: now.Add(-time.Duration(rng.IntN(200)) * time.Second)}
		if w.Status != state.StatusFailed {
			w.Owner = nodes[rng.IntN(5)]
		}
		seq := uint64(10)
		for range rng.IntN(4) {
			c := state.Checkpoint{Seq: seq, SHA256: "x"}
			for _, n := range nodes {
				if rng.IntN(3) == 0 {
					c.Holders = append(c.Holders, n)
				}
			}
			w.Checkpoints = append(w.Checkpoints, c)
			seq -= uint64(1 + rng.IntN(2))
		}
		if len(w.Checkpoints) > 0 {
			w.Seq = w.Checkpoints[rng.IntN(len(w.Checkpoints))].Seq
		}
		for range rng.IntN(4) {
			w.Tried = append(w.Tried, state.Try{Node: nodes[rng.IntN(5)], Seq: w.Seq - uint64(rng.IntN(2)), Error: "e"})
		}
		s.Workloads[w.ID] = w
	}
	return s, v
}

// TestDecideProperties checks, on random states: Decide is deterministic
// and leaves its input alone; it proposes at most one command per workload
// in ID order; every command applies; a Place goes to a live, known,
// untried holder of that checkpoint other than a dead owner; nothing is
// proposed for failed workloads, for running ones on live owners, for
// those of owners never seen, nor for those of dead owners before the
// fence delay and the leader wait.
func TestDecideProperties(t *testing.T) {
	for seed := range uint64(3000) {
		rng := rand.New(rand.NewPCG(seed, 2))
		p := Policy{FenceDelay: 30 * time.Second, MaxAttempts: 3, RestoreTimeout: 100 * time.Second}
		if rng.IntN(2) == 0 {
			p.LeaderDelay = time.Duration(rng.IntN(60)) * time.Second
		}
		s, v := randomState(rng)
		before := s.Clone()
		got := Decide(s, v, p)
		if again := Decide(s.Clone(), v, p); !reflect.DeepEqual(got, again) {
			t.Fatalf("seed %d: not deterministic:\n%s\n%s", seed, show(got), show(again))
		}
		if !reflect.DeepEqual(s, before) {
			t.Fatalf("seed %d: Decide changed the state", seed)
		}
		applied := s.Clone()
		prev := ""
		for _, cmd := range got {
			id, at := commandID(cmd)
			if id <= prev {
				t.Fatalf("seed %d: commands not sorted by ID, or two for %s:%s", seed, id, show(got))
			}
			prev = id
			if !at.Equal(now) {
				t.Fatalf("seed %d: At %v, want %v", seed, at, now)
			}
			w := s.Workloads[id]
			if w.Status == state.StatusFailed || (w.Status == state.StatusRunning && v.Alive[w.Owner]) {
				t.Fatalf("seed %d: %s for %s %s on a live owner", seed, show([]state.Command{cmd}), w.Status, id)
			}
			if !v.Alive[w.Owner] {
				dead, seen := v.DeadSince[w.Owner]
				if !seen {
					t.Fatalf("seed %d: %s for %s, whose owner was never seen", seed, show([]state.Command{cmd}), id)
				}
				if now.Sub(dead) < p.FenceDelay || (!v.LeaderSince.IsZero() && now.Sub(v.LeaderSince) < max(p.FenceDelay, p.LeaderDelay)) {
					t.Fatalf("seed %d: %s for %s before the fence delay or the leader wait", seed, show([]state.Command{cmd}), id)
				}
			}
			if err := applied.Apply(cmd); err != nil {
				t.Fatalf("seed %d: %s does not apply: %v", seed, show([]state.Command{cmd}), err)
			}
			pl, ok := cmd.(*state.Place)
			if !ok {
				continue
			}
			c := w.Checkpoint(pl.Seq)
			if c == nil || !slices.Contains(c.Holders, pl.Owner) || !v.Alive[pl.Owner] || s.Nodes[pl.Owner] == nil {
				t.Fatalf("seed %d: %s: not a live known holder of #%d", seed, show([]state.Command{cmd}), pl.Seq)
			}
			if pl.Owner == w.Owner && !v.Alive[w.Owner] {
				t.Fatalf("seed %d: placed back on the dead owner", seed)
			}
			for _, tr := range w.Tried {
				if tr.Node == pl.Owner && tr.Seq == pl.Seq {
					t.Fatalf("seed %d: %s repeats a tried pair", seed, show([]state.Command{cmd}))
				}
			}
			if p.MaxAttempts > 0 && len(w.Tried) >= p.MaxAttempts {
				t.Fatalf("seed %d: placed after %d attempts", seed, len(w.Tried))
			}
		}
	}
}

func commandID(cmd state.Command) (string, time.Time) {
	switch c := cmd.(type) {
	case *state.Place:
		return c.ID, c.At
	case *state.GiveUp:
		return c.ID, c.At
	case *state.RestoreDone:
		return c.ID, c.At
	case *state.Unplaceable:
		return c.ID, c.At
	}
	panic(fmt.Sprintf("unexpected command %T", cmd))
}
