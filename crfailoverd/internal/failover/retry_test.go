package failover

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

func bad(c state.Checkpoint) state.Checkpoint {
	c.Bad = "the copy restored from it failed 900ms after its restore"
	return c
}

func failed(id string, epoch uint64, ago time.Duration, cps ...state.Checkpoint) *state.Workload {
	w := wl(id, "", epoch, state.StatusFailed, 0, cps...)
	w.Since, w.LastError = now.Add(-ago), "gave up"
	return w
}

// Rule 9, first step: a failed workload is retried (RetryWorkload, never
// a Place at once: a copy of it may run somewhere) once RetryFailed has
// passed and a candidate exists; never for a bad checkpoint only; its
// tried pairs do not count (the retry starts a new round).
func TestRetryFailed(t *testing.T) {
	retry := policy
	retry.RetryFailed = 30 * time.Second
	all := []string{"n1", "n2", "n3", "n4"}
	for _, tc := range []struct {
		name  string
		w     *state.Workload
		p     Policy
		v     View
		retry bool
	}{
		{"holder back after the retry time", failed("a", 4, time.Minute, cp(9, "n3")), retry, view(all, nil), true},
		{"too recent", failed("a", 4, 29*time.Second, cp(9, "n3")), retry, view(all, nil), false},
		{"at the retry time", failed("a", 4, 30*time.Second, cp(9, "n3")), retry, view(all, nil), true},
		{"retries off", failed("a", 4, time.Hour, cp(9, "n3")), policy, view(all, nil), false},
		{"the holder is still dead", failed("a", 4, time.Minute, cp(9, "n3")), retry,
			view([]string{"n1", "n2", "n4"}, map[string]time.Duration{"n3": time.Minute}), false},
		{"tried pairs are tried again", tried(failed("a", 4, time.Minute, cp(9, "n3")), state.Try{Node: "n3", Seq: 9, Error: "criu"}), retry, view(all, nil), true},
		{"the newest is bad: the next older", failed("a", 4, time.Minute, bad(cp(9, "n3")), cp(8, "n2")), retry, view(all, nil), true},
		{"only bad checkpoints: never resurrected", failed("a", 4, time.Hour, bad(cp(9, "n3")), bad(cp(8, "n2"))), retry, view(all, nil), false},
		{"no checkpoint", failed("a", 4, time.Hour), retry, view(all, nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(tc.w)
			cmds := Decide(s, tc.v, tc.p)
			if !tc.retry {
				if len(cmds) != 0 {
					t.Fatalf("got %s, want nothing", show(cmds))
				}
				return
			}
			if len(cmds) != 1 {
				t.Fatalf("got %s, want a retry", show(cmds))
			}
			r, ok := cmds[0].(*state.RetryWorkload)
			if !ok || r.Epoch != tc.w.Epoch+1 || !strings.HasPrefix(r.Reason, "retry after giving up") {
				t.Fatalf("got %s, want a retry at epoch %d", show(cmds), tc.w.Epoch+1)
			}
			if err := s.Apply(r); err != nil {
				t.Fatalf("apply %s: %v", show(cmds), err)
			}
			if w := s.Workloads[tc.w.ID]; w.Status != state.StatusRetrying || w.Owner != "" || len(w.Tried) != 0 {
				t.Errorf("after the retry: %s owned by %q, tried %v", w.Status, w.Owner, w.Tried)
			}
		})
	}
}

