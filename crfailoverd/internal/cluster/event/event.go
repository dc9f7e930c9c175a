// Package event is what the cluster's parts did, for metrics and for the
// `crfailoverd events` log: a typed kind and the fields each kind fills,
// and a bounded ring that keeps the recent ones and passes each on.
package event

import (
	"sync"
	"time"
)

// Kind of event.
type Kind string

// Kinds.
const (
	Placed          Kind = "placed"           // the leader placed a workload on a node (From -> To, Epoch, Seq, Reason)
	Restored        Kind = "restored"         // a node restored a placed workload (Node, Seq, Epoch, Took)
	RestoreFailed   Kind = "restore-failed"   // a node could not restore a placed workload (Err)
	Replicated      Kind = "replicated"       // a checkpoint reached a peer (To, Seq, Took, Bytes)
	ReplicateFailed Kind = "replicate-failed" // a checkpoint could not be sent to a peer (To, Err)
	NodeDead        Kind = "node-dead"        // the leader saw a member die (Node, At = when it died, Reason = status)
)

// Event is something the cluster did.
type Event struct {
	Kind     Kind
	Workload string
	Node     string
	From, To string
	Seq      uint64
	Epoch    uint64
	Reason   string
	Took     time.Duration
	Bytes    int64
	Err      string
	At       time.Time
}

// Sink receives events; it must not block.
type Sink func(Event)

// Ring keeps the last Size events and passes every event to Next.
type Ring struct {
	Size int  // 0: 200
	Next Sink // nil: none

	mu   sync.Mutex
	last []Event
}

// Emit stamps e (when At is zero), keeps it and passes it on.
func (r *Ring) Emit(e Event) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	size := r.Size
	if size <= 0 {
		size = 200
	}
	r.mu.Lock()
	r.last = append(r.last, e)
	if len(r.last) > size {
		r.last = append([]Event(nil), r.last[len(r.last)-size:]...)
	}
	r.mu.Unlock()
	if r.Next != nil {
		r.Next(e)
	}
}

// Recent returns the kept events, oldest first.
func (r *Ring) Recent() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.last...)
}
