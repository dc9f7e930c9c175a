package metrics

import (
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
)

// ClusterEvent records an event of the cluster; it fits
// cluster.Options.OnEvent. Placements and restores update the failover of
// the workload at the event's epoch (see [FailoverID]), so the leader's
// decision and the new owner's restore fill in the same row:
//
//   - placed: a failover decided (detected when the previous owner was
//     reported dead by a node-dead event of this recorder);
//   - restored, restore-failed: the failover's outcome (the restore
//     attempts themselves are recorded by the agent, which makes them,
//     through Restore); a failed one is also an event in the ring, since
//     it may have failed before reaching the runtime (a fetch, say);
//   - replicated, replicate-failed: a transfer from e.Node to e.To;
//   - node-dead, and any other kind: an event in the ring only.
func (r *Recorder) ClusterEvent(e event.Event) {
	if r == nil {
		return
	}
	at := e.At
	if at.IsZero() {
		at = time.Now()
	}
	switch e.Kind {
	case event.Placed:
		rec := FailoverRecord{ID: FailoverID(e.Workload, e.Epoch), Workload: e.Workload, Reason: e.Reason,
			From: e.From, To: e.To, Epoch: e.Epoch, Decided: at}
		if e.From != "" {
			r.mu.Lock()
			if t, ok := r.deadAt[e.From]; ok && !t.After(at) {
				rec.Detected = t
			}
			r.mu.Unlock()
		}
		r.Failover(rec)
	case event.Restored, event.RestoreFailed:
		ok := e.Kind == event.Restored
		node := e.Node
		if node == "" {
			node = e.To
		}
		if !ok {
			r.clusterEventInRing(e, at)
		}
		if e.Epoch > 0 {
			rec := FailoverRecord{ID: FailoverID(e.Workload, e.Epoch), Workload: e.Workload, To: node, Epoch: e.Epoch}
			if ok {
				rec.Restored = at
			} else {
				rec.Error = "restore on " + node + " failed: " + e.Err
			}
			r.Failover(rec)
		}
	case event.Replicated, event.ReplicateFailed:
		r.Transfer(TransferRecord{Workload: e.Workload, From: e.Node, To: e.To, Seq: e.Seq, Start: at.Add(-e.Took),
			Duration: e.Took, Bytes: e.Bytes, OK: e.Kind == event.Replicated, Error: e.Err})
	default:
		if e.Kind == event.NodeDead && e.Node != "" {
			r.mu.Lock()
			if len(r.deadAt) >= 1024 { // a bound; nodes are few
				clear(r.deadAt)
			}
			r.deadAt[e.Node] = at
			r.mu.Unlock()
		}
		r.clusterEventInRing(e, at)
	}
}

// clusterEventInRing adds e to the event ring as it is.
func (r *Recorder) clusterEventInRing(e event.Event, at time.Time) {
	f := map[string]string{}
	for k, v := range map[string]string{"node": e.Node, "from": e.From, "to": e.To, "reason": e.Reason, "error": e.Err} {
		if v != "" {
			f[k] = v
		}
	}
	msg := string(e.Kind)
	switch {
	case e.Kind == event.NodeDead:
		msg = "node " + e.Node + " is dead"
	case e.Workload != "":
		msg += " " + e.Workload
	}
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	if e.Err != "" {
		msg += ": " + e.Err
	}
	r.ev.add(Event{Time: at, Kind: string(e.Kind), Workload: e.Workload, Message: msg, Fields: f})
}
