package state

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Workload IDs of the fixture.
const (
	wRun       = "ns/run/c"       // running on n1 at epoch 2
	wRest      = "ns/rest/c"      // restoring on n2 at epoch 5 from #7; n3 failed #7 before
	wRestFail  = "ns/restfail/c"  // restoring on n2 at epoch 3 from #7, and n2 reported failure
	wAppFailed = "ns/appfailed/c" // app-failed on n1 at epoch 1
	wFailed    = "ns/failed/c"    // failed at epoch 4
)

func cp(seq uint64, holders ...string) Checkpoint {
	return Checkpoint{Seq: seq, SHA256: fmt.Sprintf("sha-%d", seq), Size: int64(seq) * 100, Created: t0.Add(-time.Duration(seq) * time.Minute), Holders: holders}
}

func fixture() *State {
	s := New()
	for _, n := range []string{"n1", "n2", "n3"} {
		s.Nodes[n] = &Node{Name: n, RPCAddr: n + ":7947", Joined: t0.Add(-time.Hour)}
	}
	since := t0.Add(-10 * time.Minute)
	add := func(w *Workload) {
		w.Since, w.Interval = since, 10*time.Second
		s.Workloads[w.ID] = w
	}
	add(&Workload{ID: wRun, Owner: "n1", Epoch: 2, Status: StatusRunning, Seq: 3, Reason: "registered by n1",
		Config: []byte(`{"a":1}`), Checkpoints: []Checkpoint{cp(4, "n1", "n2"), cp(3, "n1")}})
	add(&Workload{ID: wRest, Owner: "n2", Epoch: 5, Status: StatusRestoring, Seq: 7, Reason: "restore of #7 on n3 failed: boom",
		Checkpoints: []Checkpoint{cp(7, "n1", "n2", "n3")}, Tried: []Try{{Node: "n3", Seq: 7, Error: "boom"}}, LastError: "boom"})
	add(&Workload{ID: wRestFail, Owner: "n2", Epoch: 3, Status: StatusRestoring, Seq: 7,
		Checkpoints: []Checkpoint{cp(7, "n2", "n3")}, Tried: []Try{{Node: "n2", Seq: 7, Error: "disk full"}}, LastError: "disk full"})
	add(&Workload{ID: wAppFailed, Owner: "n1", Epoch: 1, Status: StatusAppFailed, Reason: "probe failed",
		Checkpoints: []Checkpoint{cp(2, "n1", "n3")}})
	add(&Workload{ID: wFailed, Epoch: 4, Status: StatusFailed, LastError: "no candidate",
		Checkpoints: []Checkpoint{cp(9, "n3")}, Tried: []Try{{Node: "n3", Seq: 9, Error: "bad"}}})
	return s
}

