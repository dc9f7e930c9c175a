package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// MigrateTimeout bounds the wait for the target to report the workload
// running.
const MigrateTimeout = 2 * time.Minute

// Migrate moves a workload this node owns to node to: it checkpoints it
// now, records the checkpoint, sends it to the target, records the copy
// there, stops the local copy
// and commits the new placement; the target's controller restores it. It
// returns the checkpoint used and the time from stopping the local copy to
// the target reporting it running. (The cluster forwards a migration asked
// elsewhere to the owner.)
func (c *Controller) Migrate(ctx context.Context, workload, to string) (uint64, time.Duration, error) {
	w, ok := c.o.State.Workload(workload)
	switch {
	case !ok:
		return 0, 0, fmt.Errorf("no workload %q in the cluster", workload)
	case w.Status == state.StatusFailed:
		return 0, 0, fmt.Errorf("%s was given up by the cluster (%s); start it again by hand first", workload, w.LastError)
	case w.Owner == to:
		return 0, 0, fmt.Errorf("%s already runs on %s", workload, to)
	case w.Owner != c.o.Node:
		return 0, 0, fmt.Errorf("%s is owned by %s, not by this node (%s)", workload, w.Owner, c.o.Node)
	case !c.o.Members.Alive()[to]:
		return 0, 0, fmt.Errorf("target node %s is not an alive member", to)
	case w.Status != state.StatusRunning:
		return 0, 0, fmt.Errorf("%s is %s, not running", workload, w.Status)
	}
	if f, why := c.Fenced(); f {
		return 0, 0, fmt.Errorf("this node is fenced (%s)", why)
	}
	// The checkpoint taken below needs what this node's runtime and CPU
	// give it: the target must be able to restore it.
	probe := c.withNeeds(state.Checkpoint{})
	if ok, why := c.o.State.State().CanRestore(to, &probe); !ok {
		return 0, 0, fmt.Errorf("target node %s cannot restore %s's checkpoints: %s", to, workload, why)
	}
	id, err := store.ParseWorkload(workload)
	if err != nil {
		return 0, 0, err
	}
	log := c.log.With("workload", workload, "to", to)
	e, err := c.o.Local.CheckpointNow(ctx, id)
	if err != nil {
		return 0, 0, fmt.Errorf("checkpoint for the migration: %w", err)
	}
	// Recorded before it is sent: a peer accepts only checkpoints the
	// cluster state records for the pushing owner.
	cp := c.withNeeds(state.Checkpoint{Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Created: e.Created, Holders: []string{c.o.Node}})
	if err := c.o.Proposer.Apply(ctx, &state.CommitCheckpoint{At: time.Now(), ID: workload, Node: c.o.Node, Epoch: w.Epoch, Checkpoint: cp}); err != nil {
		return 0, 0, fmt.Errorf("record checkpoint #%d: %w", e.Seq, err)
	}
	if err := c.o.Replication.Push(ctx, to, e); err != nil {
		return 0, 0, err
	}
	if err := c.o.Proposer.Apply(ctx, &state.AddHolder{At: time.Now(), ID: workload, Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Node: to}); err != nil {
		return 0, 0, fmt.Errorf("record the copy on %s: %w", to, err)
	}
	stopped := time.Now()
	if err := c.o.Local.Stop(ctx, id); err != nil {
		return 0, 0, fmt.Errorf("stop the local copy: %w", err)
	}
	epoch := w.Epoch + 1
	if err := c.o.Proposer.Apply(ctx, &state.Place{At: time.Now(), ID: workload, Owner: to, Epoch: epoch, Seq: e.Seq, Reason: "migrate from " + c.o.Node}); err != nil {
		// The copy is stopped: hand the workload to the leader, which places
		// it on a holder (this node among them).
		_ = c.o.Proposer.Apply(ctx, &state.AppFailed{At: time.Now(), ID: workload, Node: c.o.Node, Epoch: w.Epoch, Reason: "migration failed: " + err.Error(), Kind: state.FailMigration})
		return e.Seq, 0, fmt.Errorf("commit the new placement: %w", err)
	}
	log.Info("migration placed; waiting for the target", "seq", e.Seq, "epoch", epoch)
	deadline := time.After(MigrateTimeout)
	for {
		changed := c.o.State.Changed()
		nw, _ := c.o.State.Workload(workload)
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
			return e.Seq, 0, fmt.Errorf("the target did not report the workload running within %s", MigrateTimeout)
		case <-changed:
		}
	}
}
