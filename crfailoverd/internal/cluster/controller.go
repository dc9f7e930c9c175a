package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/agent"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// controller is every node's reaction to the replicated state: restore
// what the cluster placed on this node. (Stopping copies this node no
// longer owns happens in Admit, at every discovery.)
func (c *Cluster) controller(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.fsm.changed:
		}
		c.watchQuorum()
		c.connected()
		fenced := c.fenced()
		if fenced != c.wasFenced && c.local != nil {
			// Let the agent apply the new verdicts at once.
			c.local.Nudge()
		}
		c.wasFenced = fenced
		if fenced || c.local == nil {
			continue
		}
		st := c.fsm.clone()
		c.checkLostCopies(st)
		for id, w := range st.Workloads {
			if w.Owner != c.o.Node || w.Status != state.StatusRestoring {
				continue
			}
			c.mu.Lock()
			done := c.restoring[id] >= w.Epoch
			if !done {
				c.restoring[id] = w.Epoch
			}
			c.mu.Unlock()
			if !done {
				go c.restore(ctx, *w)
			}
		}
	}
}

// restoreTimeout is how long the leader waits for a restore report before
// it counts the attempt as failed; restoreMargin keeps a node from starting
// a copy close to that deadline.
const (
	restoreTimeout = 2 * time.Minute
	restoreMargin  = 15 * time.Second
)

// lostGrace is how long an owned, running workload may lack a local copy
// (between a restore and its discovery, say) before it counts as lost.
const lostGrace = 5 * time.Second