// Rule 9, second step: a retrying workload is placed only once the retry
// is max(FenceDelay, LeaderDelay) old and this leader has led for its
// leader wait; without a candidate then, it is given up again.
func TestRetryingIsPlacedAfterTheFenceWait(t *testing.T) {
	p := policy
	p.RetryFailed = 30 * time.Second
	wait := max(p.FenceDelay, p.LeaderDelay)
	all := []string{"n1", "n2", "n3", "n4"}
	retrying := func(ago time.Duration, cps ...state.Checkpoint) *state.Workload {
		w := wl("a", "", 5, state.StatusRetrying, 0, cps...)
		w.Since, w.Reason = now.Add(-ago), "retry after giving up 1m0s ago (gave up)"
		return w
	}
	led := func(v View, ago time.Duration) View { v.LeaderSince = now.Add(-ago); return v }
	for _, tc := range []struct {
		name string
		w    *state.Workload
		v    View
		want string // "owner#seq", "give up", or "" for nothing
	}{
		{"just retried", retrying(0, cp(9, "n3")), view(all, nil), ""},
		{"just inside the wait", retrying(wait-time.Millisecond, cp(9, "n3")), view(all, nil), ""},
		{"at the wait", retrying(wait, cp(9, "n3")), view(all, nil), "n3#9"},
		{"a new leader waits its own wait", retrying(time.Hour, cp(9, "n3")), led(view(all, nil), time.Second), ""},
		{"an old leader does not", retrying(time.Hour, cp(9, "n3")), led(view(all, nil), time.Hour), "n3#9"},
		{"the holder died meanwhile", retrying(wait, cp(9, "n3")),
			view([]string{"n1", "n2", "n4"}, map[string]time.Duration{"n3": time.Second}), "give up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(tc.w)
			cmds := Decide(s, tc.v, p)
			if tc.want == "" {
				if len(cmds) != 0 {
					t.Fatalf("got %s, want nothing yet", show(cmds))
				}
				return
			}
			if len(cmds) != 1 {
				t.Fatalf("got %s, want %s", show(cmds), tc.want)
			}
			switch c := cmds[0].(type) {
			case *state.Place:
				if c.Owner+"#"+itoa(c.Seq) != tc.want || c.Epoch != 6 || !strings.HasPrefix(c.Reason, "retry after giving up") {
					t.Fatalf("got %s, want a placement on %s at epoch 6", show(cmds), tc.want)
				}
			case *state.GiveUp:
				if tc.want != "give up" || c.Epoch != 5 {
					t.Fatalf("got %s, want %s", show(cmds), tc.want)
				}
				// The retry's reason holds the last error: giving up again
				// must not nest it once more at every round.
				if strings.Contains(c.Reason, "retry after giving up") {
					t.Fatalf("give-up reason %q nests the retry's reason", c.Reason)
				}
			default:
				t.Fatalf("got %s, want %s", show(cmds), tc.want)
			}
			if err := s.Apply(cmds[0]); err != nil {
				t.Fatalf("apply %s: %v", show(cmds), err)
			}
		})
	}
}

// Rule 6: the leader marks checkpoint C bad (before placing) only when a
// copy restored from C failed on its own within QuickFailWindow of its
// restore; a lost, fenced or killed copy, a failed migration, a failure
// of unknown kind, a copy that was not restored or ran longer marks
// nothing, and the workload is placed from C as before.
func TestQuickFailureMarksTheCheckpointBad(t *testing.T) {
	all := []string{"n1", "n2", "n3", "n4"}
	for _, tc := range []struct {
		name     string
		kind     state.FailKind
		from     uint64        // RestoredFrom
		ran      time.Duration // from the restore report to the failure
		wantMark bool
	}{
		{"exits at once", state.FailExited, 9, 900 * time.Millisecond, true},
		{"probe fails at once", state.FailProbe, 9, 3 * time.Second, true},
		{"just inside the window", state.FailExited, 9, state.QuickFailWindow - time.Millisecond, true},
		{"at the window", state.FailExited, 9, state.QuickFailWindow, false},
		{"ran for a minute", state.FailProbe, 9, time.Minute, false},
		{"no copy running (lost)", state.FailLost, 9, 6 * time.Second, false},
		{"fenced copy, or killed by the fence guard", state.FailFenced, 9, time.Second, false},
		{"migration failed", state.FailMigration, 9, time.Second, false},
		{"the reporter cannot tell", "", 9, time.Second, false},
		{"registered, not restored", state.FailExited, 0, time.Second, false},
		{"restored from a checkpoint no longer recorded", state.FailExited, 5, time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := wl("a", "n1", 3, state.StatusAppFailed, 9, cp(9, "n1", "n2"), cp(8, "n3"))
			w.RestoredFrom, w.FailKind, w.Reason = tc.from, tc.kind, "container exited"
			w.RestoredAt = w.Since.Add(-tc.ran)
			s := newState(w)
			cmds := Decide(s, view(all, nil), policy)
			if len(cmds) != 1 {
				t.Fatalf("got %s, want one command", show(cmds))
			}
			mark, ok := cmds[0].(*state.MarkCheckpointBad)
			if ok != tc.wantMark {
				t.Fatalf("got %s, want a mark %v", show(cmds), tc.wantMark)
			}
			if !tc.wantMark {
				if p, ok := cmds[0].(*state.Place); !ok || p.Seq != 9 || p.Owner != "n2" {
					t.Fatalf("got %s, want the placement from #9 on n2", show(cmds))
				}
				return
			}
			if mark.Seq != 9 || mark.SHA256 != "sha-9" || !strings.Contains(mark.Why, "n1") || !strings.Contains(mark.Why, string(tc.kind)) {
				t.Fatalf("got %s, want #9 marked, saying where and why", show(cmds))
			}
			if err := s.Apply(mark); err != nil {
				t.Fatal(err)
			}
			// Then the placement passes over it.
			cmds = Decide(s, view(all, nil), policy)
			if p, ok := cmds[0].(*state.Place); len(cmds) != 1 || !ok || p.Seq != 8 || p.Owner != "n3" {
				t.Fatalf("after the mark: got %s, want the placement from #8 on n3", show(cmds))
			}
		})
	}
}

