package failover

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

var (
	containerd = capability.Runtime{Name: "containerd", Version: "2.1.9"}
	crio       = capability.Runtime{Name: "cri-o", Version: "1.36.3"}
	flagsBig   = []string{"avx", "avx2", "avx512f", "sse4_2"}
	flagsSmall = []string{"avx", "avx2", "sse4_2"}
)

// mixed: n1 (containerd, avx512f) owns the workloads; n2 cannot restore
// (containerd 2.3 with restore off), n3 runs CRI-O, n4 is containerd
// without avx512f, n5 is containerd with avx512f. Reports go through the
// state's own command.
func mixed(t *testing.T, ws ...*state.Workload) *state.State {
	t.Helper()
	s := newState(ws...)
	s.Nodes["n5"] = &state.Node{Name: "n5"}
	for n, c := range map[string]capability.Node{
		"n1": {Runtime: containerd, Restore: capability.RestoreCreate, CPUFlags: flagsBig},
		"n2": {Runtime: capability.Runtime{Name: "containerd", Version: "2.3.7"}, Restore: capability.RestoreNone,
			RestoreReason: "set enable_experimental_restore_via_create = true", CPUFlags: flagsBig},
		"n3": {Runtime: crio, Restore: capability.RestoreCreate, CPUFlags: flagsBig},
		"n4": {Runtime: containerd, Restore: capability.RestoreCreate, CPUFlags: flagsSmall},
		"n5": {Runtime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, Restore: capability.RestoreNative, CPUFlags: flagsBig},
	} {
		if err := s.Apply(&state.NodeCapabilities{At: now, Node: n, Caps: c}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// ccp is a checkpoint taken on n1 (containerd, avx512f).
func ccp(seq uint64, holders ...string) state.Checkpoint {
	c := cp(seq, holders...)
	c.Runtime, c.CPU, c.TakenOn = containerd, capability.FlagsDigest(flagsBig), "n1"
	return c
}

func TestDecideByCapability(t *testing.T) {
	const (
		whyN2 = "n2: its runtime containerd 2.3.7 cannot restore: set enable_experimental_restore_via_create = true"
		whyN3 = "n3: it runs cri-o 1.36.3, the checkpoint was taken by containerd 2.1.9 (archives are runtime-specific)"
		whyN4 = "n4: its CPU lacks avx512f (a restored process would crash with SIGILL)"
	)
	all := []string{"n1", "n2", "n3", "n4", "n5"}
	notN1 := []string{"n2", "n3", "n4", "n5"}
	n1Dead := map[string]time.Duration{"n1": time.Minute}
	for _, tc := range []struct {
		name string
		w    *state.Workload
		v    View
		want []state.Command
	}{
		{"the capable holder, not the less loaded incapable ones", wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n1", "n2", "n3", "n4", "n5")),
			view(notN1, n1Dead), []state.Command{place("a", "n5", 2, 3, deadN1)}},
		{"a capable node fetches the newest that only an incapable node holds, rather than restore an older one", wl("a", "n1", 1, state.StatusRunning, 0,
			ccp(4, "n1", "n4"), ccp(3, "n1", "n5")),
			view(notN1, n1Dead), []state.Command{place("a", "n5", 2, 4, deadN1)}},
		{"an older checkpoint a capable node holds, when the newest cannot be fetched", wl("a", "n1", 1, state.StatusRunning, 0,
			ccp(4, "n1", "n4"), ccp(3, "n1", "n5")),
			view([]string{"n2", "n3", "n5"}, map[string]time.Duration{"n1": time.Minute, "n4": time.Minute}), []state.Command{place("a", "n5", 2, 3, deadN1)}},
		{"only incapable holders: a capable node fetches it", wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n1", "n2", "n3")),
			view(notN1, n1Dead), []state.Command{place("a", "n5", 2, 3, deadN1)}},
		{"only incapable holders, the capable node is dead: reported, not given up", wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n2", "n4")),
			view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n5": time.Minute}),
			[]state.Command{&state.Unplaceable{At: now, ID: "a", Epoch: 1, Reason: deadN1 + "; no node can restore it: " +
				whyN2 + "; " + whyN3 + "; " + whyN4 + "; n5: not alive"}}},
		{"a capable holder that is dead: wait for it", wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n1", "n5")),
			view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n5": time.Minute}),
			[]state.Command{waiting("a", 1, deadN1+"; waiting for n1, n5 to come back")}},
		{"the dead owner is the only capable holder: wait for it, and say why", wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n1", "n2", "n4")),
			view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n5": time.Minute}),
			[]state.Command{&state.Unplaceable{At: now, ID: "a", Epoch: 1, Reason: deadN1 + "; waiting for n1 to come back; no node can restore it: " +
				whyN2 + "; " + whyN3 + "; " + whyN4 + "; n5: not alive"}}},
		{"reported already: nothing new", reported(wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n2", "n4")),
			deadN1+"; no node can restore it: "+whyN2+"; "+whyN3+"; "+whyN4+"; n5: not alive"),
			view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n5": time.Minute}), nil},
		{"app-failed on an owner that cannot restore: not back on it", wl("a", "n4", 2, state.StatusAppFailed, 0, ccp(3, "n4")),
			view(all, nil), []state.Command{place("a", "n1", 3, 3, "application failed on n4: ")}},
		{"app-failed, the capable holder tried: a capable non-holder does not fetch what a capable holder failed", tried(
			wl("a", "n1", 2, state.StatusRestoring, 3, ccp(3, "n1", "n5")), state.Try{Node: "n1", Seq: 3, Error: "boom"}),
			view(all, nil), []state.Command{place("a", "n5", 3, 3, "restore of #3 on n1 failed: boom")}},
		{"an old checkpoint (no needs) on a node that cannot restore", wl("a", "n1", 1, state.StatusRunning, 0, cp(3, "n1", "n2", "n4")),
			view(notN1, n1Dead), []state.Command{place("a", "n4", 2, 3, deadN1)}},
		{"a CRI-O checkpoint waits for the CRI-O node, and says why", wl("a", "n3", 1, state.StatusRunning, 0, func() state.Checkpoint {
			c := cp(3, "n1", "n3", "n5")
			c.Runtime, c.CPU, c.TakenOn = crio, capability.FlagsDigest(flagsBig), "n3"
			return c
		}()), view([]string{"n1", "n2", "n4", "n5"}, map[string]time.Duration{"n3": time.Minute}),
			[]state.Command{&state.Unplaceable{At: now, ID: "a", Epoch: 1, Reason: "node n3 dead since 2026-11-24T11:59:00Z; waiting for n3 to come back; " +
				"no node can restore it: n1: it runs containerd 2.1.9, the checkpoint was taken by cri-o 1.36.3 (archives are runtime-specific); " +
				"n2: it runs containerd 2.3.7, the checkpoint was taken by cri-o 1.36.3 (archives are runtime-specific); " +
				"n4: it runs containerd 2.1.9, the checkpoint was taken by cri-o 1.36.3 (archives are runtime-specific); " +
				"n5: it runs containerd 2.4.2, the checkpoint was taken by cri-o 1.36.3 (archives are runtime-specific)"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mixed(t, tc.w)
			got := Decide(s, tc.v, policy)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decide:\n got %s\nwant %s", show(got), show(tc.want))
			}
			for _, c := range got {
				if p, ok := c.(*state.Place); ok {
					if ok, why := s.CanRestore(p.Owner, s.Workloads[p.ID].Checkpoint(p.Seq)); !ok {
						t.Fatalf("placed on %s, which cannot restore it: %s", p.Owner, why)
					}
				}
			}
		})
	}
}

func reported(w *state.Workload, why string) *state.Workload { w.LastError = why; return w }

// TestUnplaceableThenCapable: a workload reported unplaceable is placed
// once a node reports that it can restore it, and the state accepts the
// report and the placement in turn.
func TestUnplaceableThenCapable(t *testing.T) {
	s := mixed(t, wl("a", "n1", 1, state.StatusRunning, 0, ccp(3, "n2")))
	v := view([]string{"n2", "n3", "n4"}, map[string]time.Duration{"n1": time.Minute, "n5": time.Minute})
	cmds := Decide(s, v, policy)
	if len(cmds) != 1 {
		t.Fatalf("Decide = %s, want one report", show(cmds))
	}
	if err := s.Apply(cmds[0]); err != nil {
		t.Fatal(err)
	}
	if w := s.Workloads["a"]; w.Owner != "n1" || w.Status != state.StatusRunning || !strings.Contains(w.LastError, "no node can restore it: n2: ") {
		t.Fatalf("after the report: %+v", w)
	}
	if again := Decide(s, v, policy); len(again) != 0 {
		t.Fatalf("reported twice: %s", show(again))
	}
	// The operator turns restore on on n2.
	if err := s.Apply(&state.NodeCapabilities{At: now, Node: "n2", Caps: capability.Node{Runtime: containerd, Restore: capability.RestoreCreate, CPUFlags: flagsBig}}); err != nil {
		t.Fatal(err)
	}
	want := []state.Command{place("a", "n2", 2, 3, deadN1)}
	if got := Decide(s, v, policy); !reflect.DeepEqual(got, want) {
		t.Fatalf("after n2 can restore: %s, want %s", show(got), show(want))
	}
}
