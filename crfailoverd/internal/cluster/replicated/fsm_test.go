package replicated

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
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

// fsmWithState returns an FSM that has applied a node and a workload, and
// that state.
func fsmWithState(t *testing.T, o Options) (*FSM, *state.State) {
	t.Helper()
	at := time.Unix(1000, 0).UTC()
	f := NewWithOptions(o)
	for i, c := range []state.Command{
		&state.UpsertNode{At: at, Name: "n1", RPCAddr: "10.0.0.1:7947"},
		&state.RegisterWorkload{At: at, ID: "ns/web/app", Node: "n1", Interval: time.Second, Config: []byte(`{}`)},
	} {
		if resp := f.Apply(logOf(t, uint64(i+1), c)); resp != nil {
			t.Fatalf("apply %T: %v", c, resp)
		}
	}
	return f, f.State()
}

// TestFSMUndecodableEntryIsFatal: an entry of a command type this version
// does not know (without the skip flag), or with a corrupt payload, calls
// the fatal hook with an *ApplyError naming the index and the type byte;
// the state is unchanged, and nothing is applied after it.
func TestFSMUndecodableEntryIsFatal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    []byte
		typ     state.CommandType
		unknown bool
		want    []string
	}{
		{"unknown type", append([]byte{77}, `{"id":"ns/web/app"}`...), 77, true,
			[]string{"raft log entry 3 ", "command type 77", "upgrade this node"}},
		{"corrupt payload of a known type", append([]byte{byte(state.TypePlace)}, `{"id":`...), state.TypePlace, false,
			[]string{"raft log entry 3 ", "command type 4", "cannot be decoded", "upgrade this node"}},
		{"empty entry", nil, 0, false, []string{"raft log entry 3 ", "cannot be decoded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []error
			f, before := fsmWithState(t, Options{Fatal: func(err error) { got = append(got, err) }})
			changed := f.Changed()
			resp := f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: tc.data})
			if len(got) != 1 {
				t.Fatalf("fatal hook called %d times, want once", len(got))
			}
			var ae *ApplyError
			if !errors.As(got[0], &ae) || ae.Index != 3 || ae.Type != tc.typ {
				t.Fatalf("fatal error %#v, want an *ApplyError of entry 3, type %d", got[0], tc.typ)
			}
			if errors.Is(ae, state.ErrUnknownCommand) != tc.unknown {
				t.Errorf("errors.Is(%v, ErrUnknownCommand) = %t, want %t", ae, !tc.unknown, tc.unknown)
			}
			for _, w := range tc.want {
				if !strings.Contains(ae.Error(), w) {
					t.Errorf("message %q lacks %q", ae.Error(), w)
				}
			}
			if err, ok := resp.(error); !ok || err != got[0] {
				t.Errorf("response %v, want the fatal error", resp)
			}
			if !reflect.DeepEqual(f.State(), before) {
				t.Error("the state changed")
			}
			select {
			case <-changed:
				t.Error("a change was signalled")
			default:
			}
			// Nothing is applied after it, and the hook is not called again.
			later := &state.UpsertNode{At: time.Unix(2000, 0).UTC(), Name: "n2", RPCAddr: "10.0.0.2:7947"}
			if resp := f.Apply(logOf(t, 4, later)); resp != got[0] {
				t.Errorf("the next entry's response %v, want the fatal error", resp)
			}
			snap, err := f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			var sk sink
			if err := snap.Persist(&sk); err != nil {
				t.Fatal(err)
			}
			if err := f.Restore(io.NopCloser(bytes.NewReader(sk.Bytes()))); !errors.Is(err, got[0]) {
				t.Errorf("restore after the fatal entry: %v, want the fatal error", err)
			}
			if len(got) != 1 || !reflect.DeepEqual(f.State(), before) {
				t.Errorf("after the fatal entry: hook called %d times, state changed %t", len(got), !reflect.DeepEqual(f.State(), before))
			}
		})
	}
}

// TestFSMUnknownTypePanicsByDefault: without a hook, New's FSM panics
// with a message naming the index, the type byte and what to do.
func TestFSMUnknownTypePanicsByDefault(t *testing.T) {
	f, before := fsmWithState(t, Options{})
	g := New()
	for _, fsm := range []*FSM{f, g} {
		want := fsm.State()
		func() {
			defer func() {
				r := recover()
				err, ok := r.(*ApplyError)
				if !ok {
					t.Fatalf("recovered %#v, want an *ApplyError", r)
				}
				msg := fmt.Sprint(r)
				for _, w := range []string{"raft log entry 12 ", "command type 99", "upgrade this node"} {
					if !strings.Contains(msg, w) {
						t.Errorf("panic message %q lacks %q", msg, w)
					}
				}
				if !errors.Is(err, state.ErrUnknownCommand) {
					t.Errorf("%v does not wrap ErrUnknownCommand", err)
				}
			}()
			fsm.Apply(&raft.Log{Index: 12, Type: raft.LogCommand, Data: []byte{99, '{', '}'}})
			t.Fatal("no panic")
		}()
		if !reflect.DeepEqual(fsm.State(), want) {
			t.Error("the state changed")
		}
	}
	if !reflect.DeepEqual(f.State(), before) {
		t.Error("the state changed")
	}
}

// TestFSMSkipsUnknownTypeWithFlag: an unknown type with the
// IgnoreUnknownFlag is skipped: no hook, no error, the state unchanged,
// and later entries apply.
func TestFSMSkipsUnknownTypeWithFlag(t *testing.T) {
	called := false
	f, before := fsmWithState(t, Options{Fatal: func(error) { called = true }})
	typ := state.IgnoreUnknownFlag | 77
	if resp := f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: append([]byte{byte(typ)}, `{"advice":1}`...)}); resp != nil {
		t.Fatalf("response %v, want nil", resp)
	}
	if called {
		t.Fatal("fatal hook called for a skippable entry")
	}
	if !reflect.DeepEqual(f.State(), before) {
		t.Fatal("a skipped entry changed the state")
	}
	if resp := f.Apply(logOf(t, 4, &state.UpsertNode{At: time.Unix(2000, 0).UTC(), Name: "n2", RPCAddr: "10.0.0.2:7947"})); resp != nil {
		t.Fatalf("the next entry: %v", resp)
	}
	if _, ok := f.Node("n2"); !ok {
		t.Fatal("the next entry was not applied")
	}
}

// TestFSMNonCommandEntries: entries other than commands are no-ops.
func TestFSMNonCommandEntries(t *testing.T) {
	f, before := fsmWithState(t, Options{Fatal: func(err error) { t.Fatalf("fatal: %v", err) }})
	if resp := f.Apply(&raft.Log{Index: 3, Type: raft.LogNoop, Data: []byte{77}}); resp != nil || !reflect.DeepEqual(f.State(), before) {
		t.Fatalf("noop entry: response %v", resp)
	}
}
