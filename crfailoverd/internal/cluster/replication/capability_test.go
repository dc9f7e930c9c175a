package replication

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestChooseTargets(t *testing.T) {
	peers := []string{"n2", "n3", "n4", "n5"}
	can := func(capable ...string) func(string) (bool, string) {
		return func(n string) (bool, string) {
			for _, c := range capable {
				if c == n {
					return true, ""
				}
			}
			return false, "restore is off"
		}
	}
	for _, tc := range []struct {
		name    string
		factor  int
		capable []string
		want    []string
		why     string
	}{
		{"all capable: rendezvous as before", 2, peers, peer.Targets("ns/p/c", "n1", peers, 2), ""},
		{"one capable, factor 2: it, then an incapable one (the factor's copies are kept)", 2, []string{"n4"},
			append([]string{"n4"}, peer.Targets("ns/p/c", "n1", []string{"n2", "n3", "n5"}, 1)...), ""},
		{"two capable of four: rendezvous among them", 1, []string{"n3", "n5"}, peer.Targets("ns/p/c", "n1", []string{"n3", "n5"}, 1), ""},
		{"none capable: among all, and why", 1, nil, peer.Targets("ns/p/c", "n1", peers, 1),
			"no alive peer can restore it (n2: restore is off; n3: restore is off; n4: restore is off; n5: restore is off)"},
	} {
		got, why := ChooseTargets("ns/p/c", "n1", peers, tc.factor, can(tc.capable...))
		if !reflect.DeepEqual(got, tc.want) || why != tc.why {
			t.Errorf("%s: ChooseTargets = %v, %q; want %v, %q", tc.name, got, why, tc.want, tc.why)
		}
		// Capable peers come first: an incapable one only fills a slot
		// no capable peer is left for.
		seenIncapable := false
		for _, n := range got {
			if ok, _ := can(tc.capable...)(n); !ok {
				seenIncapable = true
			} else if seenIncapable {
				t.Errorf("%s: capable %s after an incapable peer in %v", tc.name, n, got)
			}
		}
		if seenIncapable && len(tc.capable) >= tc.factor {
			t.Errorf("%s: an incapable peer chosen while %v (enough for the factor %d) can restore", tc.name, tc.capable, tc.factor)
		}
	}
	if got, why := ChooseTargets("ns/p/c", "n1", nil, 1, can()); len(got) != 0 || why != "" {
		t.Errorf("no peers: %v, %q", got, why)
	}
}

type fixedState struct{ s *state.State }

func (f fixedState) State() *state.State { return f.s }

// TestRecordNeedsAndCapableTargets: a checkpoint records this node's
// runtime and CPU digest; it goes to the one peer that can restore it,
// and, once no peer can, to another with one event saying why.
func TestRecordNeedsAndCapableTargets(t *testing.T) {
	at := time.Unix(1, 0)
	local := capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Restore: capability.RestoreCreate,
		CPUFlags: []string{"avx", "avx512f"}, Checked: at}
	st := state.New()
	for _, n := range []string{"n1", "n2", "n3"} {
		st.Nodes[n] = &state.Node{Name: n}
	}
	for n, c := range map[string]capability.Node{"n1": local,
		"n2": {Runtime: capability.Runtime{Name: "cri-o"}, Restore: capability.RestoreCreate, CPUFlags: []string{"avx", "avx512f"}},
		"n3": {Runtime: capability.Runtime{Name: "containerd"}, Restore: capability.RestoreCreate, CPUFlags: []string{"avx", "avx512f", "sse"}}} {
		if err := st.Apply(&state.NodeCapabilities{At: at, Node: n, Caps: c}); err != nil {
			t.Fatal(err)
		}
	}
	p := &fakeProposer{}
	var evs []event.Event
	r, q := newRepl(fakeMembers{"n1": true, "n2": true, "n3": true}, nil, p, &evs)
	r.o.Capabilities = func() capability.Node { return local }
	r.o.State = fixedState{st}
	runFor(t, r)
	for seq := uint64(1); seq <= 2; seq++ {
		r.Record(discovery.Workload{ID: wid}, 1, store.Entry{Workload: wid, Seq: seq, SHA256: "abc", Size: 10})
	}
	poll.True(t, 5*time.Second, "enqueued", func() bool { return len(q.get()) == 2 })
	if got := q.get(); got[0] != "#1->n3" || got[1] != "#2->n3" {
		t.Fatalf("queued %v, want both to n3, the containerd peer (the factor is 1)", got)
	}
	p.mu.Lock()
	cc := p.cmds[0].(*state.CommitCheckpoint)
	p.mu.Unlock()
	if cp := cc.Checkpoint; cp.Runtime != local.Runtime || cp.CPU != capability.FlagsDigest(local.CPUFlags) || cp.TakenOn != "n1" {
		t.Fatalf("recorded %+v, want the local runtime and CPU digest", cp)
	}
	// n3 turns restore off: no peer can; the copy goes to a peer all the
	// same, and one event says so for two checkpoints.
	if err := st.Apply(&state.NodeCapabilities{At: at, Node: "n3", Caps: capability.Node{Runtime: capability.Runtime{Name: "containerd"}, Restore: capability.RestoreNone, RestoreReason: "off"}}); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(3); seq <= 4; seq++ {
		r.Record(discovery.Workload{ID: wid}, 1, store.Entry{Workload: wid, Seq: seq, SHA256: "abc", Size: 10})
	}
	poll.True(t, 5*time.Second, "enqueued", func() bool { return len(q.get()) == 4 })
	var said []event.Event
	for _, e := range evs {
		if e.Kind == NoCapablePeer {
			said = append(said, e)
		}
	}
	if len(said) != 1 || !strings.Contains(said[0].Reason, "n2: it runs cri-o, the checkpoint was taken by containerd 2.1.9") ||
		!strings.Contains(said[0].Reason, "n3: its runtime containerd cannot restore: off") {
		t.Fatalf("events %+v, want one no-capable-peer event naming n2 and n3", said)
	}
}
