// Package replicated is the cluster's replicated state as a running node
// holds it: the raft.FSM over package state, the lock that guards it, and
// a change signal that wakes every reader after each applied command or
// restored snapshot.
//
// A committed log entry this node cannot decode (a command type it does
// not know, without state.IgnoreUnknownFlag, or a corrupt payload) stops
// the apply loudly, as Consul and Nomad do: applying on while skipping it
// would let this node's state diverge from the others'. The FSM calls its
// fatal hook (Options.Fatal; by default it panics) and applies nothing
// after that.
package replicated

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/notify"
)

// FSM is the raft.FSM over the cluster state. Apply returns the command's
// error (nil when applied) as the log entry's response; an entry it
// cannot decode is fatal (see the package doc).
type FSM struct {
	mu      sync.RWMutex
	s       *state.State
	changed notify.Signal
	fatal   func(error)
	broken  error // the fatal error; nothing is applied after it
}

// Options configure an FSM.
type Options struct {
	// Fatal is called, with an *ApplyError, when a committed log entry
	// cannot be decoded: its command type is unknown to this version and
	// lacks state.IgnoreUnknownFlag, or its payload is corrupt. It should
	// stop the process (log, then exit); nil: panic with the error. It is
	// called from Raft's apply goroutine, once: if it returns, Apply
	// returns the error as the entry's response, and every later Apply
	// and Restore refuses with it, leaving the state as it was.
	Fatal func(error)
}

// New returns an FSM over an empty state that panics on an entry it
// cannot decode.
func New() *FSM { return NewWithOptions(Options{}) }

// NewWithOptions returns an FSM over an empty state.
func NewWithOptions(o Options) *FSM {
	f := &FSM{s: state.New(), fatal: o.Fatal}
	if f.fatal == nil {
		f.fatal = func(err error) { panic(err) }
	}
	return f
}

// ApplyError is the fatal error of a log entry this node cannot apply.
type ApplyError struct {
	Index uint64            // the Raft log index
	Type  state.CommandType // the entry's type byte (0 for an empty entry)
	Err   error             // from state.Decode; wraps state.ErrUnknownCommand for an unknown type
}

func (e *ApplyError) Error() string {
	if errors.Is(e.Err, state.ErrUnknownCommand) {
		return fmt.Sprintf("raft log entry %d has command type %d, which this version of crfailoverd does not know "+
			"(and may not skip): upgrade this node before it applies the log; it stopped applying so that its state does not diverge: %v",
			e.Index, uint8(e.Type), e.Err)
	}
	return fmt.Sprintf("raft log entry %d (command type %d, %s) cannot be decoded: the entry is corrupt or from an incompatible version "+
		"(upgrade this node if the others run a newer one); it stopped applying so that its state does not diverge: %v",
		e.Index, uint8(e.Type), e.Type, e.Err)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// Apply decodes and applies one Raft log entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if err := f.brokenErr(); err != nil {
		return err
	}
	cmd, err := state.Decode(l.Data)
	if err != nil {
		var t state.CommandType
		if len(l.Data) > 0 {
			t = state.CommandType(l.Data[0])
		}
		aerr := &ApplyError{Index: l.Index, Type: t, Err: err}
		f.mu.Lock()
		f.broken = aerr
		f.mu.Unlock()
		f.fatal(aerr)
		return aerr
	}
	f.mu.Lock()
	err = f.s.Apply(cmd)
	f.mu.Unlock()
	f.changed.Signal()
	return err
}

func (f *FSM) brokenErr() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.broken
}

// Changed returns a channel closed after the next applied command or
// restored snapshot; every reader that took it is woken.
func (f *FSM) Changed() <-chan struct{} { return f.changed.Wait() }

// State returns a copy of the state to read without the lock.
func (f *FSM) State() *state.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.Clone()
}

// Read runs fn on the state under the read lock, without copying it; fn
// must not change the state nor keep it.
func (f *FSM) Read(fn func(*state.State) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return fn(f.s)
}

// Workload returns a copy of one workload's record.
func (f *FSM) Workload(id string) (state.Workload, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.s.Workloads[id]
	if !ok {
		return state.Workload{}, false
	}
	return *w.Clone(), true
}

// Node returns a copy of one node's record.
func (f *FSM) Node(name string) (state.Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.s.Nodes[name]
	if !ok {
		return state.Node{}, false
	}
	return *n, true
}

// Snapshot is raft's point-in-time copy for a snapshot.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{s: f.State()}, nil
}

// Restore swaps in the state of a snapshot (not after a fatal entry).
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	if err := f.brokenErr(); err != nil {
		return fmt.Errorf("restore cluster state from snapshot: %w", err)
	}
	s, err := state.ReadSnapshot(r)
	if err != nil {
		return fmt.Errorf("restore cluster state from snapshot: %w", err)
	}
	f.mu.Lock()
	f.s = s
	f.mu.Unlock()
	f.changed.Signal()
	return nil
}

type fsmSnapshot struct{ s *state.State }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.s.WriteSnapshot(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("write cluster state snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