// TestApplyRules applies one command to the fixture and compares the
// result with the fixture changed by edit (nil: unchanged). A command that
// fails must leave the state unchanged.
func TestApplyRules(t *testing.T) {
	at := t0
	for _, tc := range []struct {
		name    string
		cmd     Command
		wantErr error
		edit    func(s *State)
	}{
		// RegisterWorkload
		{"register new workload", &RegisterWorkload{At: at, ID: "ns/new/c", Node: "n2", Interval: time.Second, Config: []byte("{}")}, nil,
			func(s *State) {
				s.Workloads["ns/new/c"] = &Workload{ID: "ns/new/c", Owner: "n2", Epoch: 1, Status: StatusRunning,
					Reason: "registered by n2", Since: at, Interval: time.Second, Config: []byte("{}")}
			}},
		{"register new workload from a restored copy keeps its epoch", &RegisterWorkload{At: at, ID: "ns/new/c", Node: "n2", CopyEpoch: 7}, nil,
			func(s *State) {
				s.Workloads["ns/new/c"] = &Workload{ID: "ns/new/c", Owner: "n2", Epoch: 7, Status: StatusRunning, Reason: "registered by n2", Since: at}
			}},
		{"owner re-registers its running copy", &RegisterWorkload{At: at, ID: wRun, Node: "n1", CopyEpoch: 2, Interval: time.Minute, Config: []byte("{}")}, nil,
			func(s *State) { w := s.Workloads[wRun]; w.Interval, w.Config = time.Minute, []byte("{}") }},
		{"owner's original pod is older than the epoch", &RegisterWorkload{At: at, ID: wRun, Node: "n1", CopyEpoch: 0}, ErrStale, nil},
		{"owner's copy of an older epoch", &RegisterWorkload{At: at, ID: wRun, Node: "n1", CopyEpoch: 1}, ErrStale, nil},
		{"another node's copy", &RegisterWorkload{At: at, ID: wRun, Node: "n2", CopyEpoch: 2}, ErrStale, nil},
		{"another node's copy of a later epoch", &RegisterWorkload{At: at, ID: wRun, Node: "n2", CopyEpoch: 9}, ErrStale, nil},
		{"restoring owner's copy runs", &RegisterWorkload{At: at, ID: wRest, Node: "n2", CopyEpoch: 5, Interval: time.Second}, nil,
			func(s *State) {
				w := s.Workloads[wRest]
				w.Status, w.Since, w.Tried, w.LastError, w.Interval, w.Config = StatusRunning, at, nil, "", time.Second, nil
				w.RestoredFrom, w.RestoredAt = 7, at
			}},
		{"restoring owner's copy of an attempt recorded failed", &RegisterWorkload{At: at, ID: wRestFail, Node: "n2", CopyEpoch: 3}, ErrStale, nil},
		{"app-failed owner re-registers: status kept", &RegisterWorkload{At: at, ID: wAppFailed, Node: "n1", CopyEpoch: 1, Interval: time.Hour}, nil,
			func(s *State) { s.Workloads[wAppFailed].Interval = time.Hour }},
		{"failed workload started by hand", &RegisterWorkload{At: at, ID: wFailed, Node: "n2", CopyEpoch: 0, Interval: time.Minute, Config: []byte("{}")}, nil,
			func(s *State) {
				w := s.Workloads[wFailed]
				w.Owner, w.Epoch, w.Status, w.Since, w.Tried, w.LastError = "n2", 5, StatusRunning, at, nil, ""
				w.Reason, w.Interval, w.Config = "registered by n2 after the cluster gave up", time.Minute, []byte("{}")
			}},
		{"register without node", &RegisterWorkload{At: at, ID: wRun}, ErrInvalid, nil},
		{"register without id", &RegisterWorkload{At: at, Node: "n1"}, ErrInvalid, nil},

		// CommitCheckpoint
		{"owner commits a checkpoint", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: withHolders(cp(5), "n2", "n3")}, nil,
			func(s *State) {
				w := s.Workloads[wRun]
				w.Checkpoints = append([]Checkpoint{cp(5, "n1")}, w.Checkpoints...)
			}},
		{"retried commit keeps holders", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: cp(4)}, nil, nil},
		{"same seq, other archive: replaced, higher seqs dropped", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: withSHA(cp(3), "other")}, nil,
			func(s *State) { s.Workloads[wRun].Checkpoints = []Checkpoint{withSHA(cp(3, "n1"), "other")} }},
		{"lower seq drops the abandoned line above it", &CommitCheckpoint{At: at, ID: wRest, Node: "n2", Epoch: 5, Checkpoint: cp(6)}, nil,
			func(s *State) { s.Workloads[wRest].Checkpoints = []Checkpoint{cp(6, "n2")} }},
		{"commit from a stale epoch", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 1, Checkpoint: cp(5)}, ErrStale, nil},
		{"commit from a later epoch", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 3, Checkpoint: cp(5)}, ErrStale, nil},
		{"commit from a non-owner", &CommitCheckpoint{At: at, ID: wRun, Node: "n2", Epoch: 2, Checkpoint: cp(5)}, ErrStale, nil},
		{"commit to a failed workload", &CommitCheckpoint{At: at, ID: wFailed, Node: "n3", Epoch: 4, Checkpoint: cp(10)}, ErrStale, nil},
		{"commit to an unknown workload", &CommitCheckpoint{At: at, ID: "x/y/z", Node: "n1", Epoch: 1, Checkpoint: cp(1)}, ErrUnknownWorkload, nil},
		{"commit seq 0", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: cp(0)}, ErrInvalid, nil},
		{"commit without sha256", &CommitCheckpoint{At: at, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: withSHA(cp(5), "")}, ErrInvalid, nil},

		// AddHolder
		{"add a holder", &AddHolder{At: at, ID: wRun, Seq: 4, Node: "n0"}, nil,
			func(s *State) { s.Workloads[wRun].Checkpoints[0].Holders = []string{"n0", "n1", "n2"} }},
		{"add a holder with matching sha256", &AddHolder{At: at, ID: wRun, Seq: 3, SHA256: "sha-3", Node: "n3"}, nil,
			func(s *State) { s.Workloads[wRun].Checkpoints[1].Holders = []string{"n1", "n3"} }},
		{"add a holder twice", &AddHolder{At: at, ID: wRun, Seq: 4, Node: "n2"}, nil, nil},
		{"add a holder of a trimmed checkpoint", &AddHolder{At: at, ID: wRun, Seq: 1, Node: "n2"}, nil, nil},
		{"add a holder of a replaced checkpoint", &AddHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-old", Node: "n3"}, ErrStale, nil},
		{"add a holder to an unknown workload", &AddHolder{At: at, ID: "x/y/z", Seq: 4, Node: "n3"}, ErrUnknownWorkload, nil},
		{"add a holder without node", &AddHolder{At: at, ID: wRun, Seq: 4}, ErrInvalid, nil},
		{"add a holder with matching sha256 and size", &AddHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-4", Size: 400, Node: "n3"}, nil,
			func(s *State) { s.Workloads[wRun].Checkpoints[0].Holders = []string{"n1", "n2", "n3"} }},
		{"add a holder whose copy has another size", &AddHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-4", Size: 401, Node: "n3"}, ErrStale, nil},
		{"add a holder whose copy has another sha256", &AddHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-planted", Size: 400, Node: "n3"}, ErrStale, nil},

		// DropHolder
		{"drop a holder", &DropHolder{At: at, ID: wRest, Seq: 7, SHA256: "sha-7", Node: "n2", Reason: "sha256 mismatch"}, nil,
			func(s *State) { s.Workloads[wRest].Checkpoints[0].Holders = []string{"n1", "n3"} }},
		{"drop the last holder", &DropHolder{At: at, ID: wFailed, Seq: 9, SHA256: "sha-9", Node: "n3"}, nil,
			func(s *State) { s.Workloads[wFailed].Checkpoints[0].Holders = []string{} }},
		{"drop a node that holds no copy", &DropHolder{At: at, ID: wRun, Seq: 3, SHA256: "sha-3", Node: "n2"}, nil, nil},
		{"drop a holder of a replaced checkpoint", &DropHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-old", Node: "n2"}, nil, nil},
		{"drop a holder of a trimmed checkpoint", &DropHolder{At: at, ID: wRun, Seq: 1, SHA256: "sha-1", Node: "n2"}, nil, nil},
		{"drop a holder of an unknown workload", &DropHolder{At: at, ID: "x/y/z", Seq: 4, SHA256: "sha-4", Node: "n2"}, ErrUnknownWorkload, nil},
		{"drop a holder without sha256", &DropHolder{At: at, ID: wRun, Seq: 4, Node: "n2"}, ErrInvalid, nil},
		{"drop a holder without node", &DropHolder{At: at, ID: wRun, Seq: 4, SHA256: "sha-4"}, ErrInvalid, nil},

		// Place
		{"place at epoch+1", &Place{At: at, ID: wRun, Owner: "n2", Epoch: 3, Seq: 4, Reason: "node n1 dead"}, nil,
			func(s *State) {
				w := s.Workloads[wRun]
				w.Owner, w.Epoch, w.Status, w.Seq, w.Reason, w.Since = "n2", 3, StatusRestoring, 4, "node n1 dead", at
			}},
		{"place keeps Tried", &Place{At: at, ID: wRestFail, Owner: "n3", Epoch: 4, Seq: 7, Reason: "r"}, nil,
			func(s *State) {
				w := s.Workloads[wRestFail]
				w.Owner, w.Epoch, w.Reason, w.Since = "n3", 4, "r", at
			}},
		{"place a failed workload", &Place{At: at, ID: wFailed, Owner: "n3", Epoch: 5, Seq: 9, Reason: "by hand"}, nil,
			func(s *State) {
				w := s.Workloads[wFailed]
				w.Owner, w.Epoch, w.Status, w.Seq, w.Reason, w.Since = "n3", 5, StatusRestoring, 9, "by hand", at
				// Tried and LastError kept, as before retries existed
			}},
		{"place at the same epoch", &Place{At: at, ID: wRun, Owner: "n2", Epoch: 2, Seq: 4}, ErrStale, nil},
		{"place two epochs ahead", &Place{At: at, ID: wRun, Owner: "n2", Epoch: 4, Seq: 4}, ErrStale, nil},
		{"place on an unknown node", &Place{At: at, ID: wRun, Owner: "n9", Epoch: 3, Seq: 4}, ErrUnknownNode, nil},
		{"place an unknown workload", &Place{At: at, ID: "x/y/z", Owner: "n2", Epoch: 1, Seq: 1}, ErrUnknownWorkload, nil},
		{"place without owner", &Place{At: at, ID: wRun, Epoch: 3, Seq: 4}, ErrInvalid, nil},

		// RestoreDone
		{"restore succeeded", &RestoreDone{At: at, ID: wRest, Node: "n2", Epoch: 5, Seq: 7, OK: true}, nil,
			func(s *State) {
				w := s.Workloads[wRest]
				w.Status, w.Since, w.Tried, w.LastError = StatusRunning, at, nil, ""
				w.RestoredFrom, w.RestoredAt = 7, at
			}},
		{"restore failed", &RestoreDone{At: at, ID: wRest, Node: "n2", Epoch: 5, Seq: 7, Error: "criu: exit 1"}, nil,
			func(s *State) {
				w := s.Workloads[wRest]
				w.Tried, w.LastError = append(w.Tried, Try{Node: "n2", Seq: 7, Error: "criu: exit 1"}), "criu: exit 1"
			}},
		{"restore failed without a message", &RestoreDone{At: at, ID: wRest, Node: "n2", Epoch: 5, Seq: 7}, nil,
			func(s *State) {
				w := s.Workloads[wRest]
				w.Tried, w.LastError = append(w.Tried, Try{Node: "n2", Seq: 7, Error: "restore failed"}), "restore failed"
			}},
		{"restore report from a non-owner", &RestoreDone{At: at, ID: wRest, Node: "n3", Epoch: 5, Seq: 7, OK: true}, ErrStale, nil},
		{"restore report of an old epoch", &RestoreDone{At: at, ID: wRest, Node: "n2", Epoch: 4, Seq: 7, OK: true}, ErrStale, nil},
		{"restore report of another checkpoint", &RestoreDone{At: at, ID: wRest, Node: "n2", Epoch: 5, Seq: 6, OK: true}, ErrStale, nil},
		{"success after the attempt was recorded failed", &RestoreDone{At: at, ID: wRestFail, Node: "n2", Epoch: 3, Seq: 7, OK: true}, ErrStale, nil},
		{"second failure of the same attempt", &RestoreDone{At: at, ID: wRestFail, Node: "n2", Epoch: 3, Seq: 7, Error: "again"}, ErrStale, nil},
		{"success reported again", &RestoreDone{At: at, ID: wRun, Node: "n1", Epoch: 2, Seq: 3, OK: true}, nil, nil},
		{"failure on a running workload", &RestoreDone{At: at, ID: wRun, Node: "n1", Epoch: 2, Seq: 3, Error: "late timeout"}, ErrStatus, nil},
		{"restore report on an app-failed workload", &RestoreDone{At: at, ID: wAppFailed, Node: "n1", Epoch: 1, OK: true}, ErrStatus, nil},

		// AppFailed
		{"application failed", &AppFailed{At: at, ID: wRun, Node: "n1", Epoch: 2, Reason: "exited 137"}, nil,
			func(s *State) {
				w := s.Workloads[wRun]
				w.Status, w.Reason, w.Since = StatusAppFailed, "exited 137", at
			}},
		{"application failed on a stale owner", &AppFailed{At: at, ID: wRun, Node: "n2", Epoch: 2}, ErrStale, nil},
		{"application failed at a stale epoch", &AppFailed{At: at, ID: wRun, Node: "n1", Epoch: 1}, ErrStale, nil},
		{"application failed while restoring", &AppFailed{At: at, ID: wRest, Node: "n2", Epoch: 5}, ErrStatus, nil},
		{"application failed twice", &AppFailed{At: at, ID: wAppFailed, Node: "n1", Epoch: 1}, ErrStatus, nil},

		// GiveUp
		{"give up", &GiveUp{At: at, ID: wRest, Epoch: 5, Reason: "attempts exhausted"}, nil,
			func(s *State) {
				w := s.Workloads[wRest]
				w.Status, w.Owner, w.LastError, w.Since = StatusFailed, "", "attempts exhausted", at
			}},
		{"give up at a stale epoch", &GiveUp{At: at, ID: wRest, Epoch: 4}, ErrStale, nil},
		{"give up an unknown workload", &GiveUp{At: at, ID: "x/y/z", Epoch: 1}, ErrUnknownWorkload, nil},

		// RemoveWorkload, UpsertNode, RemoveNode
		{"remove a workload", &RemoveWorkload{At: at, ID: wRun}, nil, func(s *State) { delete(s.Workloads, wRun) }},
		{"remove an unknown workload", &RemoveWorkload{At: at, ID: "x/y/z"}, nil, nil},
		{"remove without id", &RemoveWorkload{At: at}, ErrInvalid, nil},
		{"add a node", &UpsertNode{At: at, Name: "n4", RPCAddr: "a:1"}, nil,
			func(s *State) { s.Nodes["n4"] = &Node{Name: "n4", RPCAddr: "a:1", Joined: at} }},
		{"update a node keeps Joined", &UpsertNode{At: at, Name: "n1", RPCAddr: "b:2"}, nil,
			func(s *State) { s.Nodes["n1"].RPCAddr = "b:2" }},
		{"upsert without name", &UpsertNode{At: at, RPCAddr: "b:2"}, ErrInvalid, nil},
		{"remove a node drops it from holders", &RemoveNode{At: at, Name: "n3"}, nil,
			func(s *State) {
				delete(s.Nodes, "n3")
				s.Workloads[wRest].Checkpoints[0].Holders = []string{"n1", "n2"}
				s.Workloads[wRestFail].Checkpoints[0].Holders = []string{"n2"}
				s.Workloads[wAppFailed].Checkpoints[0].Holders = []string{"n1"}
				s.Workloads[wFailed].Checkpoints[0].Holders = []string{}
			}},
		{"remove an unknown node", &RemoveNode{At: at, Name: "n9"}, nil, nil},

		// RetryWorkload
		{"retry a failed workload", &RetryWorkload{At: at, ID: wFailed, Epoch: 5, Reason: "retry"}, nil,
			func(s *State) {
				w := s.Workloads[wFailed]
				w.Epoch, w.Status, w.Reason, w.Since, w.Tried, w.LastError = 5, StatusRetrying, "retry", at, nil, ""
			}},
		{"retry at the same epoch", &RetryWorkload{At: at, ID: wFailed, Epoch: 4}, ErrStale, nil},
		{"retry two epochs ahead", &RetryWorkload{At: at, ID: wFailed, Epoch: 6}, ErrStale, nil},
		{"retry a running workload", &RetryWorkload{At: at, ID: wRun, Epoch: 3}, ErrStatus, nil},
		{"retry an app-failed workload", &RetryWorkload{At: at, ID: wAppFailed, Epoch: 2}, ErrStatus, nil},
		{"retry an unknown workload", &RetryWorkload{At: at, ID: "x/y/z", Epoch: 1}, ErrUnknownWorkload, nil},
		{"retry without id", &RetryWorkload{At: at, Epoch: 1}, ErrInvalid, nil},

		// MarkCheckpointBad
		{"mark a checkpoint bad", &MarkCheckpointBad{At: at, ID: wRun, Seq: 4, SHA256: "sha-4", Why: "died at once"}, nil,
			func(s *State) { s.Workloads[wRun].Checkpoints[0].Bad = "died at once" }},
		{"mark a replaced checkpoint", &MarkCheckpointBad{At: at, ID: wRun, Seq: 4, SHA256: "sha-old", Why: "x"}, nil, nil},
		{"mark a trimmed checkpoint", &MarkCheckpointBad{At: at, ID: wRun, Seq: 1, SHA256: "sha-1", Why: "x"}, nil, nil},
		{"mark without why", &MarkCheckpointBad{At: at, ID: wRun, Seq: 4, SHA256: "sha-4"}, ErrInvalid, nil},
		{"mark without sha256", &MarkCheckpointBad{At: at, ID: wRun, Seq: 4, Why: "x"}, ErrInvalid, nil},
		{"mark of an unknown workload", &MarkCheckpointBad{At: at, ID: "x/y/z", Seq: 4, SHA256: "sha-4", Why: "x"}, ErrUnknownWorkload, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			want := fixture()
			if tc.edit != nil {
				tc.edit(want)
			}
			err := s.Apply(tc.cmd)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Apply: %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("Apply = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(s, want) {
				t.Errorf("state after Apply differs:\n got %s\nwant %s", dump(s), dump(want))
			}
			if err := s.Validate(); err != nil {
				t.Errorf("state invalid after Apply: %v", err)
			}
		})
	}
}

func withHolders(c Checkpoint, h ...string) Checkpoint { c.Holders = h; return c }
func withSHA(c Checkpoint, sha string) Checkpoint      { c.SHA256 = sha; return c }

func dump(s *State) string {
	var b strings.Builder
	for _, id := range sortedKeys(s.Workloads) {
		fmt.Fprintf(&b, "\n  %+v", *s.Workloads[id])
	}
	for _, n := range sortedKeys(s.Nodes) {
		fmt.Fprintf(&b, "\n  %+v", *s.Nodes[n])
	}
	return b.String()
}

func TestCommitCheckpointTrims(t *testing.T) {
	s := New()
	must(t, s, &RegisterWorkload{At: t0, ID: "a/b/c", Node: "n1"})
	for seq := uint64(1); seq <= 12; seq++ {
		must(t, s, &CommitCheckpoint{At: t0, ID: "a/b/c", Node: "n1", Epoch: 1, Checkpoint: cp(seq)})
		w := s.Workloads["a/b/c"]
		if want := min(int(seq), MaxCheckpoints); len(w.Checkpoints) != want {
			t.Fatalf("after #%d: %d checkpoints, want %d", seq, len(w.Checkpoints), want)
		}
		if w.Checkpoints[0].Seq != seq || w.Checkpoints[len(w.Checkpoints)-1].Seq != seq+1-uint64(len(w.Checkpoints)) {
			t.Fatalf("after #%d: checkpoints %v", seq, w.Checkpoints)
		}
	}
}

func TestApplyDoesNotAliasCommands(t *testing.T) {
	s := New()
	cfg := []byte(`{"a":1}`)
	must(t, s, &RegisterWorkload{At: t0, ID: "a/b/c", Node: "n1", Config: cfg})
	c := cp(1)
	commit := &CommitCheckpoint{At: t0, ID: "a/b/c", Node: "n1", Epoch: 1, Checkpoint: c}
	must(t, s, commit)
	cfg[0] = 'X'
	commit.Checkpoint.Holders = append(commit.Checkpoint.Holders, "zz")
	w := s.Workloads["a/b/c"]
	if string(w.Config) != `{"a":1}` || len(w.Checkpoints[0].Holders) != 1 {
		t.Errorf("state shares memory with commands: config %q, holders %v", w.Config, w.Checkpoints[0].Holders)
	}
}

// TestApplySequence follows one workload through a life of failovers.
func TestApplySequence(t *testing.T) {
	s := New()
	id := "shop/db-0/postgres"
	steps := []Command{
		&UpsertNode{At: t0, Name: "n1", RPCAddr: "10.0.0.1:7947"},
		&UpsertNode{At: t0, Name: "n2", RPCAddr: "10.0.0.2:7947"},
		&UpsertNode{At: t0, Name: "n3", RPCAddr: "10.0.0.3:7947"},
		&RegisterWorkload{At: t0, ID: id, Node: "n1", Interval: 10 * time.Second, Config: []byte(`{}`)},
		&CommitCheckpoint{At: t0, ID: id, Node: "n1", Epoch: 1, Checkpoint: cp(1)},
		&AddHolder{At: t0, ID: id, Seq: 1, Node: "n2"},
		&AddHolder{At: t0, ID: id, Seq: 1, Node: "n3"},
		&CommitCheckpoint{At: t0, ID: id, Node: "n1", Epoch: 1, Checkpoint: cp(2)}, // n1's newest, on n1 only
		// n1 dies; the leader places it on n2 from #1.
		&Place{At: t0.Add(time.Minute), ID: id, Owner: "n2", Epoch: 2, Seq: 1, Reason: "node n1 dead"},
		&RestoreDone{At: t0.Add(2 * time.Minute), ID: id, Node: "n2", Epoch: 2, Seq: 1, Error: "criu failed"},
		&Place{At: t0.Add(3 * time.Minute), ID: id, Owner: "n3", Epoch: 3, Seq: 1, Reason: "restore of #1 on n2 failed"},
		&RestoreDone{At: t0.Add(4 * time.Minute), ID: id, Node: "n3", Epoch: 3, Seq: 1, OK: true},
		// n3 numbers on from #1: its #2 replaces n1's #2.
		&CommitCheckpoint{At: t0.Add(5 * time.Minute), ID: id, Node: "n3", Epoch: 3, Checkpoint: withSHA(cp(2), "n3-2")},
		&AddHolder{At: t0.Add(5 * time.Minute), ID: id, Seq: 2, SHA256: "n3-2", Node: "n2"},
		&AppFailed{At: t0.Add(6 * time.Minute), ID: id, Node: "n3", Epoch: 3, Reason: "probe failed 3 times"},
		&Place{At: t0.Add(7 * time.Minute), ID: id, Owner: "n2", Epoch: 4, Seq: 2, Reason: "application failed on n3"},
		&RestoreDone{At: t0.Add(8 * time.Minute), ID: id, Node: "n2", Epoch: 4, Seq: 2, Error: "timed out"},
		&GiveUp{At: t0.Add(9 * time.Minute), ID: id, Epoch: 4, Reason: "attempts exhausted"},
		&RegisterWorkload{At: t0.Add(10 * time.Minute), ID: id, Node: "n1", CopyEpoch: 0, Interval: 10 * time.Second, Config: []byte(`{}`)},
	}
	for i, cmd := range steps {
		if err := s.Apply(cmd); err != nil {
			t.Fatalf("step %d (%T): %v", i, cmd, err)
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("step %d (%T): invalid state: %v", i, cmd, err)
		}
	}
	w := s.Workloads[id]
	want := &Workload{ID: id, Owner: "n1", Epoch: 5, Status: StatusRunning, Seq: 2,
		Reason: "registered by n1 after the cluster gave up", Since: t0.Add(10 * time.Minute),
		Interval: 10 * time.Second, Config: []byte(`{}`),
		Checkpoints: []Checkpoint{withSHA(cp(2, "n2", "n3"), "n3-2"), cp(1, "n1", "n2", "n3")},
	}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("final workload:\n got %+v\nwant %+v", *w, *want)
	}
	// The old owner n2 at epoch 4 is fenced out now.
	if err := s.Apply(&CommitCheckpoint{At: t0, ID: id, Node: "n2", Epoch: 4, Checkpoint: cp(3)}); !errors.Is(err, ErrStale) {
		t.Errorf("commit from the old owner = %v, want ErrStale", err)
	}
}