// Rule 8's explanation says a bad checkpoint is marked bad, not tried.
func TestNoNodeCanRestoreNamesBadCheckpoints(t *testing.T) {
	w := wl("a", "n1", 3, state.StatusAppFailed, 0, bad(cp(9, "n2")), cp(8, "n3"))
	d := decider{s: newState(w), v: view([]string{"n1", "n2", "n3", "n4"}, nil), p: policy, owned: map[string]int{}}
	got := d.noNodeCanRestore(w)
	if !strings.Contains(got, "n2: #9 is marked bad (") {
		t.Errorf("%q does not say n2's #9 is marked bad", got)
	}
	if strings.Contains(got, "n2: its restore of #9 was tried") {
		t.Errorf("%q calls a bad checkpoint tried", got)
	}
	if !strings.Contains(got, "n3: its restore of #8 was tried") {
		t.Errorf("%q: n3 should be judged with its good #8", got)
	}
}

// Rules 6 and 7 with bad checkpoints: an app-failed or dead owner's
// workload is placed from the newest checkpoint that is not bad, and
// given up when every one is bad.
func TestBadCheckpointsArePassedOver(t *testing.T) {
	all := []string{"n1", "n2", "n3", "n4"}
	for _, tc := range []struct {
		name string
		w    *state.Workload
		v    View
		want string // "owner#seq", or "give up"
	}{
		{"app-failed, newest bad", wl("a", "n1", 3, state.StatusAppFailed, 0, bad(cp(9, "n1", "n2")), cp(8, "n1", "n3")), view(all, nil), "n3#8"},
		{"app-failed, newest bad, the owner as a last resort", wl("a", "n1", 3, state.StatusAppFailed, 0, bad(cp(9, "n1", "n2")), cp(8, "n1")), view(all, nil), "n1#8"},
		{"app-failed, every checkpoint bad", wl("a", "n1", 3, state.StatusAppFailed, 0, bad(cp(9, "n1", "n2")), bad(cp(8, "n3"))), view(all, nil), "give up"},
		{"dead owner, newest bad", wl("a", "n1", 3, state.StatusRunning, 0, bad(cp(9, "n2")), cp(7, "n4")),
			view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Hour}), "n4#7"},
		{"restore failed, the only other is bad", tried(wl("a", "n2", 3, state.StatusRestoring, 8, bad(cp(9, "n3")), cp(8, "n2")), state.Try{Node: "n2", Seq: 8, Error: "criu"}),
			view(all, nil), "give up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmds := Decide(newState(tc.w), tc.v, policy)
			if len(cmds) != 1 {
				t.Fatalf("got %s, want %s", show(cmds), tc.want)
			}
			switch c := cmds[0].(type) {
			case *state.Place:
				if c.Owner+"#"+itoa(c.Seq) != tc.want {
					t.Fatalf("got %s, want %s", show(cmds), tc.want)
				}
			case *state.GiveUp:
				if tc.want != "give up" || !strings.Contains(c.Reason, "bad: ") {
					t.Fatalf("got %s, want %s naming the bad checkpoints", show(cmds), tc.want)
				}
			default:
				t.Fatalf("got %s, want %s", show(cmds), tc.want)
			}
		})
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
