package replicated

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// sink is an in-memory raft.SnapshotSink.
type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }

func logOf(t *testing.T, i uint64, cmd state.Command) *raft.Log {
	t.Helper()
	b, err := state.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: i, Type: raft.LogCommand, Data: b}
}

func TestFSMApplySnapshotRestore(t *testing.T) {
	at := time.Unix(1000, 0).UTC()
	f := New()
	cmds := []state.Command{
		&state.UpsertNode{At: at, Name: "n1", RPCAddr: "10.0.0.1:7947"},
		&state.UpsertNode{At: at, Name: "n2", RPCAddr: "10.0.0.2:7947"},
		&state.RegisterWorkload{At: at, ID: "ns/web/app", Node: "n1", Interval: time.Second, Config: []byte(`{"sandbox":{}}`)},
		&state.CommitCheckpoint{At: at, ID: "ns/web/app", Node: "n1", Epoch: 1,
			Checkpoint: state.Checkpoint{Seq: 1, SHA256: "aa", Size: 10, Created: at, Holders: []string{"n1"}}},
		&state.AddHolder{At: at, ID: "ns/web/app", Seq: 1, Node: "n2"},
	}
	changed := f.Changed()
	for i, c := range cmds {
		if resp := f.Apply(logOf(t, uint64(i+1), c)); resp != nil {
			t.Fatalf("apply %T: %v", c, resp)
		}
	}
	// A stale command is refused: its error is the log entry's response.
	resp := f.Apply(logOf(t, 9, &state.CommitCheckpoint{At: at, ID: "ns/web/app", Node: "n2", Epoch: 1,
		Checkpoint: state.Checkpoint{Seq: 2, SHA256: "bb", Size: 10, Created: at}}))
	if err, ok := resp.(error); !ok || !errors.Is(err, state.ErrStale) {
		t.Fatalf("checkpoint from a node that does not own the workload: response %v, want ErrStale", resp)
	}
	select {
	case <-changed:
	default:
		t.Fatal("apply did not signal a change")
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sk sink
	if err := snap.Persist(&sk); err != nil || sk.cancelled {
		t.Fatalf("persist: %v (cancelled %t)", err, sk.cancelled)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sk.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.State(), g.State()) {
		t.Fatalf("restored state differs:\n%+v\n%+v", f.State(), g.State())
	}
	w, ok := g.Workload("ns/web/app")
	if !ok || w.Owner != "n1" || w.Epoch != 1 || len(w.Checkpoints) != 1 || !reflect.DeepEqual(w.Checkpoints[0].Holders, []string{"n1", "n2"}) {
		t.Fatalf("restored workload %+v", w)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader(sk.Bytes()[:len(sk.Bytes())/2]))); err == nil {
		t.Fatal("a truncated snapshot was accepted")
	}
}
