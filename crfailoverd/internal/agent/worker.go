package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/kubelet"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Workload states shown in the status.
const (
	stateRunning   = "running"
	stateExited    = "exited"
	stateRestoring = "restoring"
	stateFailed    = "failed"
)

func isRuntimeFailure(err error) bool { return kubelet.IsRuntimeFailure(err) }

func removeQuiet(path string) { _ = os.Remove(path) }

// worker looks after one workload: its checkpoint schedule, its liveness
// probe, and its restore. One goroutine runs it, so a workload never has
// two checkpoints, or a checkpoint and a restore, at once.
type worker struct {
	a       *Agent
	id      store.Workload
	updates chan discovery.Workload // latest discovery result; capacity 1
	stop    chan struct{}
	done    chan struct{} // closed when run returns
	reqs    chan checkpointRequest
	once    sync.Once

	mu            sync.Mutex // guards what status() reads
	spec          discovery.Workload
	state         string
	busy          bool
	checkpoints   int
	failures      int
	consecutive   int
	lastErr       string
	last          *store.Entry
	next          time.Time
	probeFailures int
	restores      int
	lastRestore   *api.RestoreInfo
	removed       map[string]bool // sandboxes the worker removed: stale reports of them are ignored
	probeAddr     string
	adoptTried    bool // adoptPod ran (it runs once per worker)
}

func newWorker(a *Agent, w discovery.Workload) *worker {
	wk := &worker{a: a, id: w.ID, updates: make(chan discovery.Workload, 1), stop: make(chan struct{}),
		done: make(chan struct{}), reqs: make(chan checkpointRequest),
		spec: w, state: string(w.State), removed: map[string]bool{}}
	if e, ok, err := a.store.Latest(w.ID); err == nil && ok {
		wk.last = &e
	}
	return wk
}

// inherit takes over the counts of the worker of the workload's previous
// copy (which has ended), so that the status tells the workload's story.
func (w *worker) inherit(old *worker) {
	old.mu.Lock()
	restores, last, ckpts, failures := old.restores, old.lastRestore, old.checkpoints, old.failures
	old.mu.Unlock()
	w.set(func() {
		w.restores, w.lastRestore, w.checkpoints, w.failures = restores, last, ckpts, failures
	})
}

func (w *worker) update(d discovery.Workload) {
	select {
	case <-w.updates:
	default:
	}
	w.updates <- d
}

func (w *worker) close() { w.once.Do(func() { close(w.stop) }) }

func (w *worker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// checkpointRequest asks the worker for a checkpoint now (migration).
type checkpointRequest struct {
	reply chan checkpointResult
}

type checkpointResult struct {
	entry store.Entry
	err   error
}

func (w *worker) isBusy() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.busy
}

func (w *worker) set(f func()) {
	w.mu.Lock()
	f()
	w.mu.Unlock()
}

func (w *worker) run(ctx context.Context) {
	log := w.a.log.With("workload", w.id.String())
	w.adopt(ctx, w.spec)
	ckpt := time.NewTimer(0)
	defer ckpt.Stop()
	probe := time.NewTimer(max(w.spec.Probe.Period, w.a.cfg().ProbeInitialDelay))
	defer probe.Stop()
	h := &health{threshold: w.spec.Probe.FailureThreshold}
	if w.spec.State == cri.StateExited && !w.restore(ctx, "container exited") {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.stop:
			return
		case d := <-w.updates:
			w.mu.Lock()
			stale := w.removed[d.SandboxID]
			gaveUp := w.state == stateFailed
			sameCtr := d.ContainerID == w.spec.ContainerID
			w.mu.Unlock()
			if stale || (gaveUp && sameCtr) {
				continue
			}
			if d.SandboxID != w.spec.SandboxID || !sameCtr {
				w.adopt(ctx, d)
			}
			w.set(func() { w.spec = d; w.state = string(d.State) })
			h.threshold = d.Probe.FailureThreshold
			if d.State == cri.StateExited {
				if !w.restore(ctx, "container exited") {
					return
				}
				resetTimer(ckpt, w.spec.Interval)
			}
		case req := <-w.reqs:
			e, err := w.checkpoint(ctx, log, w.a.now())
			req.reply <- checkpointResult{e, err}
			resetTimer(ckpt, time.Until(w.next))
		case <-ckpt.C:
			if w.spec.State != cri.StateRunning {
				resetTimer(ckpt, w.spec.Interval)
				continue
			}
			_, err := w.checkpoint(ctx, log, w.a.now())
			if ctx.Err() != nil {
				return
			}
			if err == nil && w.adoptable() && !w.adoptPod(ctx) {
				return
			}
			resetTimer(ckpt, time.Until(w.next))
		case <-probe.C:
			p := w.spec.Probe
			if p.Port > 0 && w.spec.State == cri.StateRunning {
				err := w.probe(ctx, p)
				failed := h.observe(err == nil)
				w.set(func() { w.probeFailures = h.failures })
				if err != nil {
					log.Warn("liveness probe failed", "err", err, "failures", h.failures, "threshold", h.threshold)
				}
				if failed {
					if !w.restore(ctx, fmt.Sprintf("liveness probe failed %d times: %v", h.failures, err)) {
						return
					}
					h.failures = 0
					resetTimer(ckpt, w.spec.Interval)
					resetTimer(probe, max(p.Period, w.a.cfg().ProbeInitialDelay))
					continue
				}
			}
			resetTimer(probe, p.Period)
		}
	}
}