// TestApplyRandom applies random, mostly plausible commands: the state
// stays valid, epochs never go down, and a refused command changes
// nothing.
func TestApplyRandom(t *testing.T) {
	nodes := []string{"n1", "n2", "n3", "n4"}
	ids := []string{"a/a/a", "b/b/b", "c/c/c"}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		s := New()
		epochs := map[string]uint64{}
		pick := func(l []string) string { return l[rng.IntN(len(l))] }
		for i := range 400 {
			id, n := pick(ids), pick(nodes)
			var e, seq uint64
			if w := s.Workloads[id]; w != nil {
				e, seq = w.Epoch+uint64(rng.IntN(3))-1, w.Seq
				if rng.IntN(2) == 0 {
					n = w.Owner
				}
			}
			seq += uint64(rng.IntN(3))
			at := t0.Add(time.Duration(i) * time.Second)
			cmds := []Command{
				&RegisterWorkload{At: at, ID: id, Node: n, CopyEpoch: e},
				&CommitCheckpoint{At: at, ID: id, Node: n, Epoch: e, Checkpoint: withSHA(cp(seq+1), pick([]string{"x", "y"}))},
				&AddHolder{At: at, ID: id, Seq: seq, Node: pick(nodes)},
				&DropHolder{At: at, ID: id, Seq: seq, SHA256: pick([]string{"x", "y"}), Node: pick(nodes)},
				&Place{At: at, ID: id, Owner: n, Epoch: e, Seq: max(seq, 1)},
				&RestoreDone{At: at, ID: id, Node: n, Epoch: e, Seq: seq, OK: rng.IntN(2) == 0},
				&AppFailed{At: at, ID: id, Node: n, Epoch: e},
				&GiveUp{At: at, ID: id, Epoch: e},
				&UpsertNode{At: at, Name: pick(nodes)},
				&RemoveNode{At: at, Name: pick(nodes)},
				&NodeCapabilities{At: at, Node: pick(nodes), Caps: capability.Node{Restore: capability.RestoreCreate,
					CPUFlags: []string{pick([]string{"avx", "sse"}), pick([]string{"avx", "avx512f"})}}},
				&Unplaceable{At: at, ID: id, Epoch: e, Reason: "no node can restore it"},
			}
			if rng.IntN(50) == 0 {
				cmds = append(cmds, &RemoveWorkload{At: at, ID: id})
			}
			cmd := cmds[rng.IntN(len(cmds))]
			before := s.Clone()
			if err := s.Apply(cmd); err != nil {
				if !reflect.DeepEqual(s, before) {
					t.Fatalf("seed %d step %d: refused %T (%v) changed the state", seed, i, cmd, err)
				}
				continue
			}
			if err := s.Validate(); err != nil {
				t.Fatalf("seed %d step %d: %T %+v left an invalid state: %v", seed, i, cmd, cmd, err)
			}
			for wid, w := range s.Workloads {
				if w.Epoch < epochs[wid] {
					t.Fatalf("seed %d step %d: %T lowered the epoch of %s from %d to %d", seed, i, cmd, wid, epochs[wid], w.Epoch)
				}
				epochs[wid] = w.Epoch
			}
			if _, ok := cmd.(*RemoveWorkload); ok {
				delete(epochs, id)
			}
		}
	}
}

