package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// restoreRequest is one restore of a workload, from a local application
// failure or a cluster placement (failover or migration): the one routine
// below serves both.
type restoreRequest struct {
	id         store.Workload
	reason     string
	candidates []store.Entry // usable checkpoints, newest first
	cfg        workloadConfig
	// epoch is the cluster epoch of the new copy, written into its sandbox
	// annotations and attempt number; 0 keeps the recorded sandbox's (a
	// local restore of the same copy).
	epoch uint64
	// policy bounds the attempts: a local restore tries older checkpoints
	// with backoff; a placement makes one attempt (the cluster counts its
	// attempts across nodes and places the next one).
	policy RestorePolicy
	// removeFirst removes the local copies a restore replaces. For a
	// placement (epoch > 0) a failure fails the restore: an older copy
	// must not run beside the new one; for a local restore of the failed
	// copy itself, the restore goes on.
	removeFirst func(ctx context.Context) error
}

// restoreResult is the outcome of a restoreRequest.
type restoreResult struct {
	sandboxID, containerID string // empty when handed to kubelet as a static pod
	entry                  store.Entry
	took                   time.Duration // the runtime's restore call of the successful attempt
	info                   api.RestoreInfo
	err                    error
}

// restoreWorkload runs a restore: removes the old copies, then, attempt by
// attempt as the policy says, verifies a checkpoint against the store's
// checksum (marking a corrupt one bad), and restores it through the
// runtime or kubelet. It logs each attempt and records it with the
// observer, here and nowhere else.
func (a *Agent) restoreWorkload(ctx context.Context, req restoreRequest) restoreResult {
	log := a.log.With("workload", req.id.String())
	detected := a.now()
	res := restoreResult{info: api.RestoreInfo{At: detected, Reason: req.reason}}
	if req.removeFirst != nil {
		if err := req.removeFirst(ctx); err != nil {
			if req.epoch > 0 || errors.Is(err, errKubeletCopy) {
				res.err = fmt.Errorf("remove the older local copy of %s before restoring (epoch %d): %w", req.id, req.epoch, err)
				res.info.Error = res.err.Error()
				return res
			}
			log.Warn("removing the failed pod failed; restoring anyway", "err", err)
		}
	}
	var lastErr error = errors.New("no checkpoint to restore from")
	for attempt := 0; ; attempt++ {
		e, wait, giveUp := req.policy.Next(attempt, req.candidates)
		if giveUp {
			res.info.Attempts, res.info.Error, res.err = attempt, lastErr.Error(), lastErr
			return res
		}
		if wait > 0 {
			log.Info("waiting before the next restore attempt", "wait", wait, "attempt", attempt+1)
			select {
			case <-ctx.Done():
				res.info.Attempts, res.err = attempt, ctx.Err()
				res.info.Error = res.err.Error()
				return res
			case <-time.After(wait):
			}
		}
		if err := a.store.Verify(e); err != nil {
			lastErr = fmt.Errorf("checkpoint #%d is corrupt: %w", e.Seq, err)
			log.Error("checkpoint is corrupt; marking it bad", "seq", e.Seq, "err", err)
			_ = a.store.MarkBad(req.id, e.Seq, err.Error())
			continue
		}
		sb := cloneSandbox(req.cfg.Sandbox)
		if req.epoch > 0 {
			if sb.Annotations == nil {
				sb.Annotations = map[string]string{}
			}
			sb.Annotations[discovery.AnnEpoch] = strconv.FormatUint(req.epoch, 10)
		}
		if sb.Metadata != nil {
			// A fresh attempt number keeps the sandbox name unique on this
			// node even if a stale sandbox of an earlier attempt or epoch is
			// still there.
			if req.epoch > 0 {
				sb.Metadata.Attempt = uint32(req.epoch) + uint32(attempt)
			} else {
				req.cfg.Sandbox.Metadata.Attempt++
				sb.Metadata.Attempt = req.cfg.Sandbox.Metadata.Attempt
			}
		}
		start := a.now()
		sbID, ctrID, err := a.restoreCopy(ctx, sb, req.cfg.Container, e, req.epoch)
		took := a.now().Sub(start)
		res.info = api.RestoreInfo{At: start, Reason: req.reason, Seq: e.Seq, Age: start.Sub(e.Created), Duration: took,
			Attempts: attempt + 1, OK: err == nil, NewSandbox: sbID}
		if a.obs != nil {
			a.obs.Restored(req.id, e.Seq, start, took, res.info.Age, req.reason, err)
		}
		if err != nil {
			lastErr = fmt.Errorf("restore %s from #%d: %w", req.id, e.Seq, err)
			res.info.Error = err.Error()
			log.Error("restore attempt failed", "seq", e.Seq, "attempt", attempt+1, "epoch", req.epoch, "err", err)
			continue
		}
		res.sandboxID, res.containerID, res.entry, res.took = sbID, ctrID, e, took
		if sbID == "" {
			log.Info("restore handed to kubelet", "seq", e.Seq, "epoch", req.epoch)
		} else {
			log.Info("restored", "seq", e.Seq, "epoch", req.epoch, "reason", req.reason, "checkpoint_age_ms", res.info.Age.Milliseconds(),
				"restore_ms", took.Milliseconds(), "detect_to_restored_ms", a.now().Sub(detected).Milliseconds(),
				"sandbox_id", short(sbID), "container_id", short(ctrID))
		}
		return res
	}
}
