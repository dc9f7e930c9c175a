package agent

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// What the cluster asks of the node (its controller's Node interface), and
// how the agent applies the cluster's verdicts. The agent never calls the
// cluster: it reads the ownership view and queues reports.

// report queues a report for the cluster; it never blocks. A full queue
// drops the report: each kind is made again (an unregistered copy at the
// next discovery, a checkpoint superseded by the next one, and a lost copy
// is found by the controller's own check).
func (a *Agent) report(r ownership.Report) {
	if a.own == nil {
		return
	}
	select {
	case a.reports <- r:
	default:
		a.log.Error("report queue to the cluster full; dropping a report", "kind", r.Kind.String(), "workload", r.Workload.ID.String())
	}
}

// Reports is what the agent tells the cluster (the controller reads it).
func (a *Agent) Reports() <-chan ownership.Report { return a.reports }

// view returns the cluster's newest ownership view (nil: single node).
func (a *Agent) view() *ownership.View {
	if a.own == nil {
		return nil
	}
	return a.own.View()
}

// fence stops a local copy the cluster says must not run (another node
// owns the workload, or this node is cut off from the quorum). It runs in
// the background, after the workload's worker (wk, when there is one) has
// finished what it was doing: stopping a container in the middle of a
// dump leaves its processes frozen. The sandbox is remembered so it is
// stopped only once.
func (a *Agent) fence(ctx context.Context, w discovery.Workload, wk *worker, why string) {
	if a.fencing == nil {
		a.fencing = map[string]bool{}
	}
	if a.fencing[w.SandboxID] {
		return
	}
	a.fencing[w.SandboxID] = true
	a.log.Warn("stopping a local copy the cluster does not allow", "workload", w.ID.String(), "sandbox_id", short(w.SandboxID), "copy_epoch", w.Epoch, "why", why)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		start := a.now()
		if wk != nil {
			<-wk.done
		}
		waited := a.now().Sub(start)
		var err error
		if a.static != nil && w.StaticPod {
			err = a.stopKubeletPods(ctx, w.ID, []string{w.SandboxID}, func() error { return a.removeManifestOf(w) })
		} else {
			err = a.rt.RemovePod(ctx, w.SandboxID)
		}
		if err == nil {
			a.log.Info("stopped a local copy", "workload", w.ID.String(), "sandbox_id", short(w.SandboxID),
				"waited_for_worker_ms", waited.Milliseconds(), "stop_ms", (a.now().Sub(start) - waited).Milliseconds())
		}
		if err != nil {
			a.log.Error("stopping a local copy failed; retrying at the next discovery", "workload", w.ID.String(), "sandbox_id", short(w.SandboxID), "err", err)
			a.mu.Lock()
			delete(a.fencing, w.SandboxID)
			a.mu.Unlock()
		}
	}()
}

// RemoveCopies stops and removes every local pod of workload id.
func (a *Agent) RemoveCopies(ctx context.Context, id store.Workload) (int, error) {
	if err := a.removeStaticPod(id); err != nil {
		return 0, err
	}
	pods, err := a.rt.ListPods(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var kubelets []string
	for _, p := range pods {
		ws, _ := discovery.Find([]cri.Pod{p}, a.cfg().Defaults)
		if len(ws) != 1 || ws[0].ID != id {
			continue
		}
		n++
		if a.static != nil && ws[0].StaticPod {
			kubelets = append(kubelets, p.SandboxID)
			continue
		}
		if err := a.rt.RemovePod(ctx, p.SandboxID); err != nil {
			return n, err
		}
	}
	if len(kubelets) > 0 {
		return n, a.stopKubeletPods(ctx, id, kubelets, func() error { return a.removeStaticPod(id) })
	}
	return n, nil
}

// WorkloadConfig returns the recorded restore configuration of a workload
// (the sandbox and container configuration, as JSON), for the cluster to
// replicate so that any node can restore it.
func (a *Agent) WorkloadConfig(id store.Workload) ([]byte, error) {
	return os.ReadFile(workloadConfigPath(a.dataDir, id))
}

// Restore restores a workload the cluster placed on this node, at
// p.Epoch, from p.Entry (in the local store, which must match the
// cluster's p.Record) with the restore configuration p.Config (the
// registration's), after removing any older local copy. It makes one attempt: the cluster counts attempts
// and places the next one. It returns how long the runtime's restore took.
func (a *Agent) Restore(ctx context.Context, p ownership.Placement) (time.Duration, error) {
	id := p.Entry.Workload
	if err := ValidateConfig(p.Config); err != nil {
		return 0, fmt.Errorf("restore configuration of %s from the cluster: %w", id, err)
	}
	if err := writeFileAtomic(workloadConfigPath(a.dataDir, id), p.Config); err != nil {
		return 0, err
	}
	wc, err := loadWorkloadConfig(a.dataDir, id)
	if err != nil {
		return 0, err
	}
	rec := p.Record
	res := a.restoreWorkload(ctx, restoreRequest{id: id, reason: p.Reason, candidates: []store.Entry{p.Entry}, placed: &rec, cfg: wc, epoch: p.Epoch,
		policy:      RestorePolicy{MaxAttempts: 1},
		removeFirst: func(ctx context.Context) error { _, err := a.RemoveCopies(ctx, id); return err }})
	return res.took, res.err
}

// CheckpointNow has the workload's worker take a checkpoint at once (for a
// migration) and returns it.
func (a *Agent) CheckpointNow(ctx context.Context, id store.Workload) (store.Entry, error) {
	a.mu.Lock()
	wk, ok := a.workers[id]
	a.mu.Unlock()
	if !ok || wk.exited() {
		return store.Entry{}, fmt.Errorf("workload %s does not run on this node", id)
	}
	reply := make(chan checkpointResult, 1)
	select {
	case wk.reqs <- checkpointRequest{reply: reply}:
	case <-wk.done:
		return store.Entry{}, fmt.Errorf("workload %s stopped", id)
	case <-ctx.Done():
		return store.Entry{}, ctx.Err()
	}
	select {
	case r := <-reply:
		return r.entry, r.err
	case <-ctx.Done():
		return store.Entry{}, ctx.Err()
	}
}

// Stop ends the worker of a workload and removes its local copies (the
// source side of a migration).
func (a *Agent) Stop(ctx context.Context, id store.Workload) error {
	a.mu.Lock()
	wk, ok := a.workers[id]
	if ok {
		delete(a.workers, id)
	}
	a.mu.Unlock()
	if ok {
		wk.close()
		<-wk.done
	}
	_, err := a.RemoveCopies(ctx, id)
	return err
}

// ValidateConfig checks that cfg is a restore configuration this agent can
// use.
func ValidateConfig(cfg []byte) error {
	_, err := restorecfg.Parse(cfg)
	return err
}

// RecordConfig records the restore configuration of a running copy (the
// sandbox and container configuration) and returns it as WorkloadConfig
// would.
func (a *Agent) RecordConfig(ctx context.Context, w discovery.Workload) ([]byte, error) {
	if err := saveWorkloadConfig(ctx, a.rt, a.dataDir, w.ID, w.SandboxID, w.ContainerID); err != nil {
		return nil, err
	}
	return a.WorkloadConfig(w.ID)
}

// Running reports whether a local copy of the workload runs (or is being
// restored) under this agent.
func (a *Agent) Running(id store.Workload) bool {
	a.mu.Lock()
	wk, ok := a.workers[id]
	a.mu.Unlock()
	if !ok || wk.exited() {
		return a.handedOver(id)
	}
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.state == stateRunning || wk.state == stateRestoring
}
