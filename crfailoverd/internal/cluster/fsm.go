package cluster

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// fsm is the raft.FSM over the cluster state. Apply returns the command's
// error (nil when applied) as the log entry's response.
type fsm struct {
	mu      sync.RWMutex
	s       *state.State
	changed chan struct{} // signalled after every apply or restore
}

func newFSM() *fsm { return &fsm{s: state.New(), changed: make(chan struct{}, 1)} }

func (f *fsm) Apply(l *raft.Log) any {
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
	f.signal()
	return err
}

func (f *fsm) signal() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// clone returns a copy of the state to read without the lock.
func (f *fsm) clone() *state.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.Clone()
}

func (f *fsm) workload(id string) (state.Workload, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.s.Workloads[id]
	if !ok {
		return state.Workload{}, false
	}
	return *w, true
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{s: f.clone()}, nil
}

// Restore swaps in the state of a snapshot.
func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	s, err := state.ReadSnapshot(r)
	if err != nil {
		return fmt.Errorf("restore cluster state from snapshot: %w", err)
	}
	f.mu.Lock()
	f.s = s
	f.mu.Unlock()
	f.signal()
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