// checkpoint takes one checkpoint of the workload and records the outcome.
func (w *worker) checkpoint(ctx context.Context, log interface {
	Error(string, ...any)
	Debug(string, ...any)
}, start time.Time) (store.Entry, error) {
	if w.spec.State != cri.StateRunning {
		return store.Entry{}, fmt.Errorf("workload %s is not running (%s)", w.id, w.spec.State)
	}
	e, err := w.a.takeCheckpoint(ctx, w.spec)
	if ctx.Err() != nil {
		return e, ctx.Err()
	}
	if w.a.obs != nil {
		method := e.Method
		if err != nil {
			method = w.a.cfg().Method
		}
		w.a.obs.Checkpointed(w.spec, e, method, start, w.a.now().Sub(start), err)
	}
	w.set(func() {
		if err != nil {
			w.failures++
			w.consecutive++
			w.lastErr = err.Error()
		} else {
			w.checkpoints++
			w.consecutive = 0
			w.lastErr = ""
			w.last = &e
		}
		w.next = nextDue(start, w.a.now(), w.spec.Interval)
	})
	if err != nil {
		log.Error("checkpoint failed", "container_id", short(w.spec.ContainerID), "err", err, "consecutive_failures", w.consecutive)
		return e, err
	}
	log.Debug("checkpointed", "seq", e.Seq, "method", e.Method, "bytes", e.Size, "duration_ms", e.Duration.Milliseconds())
	if v := w.a.view(); v != nil {
		w.a.report(ownership.Report{Kind: ownership.Checkpointed, Workload: w.spec, CopyEpoch: v.CopyEpoch(w.spec), Entry: e})
	}
	return e, nil
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(max(d, 0))
}

// adopt records what a restore of this workload needs (the sandbox and
// container configuration) and where its probe goes.
func (w *worker) adopt(ctx context.Context, d discovery.Workload) {
	log := w.a.log.With("workload", w.id.String())
	if err := saveWorkloadConfig(ctx, w.a.rt, w.a.dataDir, w.id, d.SandboxID, d.ContainerID); err != nil {
		log.Error("cannot record the workload's configuration; restores will use the last recorded one", "err", err)
	}
	ip, hostNet, err := w.a.rt.PodNetwork(ctx, d.SandboxID)
	addr := "127.0.0.1"
	if err == nil && !hostNet && ip != "" {
		addr = ip
	}
	w.set(func() { w.probeAddr = addr })
}

func (w *worker) probe(ctx context.Context, p discovery.Probe) error {
	w.mu.Lock()
	addr := w.probeAddr
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, w.a.cfg().ProbeTimeout)
	defer cancel()
	u := "http://" + net.JoinHostPort(addr, strconv.Itoa(p.Port)) + p.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	resp.Body.Close()
	// As kubelet: 200-399 is healthy.
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

// probeClient keeps no connection open: CRIU cannot dump an established
// TCP connection without tcp-close, and each would be lost on restore.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// restore brings the workload back from its newest good checkpoint, trying
// older ones and backing off as the restore policy says, and gives up
// loudly when the attempts run out. In a cluster, unless the ownership
// view says this node restores it itself, the failure is handed to the
// cluster: the failed copy is removed and restore returns false (the
// worker ends).
func (w *worker) restore(ctx context.Context, reason string) bool {
	log := w.a.log.With("workload", w.id.String())
	if v := w.a.view(); v != nil && !v.RestoreHere(w.spec) {
		log.Warn("application failed; the cluster restores it", "reason", reason)
		var ts []taken
		if err := w.a.replaceFirst(w.spec, &ts)(ctx); err != nil {
			log.Warn("removing the failed pod failed", "sandbox_id", short(w.spec.SandboxID), "err", err)
		}
		w.set(func() { w.state = "handed over"; w.removed[w.spec.SandboxID] = true })
		w.a.report(ownership.Report{Kind: ownership.AppFailed, Workload: w.spec, CopyEpoch: v.CopyEpoch(w.spec), Reason: reason})
		return false
	}
	w.set(func() { w.busy, w.state = true, stateRestoring })
	defer w.set(func() { w.busy = false })
	detected := w.a.now()
	log.Warn("application failed; restoring from a checkpoint", "reason", reason)

	old := w.spec.SandboxID
	var ts []taken
	replace := w.a.replaceFirst(w.spec, &ts)
	cfg, err := loadWorkloadConfig(w.a.dataDir, w.id)
	if err != nil {
		w.giveUp(log, reason, detected, 0, fmt.Errorf("no recorded configuration to restore with: %w", err))
		return true
	}
	entries, err := w.a.store.List(w.id)
	if err != nil {
		w.giveUp(log, reason, detected, 0, err)
		return true
	}
	var candidates []store.Entry
	for _, e := range entries {
		if !e.Bad {
			candidates = append(candidates, e)
		}
	}
	res := w.a.restoreWorkload(ctx, restoreRequest{id: w.id, reason: reason, candidates: candidates, cfg: cfg, policy: w.a.cfg().Restore,
		removeFirst: func(ctx context.Context) error {
			w.set(func() { w.removed[old] = true })
			return replace(ctx)
		}})
	ri := res.info
	switch {
	case res.err != nil && ctx.Err() != nil:
		return false
	case res.err != nil:
		w.a.giveBack(w.id, ts) // a user's manifest taken on the way: kubelet runs it again
		w.giveUp(log, reason, detected, ri.Attempts, res.err)
		return true
	case res.sandboxID == "":
		// Handed to kubelet (static pod): discovery finds the new pod and
		// starts a new worker for it.
		w.set(func() { w.restores++; w.lastRestore = &ri; w.state = "handed to kubelet" })
		return false
	}
	w.set(func() {
		w.restores++
		w.lastRestore = &ri
		w.state = stateRunning
		w.spec.SandboxID, w.spec.ContainerID, w.spec.State = res.sandboxID, res.containerID, cri.StateRunning
		w.probeFailures = 0
	})
	return true
}