func TestClone(t *testing.T) {
	s := fixture()
	c := s.Clone()
	if !reflect.DeepEqual(s, c) {
		t.Fatal("clone differs")
	}
	// Change everything reachable in the clone; the original must not move.
	for _, w := range c.Workloads {
		w.Owner = "zz"
		if len(w.Config) > 0 {
			w.Config[0] = 'X'
		}
		for i := range w.Checkpoints {
			for j := range w.Checkpoints[i].Holders {
				w.Checkpoints[i].Holders[j] = "zz"
			}
		}
		for i := range w.Tried {
			w.Tried[i].Node = "zz"
		}
	}
	for _, n := range c.Nodes {
		n.RPCAddr = "zz"
	}
	c.Workloads["new"] = &Workload{}
	if !reflect.DeepEqual(s, fixture()) {
		t.Error("changing the clone changed the original")
	}
}

func TestValidate(t *testing.T) {
	if err := fixture().Validate(); err != nil {
		t.Fatalf("fixture invalid: %v", err)
	}
	for _, tc := range []struct {
		name    string
		corrupt func(s *State)
		want    string
	}{
		{"key mismatch", func(s *State) { s.Workloads["other"] = s.Workloads[wRun] }, "named differently"},
		{"node key mismatch", func(s *State) { s.Nodes["n1"].Name = "x" }, "named differently"},
		{"unknown status", func(s *State) { s.Workloads[wRun].Status = "weird" }, "unknown status"},
		{"running without owner", func(s *State) { s.Workloads[wRun].Owner = "" }, "without an owner"},
		{"failed with owner", func(s *State) { s.Workloads[wFailed].Owner = "n1" }, "failed with owner"},
		{"epoch 0", func(s *State) { s.Workloads[wRun].Epoch = 0 }, "epoch 0"},
		{"checkpoints out of order", func(s *State) {
			w := s.Workloads[wRun]
			w.Checkpoints[0], w.Checkpoints[1] = w.Checkpoints[1], w.Checkpoints[0]
		}, "newest first"},
		{"too many checkpoints", func(s *State) {
			s.Workloads[wRun].Checkpoints = []Checkpoint{cp(9), cp(8), cp(7), cp(6), cp(5), cp(4)}
		}, "more than"},
		{"unsorted holders", func(s *State) { s.Workloads[wRun].Checkpoints[0].Holders = []string{"n2", "n1"} }, "not sorted"},
		{"duplicate holders", func(s *State) { s.Workloads[wRun].Checkpoints[0].Holders = []string{"n1", "n1"} }, "not sorted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			tc.corrupt(s)
			if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func must(t *testing.T, s *State, cmd Command) {
	t.Helper()
	if err := s.Apply(cmd); err != nil {
		t.Fatalf("Apply(%T): %v", cmd, err)
	}
}

func TestHugeNumbersAreRefused(t *testing.T) {
	s := New()
	at := time.Unix(1000, 0)
	for _, c := range []Command{
		&UpsertNode{At: at, Name: "n1", RPCAddr: "a"},
		&RegisterWorkload{At: at, ID: "ns/p/c", Node: "n1", Interval: time.Second},
	} {
		if err := s.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []Command{
		&RegisterWorkload{At: at, ID: "ns/q/c", Node: "n1", CopyEpoch: math.MaxUint64},
		&CommitCheckpoint{At: at, ID: "ns/p/c", Node: "n1", Epoch: 1, Checkpoint: Checkpoint{Seq: math.MaxUint64, SHA256: "x", Size: 1}},
		&Place{At: at, ID: "ns/p/c", Owner: "n1", Epoch: math.MaxUint64, Seq: 1},
	} {
		before := s.Clone()
		if err := s.Apply(c); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%T with a huge number: %v, want ErrInvalid", c, err)
		}
		if !reflect.DeepEqual(before, s) {
			t.Fatalf("%T changed the state", c)
		}
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}
