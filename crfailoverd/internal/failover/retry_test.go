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

// Rule 9: a failed workload is placed again once RetryFailed has passed
// and a candidate exists; never from a bad checkpoint; its tried pairs do
// not count (the Place starts a new round).
func TestRetryFailed(t *testing.T) {
	retry := policy
	retry.RetryFailed = 30 * time.Second
	all := []string{"n1", "n2", "n3", "n4"}
	for _, tc := range []struct {
		name string
		w    *state.Workload
		p    Policy
		v    View
		want string // "owner#seq", or "" for no command
	}{
		{"holder back after the retry time", failed("a", 4, time.Minute, cp(9, "n3")), retry, view(all, nil), "n3#9"},
		{"too recent", failed("a", 4, 29*time.Second, cp(9, "n3")), retry, view(all, nil), ""},
		{"at the retry time", failed("a", 4, 30*time.Second, cp(9, "n3")), retry, view(all, nil), "n3#9"},
		{"retries off", failed("a", 4, time.Hour, cp(9, "n3")), policy, view(all, nil), ""},
		{"the holder is still dead", failed("a", 4, time.Minute, cp(9, "n3")), retry,
			view([]string{"n1", "n2", "n4"}, map[string]time.Duration{"n3": time.Minute}), ""},
		{"tried pairs are tried again", tried(failed("a", 4, time.Minute, cp(9, "n3")), state.Try{Node: "n3", Seq: 9, Error: "criu"}), retry, view(all, nil), "n3#9"},
		{"the newest is bad: the next older", failed("a", 4, time.Minute, bad(cp(9, "n3")), cp(8, "n2")), retry, view(all, nil), "n2#8"},
		{"only bad checkpoints: never resurrected", failed("a", 4, time.Hour, bad(cp(9, "n3")), bad(cp(8, "n2"))), retry, view(all, nil), ""},
		{"no checkpoint", failed("a", 4, time.Hour), retry, view(all, nil), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(tc.w)
			cmds := Decide(s, tc.v, tc.p)
			if tc.want == "" {
				if len(cmds) != 0 {
					t.Fatalf("got %s, want nothing", show(cmds))
				}
				return
			}
			if len(cmds) != 1 {
				t.Fatalf("got %s, want a placement on %s", show(cmds), tc.want)
			}
			p, ok := cmds[0].(*state.Place)
			if !ok || p.Owner+"#"+itoa(p.Seq) != tc.want || p.Epoch != tc.w.Epoch+1 || !strings.HasPrefix(p.Reason, "retry after giving up") {
				t.Fatalf("got %s, want a retry on %s at epoch %d", show(cmds), tc.want, tc.w.Epoch+1)
			}
			// The placement commits and starts a new round.
			if err := s.Apply(p); err != nil {
				t.Fatalf("apply %s: %v", show(cmds), err)
			}
			if w := s.Workloads[tc.w.ID]; w.Status != state.StatusRestoring || len(w.Tried) != 0 || w.LastError != "" {
				t.Errorf("after the retry: %s, tried %v, last error %q", w.Status, w.Tried, w.LastError)
			}
		})
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