func (w *worker) giveUp(log interface {
	Error(string, ...any)
}, reason string, detected time.Time, attempts int, err error) {
	w.set(func() {
		w.state = stateFailed
		w.lastRestore = &api.RestoreInfo{At: detected, Reason: reason, Attempts: attempts, Error: err.Error()}
	})
	log.Error("GIVING UP: the workload stays down until it is started again by hand", "reason", reason, "attempts", attempts, "err", err)
}

func (w *worker) status() api.WorkloadStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := api.WorkloadStatus{ID: w.id.String(), SandboxID: w.spec.SandboxID, ContainerID: w.spec.ContainerID, State: w.state,
		Interval: w.spec.Interval, Checkpoints: w.checkpoints, NextDue: w.next, CheckpointFailures: w.failures,
		ConsecutiveFailures: w.consecutive, LastError: w.lastErr, ProbeFailures: w.probeFailures, Restores: w.restores,
		LastRestore: w.lastRestore}
	if w.last != nil {
		i := infoOf(*w.last)
		s.Last = &i
	}
	return s
}

// adoptable reports whether the copy runs from the user's own static pod
// manifest, which crfailoverd takes over after the first checkpoint (see
// StaticPods).
func (w *worker) adoptable() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.a.static != nil && w.spec.StaticPod && w.spec.Checkpoint == "" && !w.adoptTried &&
		w.spec.State == cri.StateRunning && w.last != nil
}

// adoptPod takes the user's static pod manifest over: it moves it out of
// kubelet's directory and restores the pod from the checkpoint just taken
// under crfailoverd's own manifest, in place, at the copy's epoch. It
// returns false when the restore was handed to kubelet (the worker ends;
// discovery starts one for the new pod).
func (w *worker) adoptPod(ctx context.Context) bool {
	log := w.a.log.With("workload", w.id.String())
	w.set(func() { w.adoptTried = true })
	cfg, err := loadWorkloadConfig(w.a.dataDir, w.id)
	if err != nil {
		log.Error("cannot take the static pod over: no recorded configuration; kubelet may restart it fresh after a failure", "err", err)
		return true
	}
	var epoch uint64
	if v := w.a.view(); v != nil {
		epoch = v.CopyEpoch(w.spec)
	}
	w.mu.Lock()
	last := *w.last
	w.busy, w.state = true, stateRestoring
	w.mu.Unlock()
	defer w.set(func() { w.busy = false })
	var ts []taken
	res := w.a.restoreWorkload(ctx, restoreRequest{id: w.id, reason: "taking the static pod over from the user's manifest",
		candidates: []store.Entry{last}, cfg: cfg, epoch: epoch, policy: RestorePolicy{MaxAttempts: 1},
		removeFirst: w.a.replaceFirst(w.spec, &ts)})
	if res.err != nil {
		// The user's pod may be stopped already: its manifest goes back,
		// and kubelet starts it again (fresh, its state since the start
		// lost; later failures restart it fresh too).
		w.a.giveBack(w.id, ts)
		ri := res.info
		w.set(func() { w.state = string(w.spec.State); w.lastRestore = &ri })
		log.Error("cannot take the static pod over; its manifest stays the user's, and kubelet restarts it fresh after a failure", "err", res.err)
		return true
	}
	ri := res.info
	w.set(func() { w.restores++; w.lastRestore = &ri; w.state = "handed to kubelet" })
	return false
}