// checkLostCopies reports owned workloads that have no local copy (it was
// fenced away during a partition, or vanished) as failed, so that the
// leader places them again.
func (c *Cluster) checkLostCopies(st *state.State) {
	now := time.Now()
	running := map[string]bool{}
	for id := range st.Workloads {
		if wid, err := store.ParseWorkload(id); err == nil {
			running[id] = c.local.Running(wid) // not under c.mu: the agent calls Admit under its own lock
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, w := range st.Workloads {
		if w.Owner != c.o.Node || w.Status != state.StatusRunning || running[id] {
			delete(c.lostSince, id)
			continue
		}
		since, ok := c.lostSince[id]
		if !ok {
			c.lostSince[id] = now
			continue
		}
		if now.Sub(since) < lostGrace {
			continue
		}
		delete(c.lostSince, id)
		c.log.Warn("an owned workload has no local copy; asking the cluster to restore it", "workload", id, "epoch", w.Epoch)
		c.propose("report lost copy", &state.AppFailed{At: now, ID: id, Node: c.o.Node, Epoch: w.Epoch, Reason: "no copy running on " + c.o.Node}, nil)
	}
}

// restore restores a workload the cluster placed here, fetching the
// checkpoint from a holder first when this node lacks it, and reports the
// outcome to the leader.
func (c *Cluster) restore(ctx context.Context, w state.Workload) {
	log := c.log.With("workload", w.ID, "epoch", w.Epoch, "seq", w.Seq)
	log.Info("restoring a workload the cluster placed here", "reason", w.Reason)
	start := time.Now()
	took, err := c.restoreFrom(ctx, w)
	done := &state.RestoreDone{At: time.Now(), ID: w.ID, Node: c.o.Node, Epoch: w.Epoch, Seq: w.Seq, OK: err == nil}
	ev := Event{Kind: "restored", Workload: w.ID, Node: c.o.Node, To: c.o.Node, Seq: w.Seq, Epoch: w.Epoch, Reason: w.Reason, Took: took}
	if err != nil {
		done.Error = err.Error()
		ev.Kind, ev.Err = "restore-failed", err.Error()
		log.Error("restore failed; the leader will try elsewhere", "err", err)
		// Allow a later placement at a higher epoch to try again here.
	} else {
		log.Info("restored", "restore_ms", took.Milliseconds(), "total_ms", time.Since(start).Milliseconds())
	}
	c.event(ev)
	for attempt := 0; attempt < 20; attempt++ {
		err := c.apply(ctx, done)
		if err == nil || ctx.Err() != nil {
			return
		}
		if errors.Is(err, state.ErrStale) || errors.Is(err, state.ErrStatus) {
			if done.OK {
				// The cluster moved on (the restore timed out, or the
				// workload was placed elsewhere): this copy must not run.
				log.Warn("the cluster refused the restore report; stopping the restored copy", "err", err)
				if id, perr := store.ParseWorkload(w.ID); perr == nil {
					if _, rerr := c.local.RemoveCopies(ctx, id); rerr != nil {
						log.Error("stopping the refused copy failed", "err", rerr)
					}
				}
			}
			return
		}
		log.Warn("reporting the restore failed; retrying", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
}

func (c *Cluster) restoreFrom(ctx context.Context, w state.Workload) (time.Duration, error) {
	id, err := store.ParseWorkload(w.ID)
	if err != nil {
		return 0, err
	}
	// Past the leader's restore deadline the workload may already be placed
	// elsewhere: never start a copy then (a margin covers clock skew).
	if time.Since(w.Since) > restoreTimeout-restoreMargin {
		return 0, fmt.Errorf("placement of %s is too old to act on (since %s)", w.ID, w.Since.Format(time.RFC3339))
	}
	if len(w.Config) == 0 {
		return 0, errors.New("the cluster holds no restore configuration for it")
	}
	e, err := c.o.Store.Get(id, w.Seq)
	if err != nil {
		e, err = c.fetch(ctx, w, id)
		if err != nil {
			return 0, err
		}
	}
	// A copy of an older epoch may still run here (an application failure
	// placed back on this node): remove it first.
	if _, err := c.local.RemoveCopies(ctx, id); err != nil {
		return 0, fmt.Errorf("remove the old copy: %w", err)
	}
	return c.local.RestoreAt(ctx, e, w.Config, w.Epoch)
}

// fetch pulls checkpoint w.Seq from one of its holders.
func (c *Cluster) fetch(ctx context.Context, w state.Workload, id store.Workload) (store.Entry, error) {
	var holders []string
	for _, cp := range w.Checkpoints {
		if cp.Seq == w.Seq {
			holders = cp.Holders
		}
	}
	var errs []error
	for _, h := range holders {
		if h == c.o.Node {
			continue
		}
		cl, err := c.client(h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		e, err := cl.Fetch(fctx, c.o.Store, id, w.Seq)
		cancel()
		if err == nil {
			c.log.Info("fetched a checkpoint from a holder", "workload", w.ID, "seq", w.Seq, "from", h)
			return e, nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", h, err))
	}
	return store.Entry{}, fmt.Errorf("checkpoint #%d is not on this node and no holder gave it: %w", w.Seq, errors.Join(errs...))
}

// Admit is the agent's gate: may a running local copy run?
func (c *Cluster) Admit(w discovery.Workload) agent.Admission {
	if !c.connected() {
		if c.fenced() {
			return agent.AdmitStop
		}
		return agent.AdmitWait
	}
	copyEpoch := c.copyEpoch(w)
	cw, ok := c.fsm.workload(w.ID.String())
	switch {
	case !ok || cw.Status == state.StatusFailed:
		c.register(w)
		return agent.AdmitWait
	case cw.Owner != c.o.Node || copyEpoch < cw.Epoch:
		return agent.AdmitStop
	case copyEpoch > cw.Epoch:
		return agent.AdmitWait // this node's state lags behind
	}
	return agent.AdmitRun
}

// register records a local original copy in the cluster (with its restore
// configuration), in the background.
func (c *Cluster) register(w discovery.Workload) {
	id := w.ID.String()
	c.mu.Lock()
	if c.registering[id] || c.local == nil {
		c.mu.Unlock()
		return
	}
	c.registering[id] = true
	c.mu.Unlock()
	go func() {
		defer func() {
			c.mu.Lock()
			delete(c.registering, id)
			c.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg, err := c.local.RecordConfig(ctx, w)
		if err != nil {
			c.log.Warn("cannot record a workload's configuration; it is not protected yet", "workload", id, "err", err)
			return
		}
		err = c.apply(ctx, &state.RegisterWorkload{At: time.Now(), ID: id, Node: c.o.Node, Interval: w.Interval, Config: cfg, CopyEpoch: w.Epoch})
		switch {
		case err == nil:
			// Registering a workload the cluster had given up on gives it a
			// new epoch; the running copy belongs to it.
			if cw, ok := c.fsm.workload(id); ok && cw.Owner == c.o.Node {
				c.mu.Lock()
				c.adopted[w.SandboxID] = cw.Epoch
				c.mu.Unlock()
			}
			c.log.Info("workload registered with the cluster", "workload", id)
		case errors.Is(err, state.ErrStale):
			c.log.Warn("another node owns this workload; the local copy will be stopped", "workload", id, "err", err)
		default:
			c.log.Warn("registering a workload failed; retrying at the next discovery", "workload", id, "err", err)
		}
	}()
}

// Checkpointed records a new checkpoint in the cluster and replicates it.
func (c *Cluster) Checkpointed(w discovery.Workload, e store.Entry) {
	cp := state.Checkpoint{Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Created: e.Created, Holders: []string{c.o.Node}}
	cmd := &state.CommitCheckpoint{At: time.Now(), ID: w.ID.String(), Node: c.o.Node, Epoch: c.copyEpoch(w), Checkpoint: cp}
	c.propose("record checkpoint", cmd, func(err error) {
		if err != nil {
			return
		}
		var peers []string
		for _, n := range c.aliveNodes() {
			if n != c.o.Node {
				peers = append(peers, n)
			}
		}
		if targets := peer.Targets(w.ID.String(), c.o.Node, peers, c.o.ReplicationFactor); len(targets) > 0 {
			c.repl.Enqueue(e, targets)
		}
	})
}

func (c *Cluster) replicated(e store.Entry, to string, took time.Duration, bytes int64) {
	c.event(Event{Kind: "replicated", Workload: e.Workload.String(), Node: c.o.Node, To: to, Seq: e.Seq, Took: took, Bytes: bytes})
	c.propose("record replica", &state.AddHolder{At: time.Now(), ID: e.Workload.String(), Seq: e.Seq, Node: to}, nil)
}

func (c *Cluster) replicateFailed(e store.Entry, to string, err error) {
	c.event(Event{Kind: "replicate-failed", Workload: e.Workload.String(), Node: c.o.Node, To: to, Seq: e.Seq, Err: err.Error()})
}

// Failed decides who restores a failed application: with policy local,
// this node (while it has the quorum and owns it); with policy peer, the
// leader, told here.
func (c *Cluster) Failed(w discovery.Workload, reason string) bool {
	if c.o.Policy == PolicyLocal {
		cw, ok := c.fsm.workload(w.ID.String())
		return !c.fenced() && ok && cw.Owner == c.o.Node
	}
	c.propose("report application failure", &state.AppFailed{At: time.Now(), ID: w.ID.String(), Node: c.o.Node, Epoch: c.copyEpoch(w), Reason: reason}, nil)
	return false
}

// copyEpoch is the epoch a local copy belongs to: its pod's label (an
// original pod counts as epoch 1), or the epoch its registration gave it.
func (c *Cluster) copyEpoch(w discovery.Workload) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(w.Epoch, 1, c.adopted[w.SandboxID])
}
