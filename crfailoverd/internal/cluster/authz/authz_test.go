package authz

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// holderState: n1 owns ns/p/c, whose checkpoint #4 (sha-4, 400 bytes) n1
// and n2 hold; n3 is a member too.
func holderState() *state.State {
	s := state.New()
	for _, n := range []string{"n1", "n2", "n3"} {
		s.Nodes[n] = &state.Node{Name: n}
	}
	s.Workloads["ns/p/c"] = &state.Workload{ID: "ns/p/c", Owner: "n1", Epoch: 2, Status: state.StatusRunning,
		Checkpoints: []state.Checkpoint{{Seq: 4, SHA256: "sha-4", Size: 400, Holders: []string{"n1", "n2"}}}}
	return s
}

// TestHolderRecords: a holder record is added only by the owner and only
// with the recorded sha256 and size; a holder record is dropped only by
// the node it names. Each refusal names the caller and what was refused.
func TestHolderRecords(t *testing.T) {
	at := time.Unix(1, 0)
	for _, tc := range []struct {
		name   string
		caller string
		cmd    state.Command
		want   string // "" admitted; else a part of the refusal
		later  bool   // the refusal may be only a matter of time
	}{
		{"owner adds a holder with the record's digest", "n1", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Size: 400, Node: "n3"}, "", false},
		{"owner adds a holder without a digest", "n1", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 4, Node: "n3"}, "names sha256  and 0 bytes for checkpoint #4 of ns/p/c, the state records sha-4 and 400 bytes", false},
		{"owner adds a holder of another size", "n1", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Size: 401, Node: "n3"}, "401 bytes", false},
		{"owner adds a holder of another archive", "n1", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-planted", Size: 400, Node: "n3"}, "sha-planted", false},
		{"owner adds a holder of an unrecorded checkpoint", "n1", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 5, SHA256: "sha-5", Size: 500, Node: "n3"}, "has no checkpoint #5", true},
		{"another node adds a holder", "n2", &state.AddHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Size: 400, Node: "n2"}, `is owned by "n1"`, false},
		{"a holder drops itself", "n2", &state.DropHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Node: "n2", Reason: "mismatch"}, "", false},
		{"the owner drops itself", "n1", &state.DropHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Node: "n1"}, "", false},
		{"the owner drops another holder", "n1", &state.DropHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Node: "n2"}, `it names node "n2": a node reports only for itself`, false},
		{"a member drops a holder", "n3", &state.DropHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Node: "n2"}, `it names node "n2"`, false},
		{"a name that is no member drops itself", "mallory", &state.DropHolder{At: at, ID: "ns/p/c", Seq: 4, SHA256: "sha-4", Node: "mallory"}, "not a node of the cluster", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Forwarded(holderState(), tc.caller, tc.cmd)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDenied) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if !strings.HasPrefix(err.Error(), tc.caller+" may not forward ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refusal %q does not name the caller and say %q", err, tc.want)
			}
			if errors.Is(err, ErrNotRecorded) != tc.later {
				t.Fatalf("refusal %q: not-recorded-yet is %t, want %t", err, !tc.later, tc.later)
			}
		})
	}
}

// TestTableNamesDropHolder: the table (which the README shows) has a row
// for every command a follower may forward, DropHolder included.
func TestTableNamesDropHolder(t *testing.T) {
	for _, req := range []string{"AddHolder", "DropHolder"} {
		found := false
		for _, r := range Table {
			found = found || strings.Contains(r.Request, req)
		}
		if !found {
			t.Errorf("authz.Table has no row for %s", req)
		}
	}
}

// TestCapabilityRecords: a node reports only its own capabilities; the
// leader alone records a workload as unplaceable; an owner migrates only
// to a node that can restore the checkpoint.
func TestCapabilityRecords(t *testing.T) {
	at := time.Unix(1, 0)
	s := holderState()
	s.Workloads["ns/p/c"].Checkpoints[0].Runtime = capability.Runtime{Name: "containerd", Version: "2.1.9"}
	s.Workloads["ns/p/c"].Checkpoints[0].Holders = []string{"n1", "n2", "n3"}
	for n, rt := range map[string]string{"n2": "cri-o", "n3": "containerd"} {
		if err := s.Apply(&state.NodeCapabilities{At: at, Node: n, Caps: capability.Node{Runtime: capability.Runtime{Name: rt}, Restore: capability.RestoreCreate}}); err != nil {
			t.Fatal(err)
		}
	}
	caps := capability.Node{Runtime: capability.Runtime{Name: "containerd"}, Restore: capability.RestoreCreate}
	for _, tc := range []struct {
		name   string
		caller string
		cmd    state.Command
		want   string // "" admitted; else a part of the refusal
	}{
		{"a node reports its own capabilities", "n2", &state.NodeCapabilities{At: at, Node: "n2", Caps: caps}, ""},
		{"a node reports another's", "n2", &state.NodeCapabilities{At: at, Node: "n3", Caps: caps}, `it names node "n3": a node reports only for itself`},
		{"a name that is no member reports", "mallory", &state.NodeCapabilities{At: at, Node: "mallory", Caps: caps}, "not a node of the cluster"},
		{"a member records a workload unplaceable", "n1", &state.Unplaceable{At: at, ID: "ns/p/c", Epoch: 2, Reason: "x"}, "only the leader's own loop makes it"},
		{"the owner migrates to a capable holder", "n1", &state.Place{At: at, ID: "ns/p/c", Owner: "n3", Epoch: 3, Seq: 4}, ""},
		{"the owner migrates to a holder of another runtime", "n1", &state.Place{At: at, ID: "ns/p/c", Owner: "n2", Epoch: 3, Seq: 4},
			"target n2 cannot restore checkpoint #4: it runs cri-o, the checkpoint was taken by containerd 2.1.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Forwarded(s, tc.caller, tc.cmd)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDenied) || !strings.HasPrefix(err.Error(), tc.caller+" may not forward ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal of %s saying %q", err, tc.caller, tc.want)
			}
		})
	}
	for _, req := range []string{"NodeCapabilities", "Unplaceable"} {
		found := false
		for _, r := range Table {
			found = found || strings.Contains(r.Request, req)
		}
		if !found {
			t.Errorf("authz.Table has no row for %s", req)
		}
	}
}
