package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Migrate moves a workload to node to: on the owner, it checkpoints it now,
// sends the archive to the target, stops the local copy and commits the
// new placement; the target's controller restores it. Called anywhere, it
// is forwarded to the owner. It returns the checkpoint used and the time
// from stopping the source to the target reporting it running.
func (c *Cluster) Migrate(ctx context.Context, workload, to string) (uint64, time.Duration, error) {
	w, ok := c.fsm.workload(workload)
	if !ok {
		return 0, 0, fmt.Errorf("no workload %q in the cluster", workload)
	}
	if w.Owner == to {
		return 0, 0, fmt.Errorf("%s already runs on %s", workload, to)
	}
	if !c.isAlive(to) {
		return 0, 0, fmt.Errorf("target node %s is not an alive member", to)
	}
	if w.Owner != c.o.Node {
		cl, err := c.client(w.Owner)
		if err != nil {
			return 0, 0, fmt.Errorf("reach owner %s: %w", w.Owner, err)
		}
		return cl.Migrate(ctx, workload, to)
	}
	if w.Status != state.StatusRunning {
		return 0, 0, fmt.Errorf("%s is %s, not running", workload, w.Status)
	}
	id, err := store.ParseWorkload(workload)
	if err != nil {
		return 0, 0, err
	}
	log := c.log.With("workload", workload, "to", to)
	e, err := c.local.CheckpointNow(ctx, id)
	if err != nil {
		return 0, 0, fmt.Errorf("checkpoint for the migration: %w", err)
	}
	cl, err := c.client(to)
	if err != nil {
		return 0, 0, err
	}
	if err := cl.Push(ctx, e, nil); err != nil {
		return 0, 0, fmt.Errorf("send checkpoint #%d to %s: %w", e.Seq, to, err)
	}
	cp := state.Checkpoint{Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Created: e.Created, Holders: []string{c.o.Node, to}}
	if err := c.apply(ctx, &state.CommitCheckpoint{At: time.Now(), ID: workload, Node: c.o.Node, Epoch: w.Epoch, Checkpoint: cp}); err != nil {
		return 0, 0, fmt.Errorf("record checkpoint #%d: %w", e.Seq, err)
	}
	if err := c.apply(ctx, &state.AddHolder{At: time.Now(), ID: workload, Seq: e.Seq, Node: to}); err != nil {
		return 0, 0, fmt.Errorf("record the copy on %s: %w", to, err)
	}
	stopped := time.Now()
	if err := c.local.Stop(ctx, id); err != nil {
		return 0, 0, fmt.Errorf("stop the local copy: %w", err)
	}
	epoch := w.Epoch + 1
	if err := c.apply(ctx, &state.Place{At: time.Now(), ID: workload, Owner: to, Epoch: epoch, Seq: e.Seq, Reason: "migrate from " + c.o.Node}); err != nil {
		// The copy is stopped: hand the workload to the leader, which places
		// it on a holder (this node among them).
		_ = c.apply(ctx, &state.AppFailed{At: time.Now(), ID: workload, Node: c.o.Node, Epoch: w.Epoch, Reason: "migration failed: " + err.Error()})
		return e.Seq, 0, fmt.Errorf("commit the new placement: %w", err)
	}
	log.Info("migration placed; waiting for the target", "seq", e.Seq, "epoch", epoch)
	deadline := time.After(2 * time.Minute)
	for {
		nw, _ := c.fsm.workload(workload)
		switch {
		case nw.Epoch > epoch || (nw.Epoch == epoch && nw.Status == state.StatusRunning):
			d := time.Since(stopped)
			log.Info("migrated", "seq", e.Seq, "downtime_ms", d.Milliseconds(), "now_on", nw.Owner)
			return e.Seq, d, nil
		case nw.Status == state.StatusFailed:
			return e.Seq, 0, errors.New("the cluster gave up on the workload: " + nw.LastError)
		}
		select {
		case <-ctx.Done():
			return e.Seq, 0, ctx.Err()
		case <-deadline:
			return e.Seq, 0, errors.New("the target did not report the workload running within 2 minutes")
		case <-c.fsm.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) isAlive(node string) bool {
	for _, n := range c.aliveNodes() {
		if n == node {
			return true
		}
	}
	return false
}
