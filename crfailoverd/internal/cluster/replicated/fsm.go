// Package replicated is the cluster's replicated state as a running node
// holds it: the raft.FSM over package state, the lock that guards it, and
// a change signal that wakes every reader after each applied command or
// restored snapshot.
package replicated

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/notify"
)

// FSM is the raft.FSM over the cluster state. Apply returns the command's
// error (nil when applied) as the log entry's response.
type FSM struct {
	mu      sync.RWMutex
	s       *state.State
	changed notify.Signal
}

// New returns an FSM over an empty state.
func New() *FSM { return &FSM{s: state.New()} }

// Apply decodes and applies one Raft log entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := state.Decode(l.Data)
	if err != nil {
		return fmt.Errorf("decode raft log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	err = f.s.Apply(cmd)
	f.mu.Unlock()
	f.changed.Signal()
	return err
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

// Restore swaps in the state of a snapshot.
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
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
