package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// recordWait is how long a restore in a cluster waits for the ownership
// view to record a candidate it does not record yet (a checkpoint this
// node committed a moment ago) before it passes over it.
const recordWait = 5 * time.Second

// restoreRequest is one restore of a workload, from a local application
// failure or a cluster placement (failover or migration): the one routine
// below serves both.
type restoreRequest struct {
	id         store.Workload
	reason     string
	candidates []store.Entry // usable checkpoints, newest first
	// placed is the cluster's record of a placement's checkpoint (nil: a
	// local restore, whose candidates' records are in the ownership view).
	placed *ownership.Record
	cfg    workloadConfig
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
// attempt as the policy says, admits a checkpoint (see admit: it matches
// the cluster's record and the store's checksum, and asks for no more than
// the registration) and restores it through the runtime or kubelet with
// the registration's configuration (req.cfg, never the archive's). It
// logs each attempt and records it with the observer, here and nowhere
// else.
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
	refused := map[uint64]error{}
	waited := false        // for the cluster to record a candidate: once per restore
	runtimeFailed := false // the backoff is for the runtime: a refused candidate's successor goes at once
	for attempt := 0; ; attempt++ {
		e, wait, giveUp := req.policy.Next(attempt, req.candidates)
		if giveUp {
			res.info.Attempts, res.info.Error, res.err = attempt, lastErr.Error(), lastErr
			return res
		}
		if err, seen := refused[e.Seq]; seen {
			lastErr = err // refused on an earlier pass over the candidates
			continue
		}
		if wait > 0 && runtimeFailed {
			log.Info("waiting before the next restore attempt", "wait", wait, "attempt", attempt+1)
			select {
			case <-ctx.Done():
				res.info.Attempts, res.err = attempt, ctx.Err()
				res.info.Error = res.err.Error()
				return res
			case <-time.After(wait):
			}
		}
		if err := a.admit(ctx, req, e, &waited); err != nil {
			lastErr = err
			refused[e.Seq] = err
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
			runtimeFailed = true
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

// admit checks candidate e before it is restored. In a cluster it must
// match the cluster's record of it (sha256 and size). A candidate the
// cluster does not record is passed over (not marked bad), unless this
// node took it itself and the restore is local: then, as without a
// cluster, the store's checksum is the record (a node cut off from the
// quorum still restores its own newest state; replicas are stored only
// when the cluster records them). Then the archive must match the store's
// checksum, and its spec.dump and config.dump must ask for no more than
// the registration. A candidate that fails those is marked bad in the
// store and, in a cluster, reported so that this node's holder record of
// it is dropped; a fault of this node's own (a wrong or missing data key,
// an I/O error, a cancelled restore) passes the candidate over without
// marking it, so that a configuration mistake does not wipe out every
// holder record.
func (a *Agent) admit(ctx context.Context, req restoreRequest, e store.Entry, waited *bool) error {
	log := a.log.With("workload", req.id.String(), "seq", e.Seq)
	var rec ownership.Record
	recorded := a.own == nil
	if a.own != nil {
		own := req.placed == nil && e.Source == a.settings.Node
		rec, recorded = a.recordOf(ctx, req, e.Seq, !own && !*waited)
		if !recorded && !own {
			*waited = true
			err := fmt.Errorf("checkpoint #%d of %s is not recorded in the cluster state: in a cluster only recorded checkpoints are restored (or this node's own, locally)", e.Seq, req.id)
			log.Warn("passing over a checkpoint the cluster does not record", "err", err)
			return err
		}
	}
	refuse := func(err error) error {
		if localFault(ctx, err) {
			log.Error("cannot check the checkpoint; passing over it without marking it bad (the fault is this node's)", "err", err)
			return err
		}
		log.Error("REFUSED checkpoint; marking it bad", "err", err, "recorded_sha256", rec.SHA256, "actual_sha256", e.SHA256)
		if merr := a.store.MarkBad(req.id, e.Seq, err.Error()); merr != nil {
			log.Error("marking a refused checkpoint bad failed", "err", merr)
		}
		if a.own != nil && recorded {
			a.report(ownership.Report{Kind: ownership.BadCopy, Workload: discovery.Workload{ID: req.id}, Entry: e, Record: rec, Reason: err.Error()})
		}
		return err
	}
	if a.own != nil && recorded && (e.SHA256 != rec.SHA256 || e.Size != rec.Size) {
		return refuse(fmt.Errorf("checkpoint #%d of %s does not match the cluster's record: the archive has sha256 %s and %d bytes, the cluster records sha256 %s and %d bytes",
			e.Seq, req.id, e.SHA256, e.Size, rec.SHA256, rec.Size))
	}
	if err := a.store.Verify(e); err != nil {
		return refuse(fmt.Errorf("checkpoint #%d of %s is corrupt: %w", e.Seq, req.id, err))
	}
	if err := a.checkArchive(ctx, req.cfg, e); err != nil {
		return refuse(err)
	}
	return nil
}

// localFault reports whether err, met while checking a checkpoint, is
// this node's (a wrong or missing data key, an I/O error, the restore
// cancelled) rather than the archive's.
func localFault(ctx context.Context, err error) bool {
	var pe *fs.PathError
	return ctx.Err() != nil || errors.Is(err, seal.ErrWrongKey) || errors.Is(err, store.ErrNoKey) ||
		(errors.As(err, &pe) && !errors.Is(err, store.ErrDigest))
}

// recordOf returns the cluster's record of checkpoint seq of the request's
// workload: the placement's, or the ownership view's, waiting up to
// recordWait for the view to record it when wait is set.
func (a *Agent) recordOf(ctx context.Context, req restoreRequest, seq uint64, wait bool) (ownership.Record, bool) {
	if req.placed != nil {
		return *req.placed, req.placed.Seq == seq && req.placed.SHA256 != ""
	}
	if !wait {
		if v := a.own.View(); v != nil {
			if rec, ok := v.Workloads[req.id.String()].Checkpoint(seq); ok {
				return rec, true
			}
		}
		return ownership.Record{}, false
	}
	timer := time.NewTimer(recordWait)
	defer timer.Stop()
	for {
		changed := a.own.Changed()
		if v := a.own.View(); v != nil {
			if rec, ok := v.Workloads[req.id.String()].Checkpoint(seq); ok {
				return rec, true
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			return ownership.Record{}, false
		case <-ctx.Done():
			return ownership.Record{}, false
		}
	}
}
