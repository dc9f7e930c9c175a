// Package agent is crfailoverd's single-node core: it discovers annotated
// containers through the runtime, checkpoints each on its interval into the
// local store, watches their health, and restores a failed one from its
// newest good checkpoint. The runtime and the kubelet are small interfaces
// declared here; the decisions (plan.go) do no I/O.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Runtime is what the agent needs of the container runtime.
type Runtime interface {
	Version(ctx context.Context) (string, error)
	ListPods(ctx context.Context) ([]cri.Pod, error)
	PodNetwork(ctx context.Context, sandboxID string) (ip string, hostNetwork bool, err error)
	SandboxConfig(ctx context.Context, sandboxID string) (*runtimeapi.PodSandboxConfig, error)
	ContainerConfig(ctx context.Context, containerID string) (*runtimeapi.ContainerConfig, error)
	CheckpointContainer(ctx context.Context, containerID, location string, timeout time.Duration) error
	// CheckpointPod and RestorePod are the pod-level calls of cri-api
	// v0.37 (alpha): they return an error wrapping cri.ErrUnsupported where
	// the runtime lacks them, and the agent then uses the per-container
	// calls.
	CheckpointPod(ctx context.Context, sandboxID string, containerIDs []string, outDir string, timeout time.Duration) error
	RestorePod(ctx context.Context, dir string, sb *runtimeapi.PodSandboxConfig, ctrs []*runtimeapi.ContainerConfig) (sandboxID string, containerIDs []string, err error)
	RestoreContainer(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, archive string) (sandboxID, containerID string, err error)
	RemovePod(ctx context.Context, sandboxID string) error
}

// Kubelet checkpoints through the kubelet's API and returns the archive's
// path on this node.
type Kubelet interface {
	Checkpoint(ctx context.Context, namespace, pod, container string, timeout time.Duration) (string, error)
}

// Observer records what the agent did, for metrics. Its methods must not
// block.
type Observer interface {
	// Checkpointed is told of every checkpoint attempt: e is the committed
	// entry (zero when err is not nil).
	Checkpointed(w discovery.Workload, e store.Entry, method string, start time.Time, took time.Duration, err error)
	// Restored is told of every local restore attempt.
	Restored(id store.Workload, seq uint64, start time.Time, took, checkpointAge time.Duration, reason string, err error)
}

// Ownership is the cluster's read-only view of who owns what (an
// ownership.Board); nil means a single node that runs and restores
// everything it finds.
type Ownership interface {
	View() *ownership.View
	// Changed returns a channel closed at the next change of the view.
	Changed() <-chan struct{}
}

// Checkpoint methods.
const (
	MethodKubelet = "kubelet"
	MethodCRI     = "cri"
	MethodAuto    = "auto"
	// MethodCRIPod marks checkpoints taken with the pod-level CheckpointPod:
	// a tar of the runtime's checkpoint directory.
	MethodCRIPod = "cri-pod"
)

// Settings are the parts of the configuration the agent uses; Reload
// replaces them while it runs.
type Settings struct {
	Node              string
	Method            string
	Defaults          discovery.Defaults
	CheckpointTimeout time.Duration
	Retention         int
	ProbeTimeout      time.Duration
	ProbeInitialDelay time.Duration // no probe this soon after a start or restore
	Restore           RestorePolicy
}

// Options build an agent.
type Options struct {
	Settings      Settings
	Runtime       Runtime
	Kubelet       Kubelet // nil: the kubelet is not configured
	Store         *store.Store
	Ownership     Ownership   // nil: single node
	StaticPods    *StaticPods // nil: restore through the CRI
	Observer      Observer    // nil: nobody records checkpoints and restores
	DataDir       string
	MaxConcurrent int
	Log           *slog.Logger
	Now           func() time.Time
	// DiscoverEvery is how often the runtime is asked for pods (default 1 s).
	DiscoverEvery time.Duration
}

// kubeletCooldown is how long "auto" keeps to the CRI after the kubelet
// failed, before it tries the kubelet again.
const kubeletCooldown = time.Minute

// Agent runs the checkpoint and restore loops of one node.
type Agent struct {
	rt      Runtime
	kubelet Kubelet
	store   *store.Store
	own     Ownership
	reports chan ownership.Report
	static  *StaticPods
	obs     Observer
	dataDir string
	log     *slog.Logger
	now     func() time.Time
	every   time.Duration
	sem     chan struct{}
	started time.Time
	ready   chan struct{}

	mu            sync.Mutex
	settings      Settings
	workers       map[store.Workload]*worker
	problems      []string
	runtimeName   string
	runtimeErr    string
	kubeletPaused time.Time // "auto" uses the CRI until then
	lastLoop      time.Time // last pass of the discovery loop
	podLevel      podLevelSupport
	fencing       map[string]bool            // sandboxes being stopped on the cluster's word
	handoffs      map[store.Workload]handoff // restores handed to kubelet, until its pod runs
	gone          map[store.Workload]*worker // the last worker of each workload that went away
	copies        []LocalCopy                // copies found by the last discovery pass (LocalCopies)
	copiesKnown   bool
	wg            sync.WaitGroup
}

// New makes an agent; Run starts it.
func New(o Options) *Agent {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DiscoverEvery <= 0 {
		o.DiscoverEvery = time.Second
	}
	if o.MaxConcurrent < 1 {
		o.MaxConcurrent = 1
	}
	return &Agent{
		rt: o.Runtime, kubelet: o.Kubelet, store: o.Store, own: o.Ownership, reports: make(chan ownership.Report, 1024), static: o.StaticPods, obs: o.Observer, dataDir: o.DataDir, log: o.Log, now: o.Now,
		every: o.DiscoverEvery, sem: make(chan struct{}, o.MaxConcurrent), started: o.Now(),
		ready: make(chan struct{}), settings: o.Settings, workers: map[store.Workload]*worker{},
	}
}

// Alive reports whether the discovery loop made a pass within d (for the
// systemd watchdog).
func (a *Agent) Alive(d time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.now().Sub(a.lastLoop) < d+a.every
}

// SetKubelet replaces the kubelet client (nil: none), on reload.
func (a *Agent) SetKubelet(k Kubelet) {
	a.mu.Lock()
	a.kubelet = k
	a.kubeletPaused = time.Time{}
	a.mu.Unlock()
}

// Ready is closed after the first discovery pass.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Reload replaces the settings; workers pick them up at their next step.
func (a *Agent) Reload(s Settings) {
	a.mu.Lock()
	a.settings = s
	a.mu.Unlock()
	a.store.SetRetention(s.Retention)
}

func (a *Agent) cfg() Settings {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.settings
}

// Run discovers workloads until ctx ends, then waits for the workers.
func (a *Agent) Run(ctx context.Context) error {
	t := time.NewTicker(a.every)
	defer t.Stop()
	readyOnce := sync.OnceFunc(func() { close(a.ready) })
	if err := a.parkManifests(ctx); err != nil {
		a.log.Error("cannot park the static pod manifests of workloads that do not run; kubelet may start them before the cluster says who owns them", "err", err)
	}
	var lastErr string
	for {
		var changed <-chan struct{}
		if a.own != nil {
			// Taken before the pass: a change during it wakes the next one.
			changed = a.own.Changed()
		}
		// Ready after the first pass even when the runtime is unreachable:
		// the daemon then says so in its status and keeps retrying.
		if err := a.discover(ctx); err != nil {
			if ctx.Err() == nil && err.Error() != lastErr {
				a.log.Warn("discovery failed; retrying every second", "err", err)
			}
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		a.mu.Lock()
		a.lastLoop = a.now()
		a.mu.Unlock()
		readyOnce()
		select {
		case <-ctx.Done():
			a.wg.Wait()
			return nil
		case <-t.C:
		case <-changed:
		}
	}
}

func (a *Agent) discover(ctx context.Context) error {
	a.mu.Lock()
	known := a.runtimeName != ""
	a.mu.Unlock()
	if !known {
		v, err := a.rt.Version(ctx)
		a.mu.Lock()
		a.runtimeName = v
		if err != nil {
			a.runtimeErr = err.Error()
		}
		a.mu.Unlock()
		if err != nil {
			return fmt.Errorf("runtime unreachable: %w", err)
		}
		a.log.Info("runtime reachable", "runtime", v)
	}
	pods, err := a.rt.ListPods(ctx)
	if err != nil {
		a.mu.Lock()
		a.runtimeErr = err.Error()
		a.mu.Unlock()
		return err
	}
	found, problems := discovery.Find(pods, a.cfg().Defaults)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runtimeErr = ""
	a.noteCopies(found)
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Error())
	}
	if fmt.Sprint(msgs) != fmt.Sprint(a.problems) {
		for _, p := range problems {
			a.log.Error("annotated pod skipped", "pod", p.Pod, "err", p.Err)
		}
	}
	a.problems = msgs
	// Forget fenced sandboxes that are gone.
	live := map[string]bool{}
	for _, p := range pods {
		live[p.SandboxID] = true
	}
	for id := range a.fencing {
		if !live[id] {
			delete(a.fencing, id)
		}
	}
	seen := map[store.Workload]bool{}
	view := a.view()
	a.unpark()
	for _, w := range found {
		if view != nil {
			verdict, known := view.Admit(w)
			if !known && !view.Fenced && view.Connected {
				a.report(ownership.Report{Kind: ownership.Unregistered, Workload: w, CopyEpoch: view.CopyEpoch(w)})
			}
			switch verdict {
			case ownership.Stop:
				// The copy is removed only after its worker has finished what
				// it is doing (a dump or a restore in flight): removing a pod
				// under CRIU leaves its processes frozen.
				var wk *worker
				if x, ok := a.workers[w.ID]; ok {
					wk = x
					wk.close()
					delete(a.workers, w.ID)
				}
				why := view.FenceWhy
				if !view.Fenced {
					e := view.Workloads[w.ID.String()]
					why = fmt.Sprintf("%s owns it at epoch %d (this copy: epoch %d)", e.Owner, e.Epoch, view.CopyEpoch(w))
				}
				a.fence(ctx, w, wk, why)
				continue
			case ownership.Wait:
				if _, ok := a.workers[w.ID]; !ok {
					continue
				}
			}
		}
		seen[w.ID] = true
		if a.awaitingKubelet(w) {
			continue
		}
		if wk, ok := a.workers[w.ID]; ok && !wk.exited() {
			wk.update(w)
			continue
		}
		wk := newWorker(a, w)
		if old, ok := a.workers[w.ID]; ok {
			wk.inherit(old) // a restore made a new copy: one history
		} else if old, ok := a.gone[w.ID]; ok {
			wk.inherit(old)
			delete(a.gone, w.ID)
		}
		a.workers[w.ID] = wk
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer close(wk.done)
			wk.run(ctx)
		}()
		a.log.Info("workload found", "workload", w.ID.String(), "container_id", short(w.ContainerID), "interval", w.Interval, "probe_port", w.Probe.Port, "epoch", w.Epoch)
	}
	for id, wk := range a.workers {
		if !seen[id] && (!wk.isBusy() || wk.exited()) {
			a.log.Info("workload gone", "workload", id.String())
			wk.close()
			delete(a.workers, id)
			if a.gone == nil {
				a.gone = map[store.Workload]*worker{}
			}
			a.gone[id] = wk // its story goes on if the workload comes back (a restore handed to kubelet)
		}
	}
	return nil
}

// Status reports the node and its workloads.
func (a *Agent) Status() api.Status {
	a.mu.Lock()
	s := api.Status{Node: a.settings.Node, Runtime: a.runtimeName, RuntimeErr: a.runtimeErr, Method: a.settings.Method,
		Started: a.started, DataDir: a.dataDir, Problems: append([]string(nil), a.problems...)}
	ws := make([]*worker, 0, len(a.workers))
	for _, w := range a.workers {
		ws = append(ws, w)
	}
	a.mu.Unlock()
	for _, w := range ws {
		s.Workloads = append(s.Workloads, w.status())
	}
	sort.Slice(s.Workloads, func(i, j int) bool { return s.Workloads[i].ID < s.Workloads[j].ID })
	return s
}

// Checkpoints lists the stored checkpoints of one workload ("ns/pod/ctr"),
// or of all when workload is empty, newest first per workload.
func (a *Agent) Checkpoints(workload string) ([]api.CheckpointInfo, error) {
	var ids []store.Workload
	if workload != "" {
		id, err := store.ParseWorkload(workload)
		if err != nil {
			return nil, err
		}
		ids = []store.Workload{id}
	} else {
		var err error
		if ids, err = a.store.Workloads(); err != nil {
			return nil, err
		}
	}
	var out []api.CheckpointInfo
	for _, id := range ids {
		es, err := a.store.List(id)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			out = append(out, infoOf(e))
		}
	}
	return out, nil
}

func infoOf(e store.Entry) api.CheckpointInfo {
	return api.CheckpointInfo{Workload: e.Workload.String(), Seq: e.Seq, Path: e.Path, SHA256: e.SHA256, Size: e.Size,
		Created: e.Created, Duration: e.Duration, Method: e.Method, Source: e.Source, Bad: e.Bad}
}

// StatusLine is the one-line summary for systemd's STATUS=.
func (a *Agent) StatusLine() string {
	s := a.Status()
	if s.Runtime == "" && s.RuntimeErr != "" {
		return "runtime unreachable, retrying: " + s.RuntimeErr
	}
	var newest time.Time
	failures, failed := 0, 0
	for _, w := range s.Workloads {
		if w.Last != nil && w.Last.Created.After(newest) {
			newest = w.Last.Created
		}
		failures += w.CheckpointFailures
		if w.State == stateFailed {
			failed++
		}
	}
	line := fmt.Sprintf("%d workload(s)", len(s.Workloads))
	if !newest.IsZero() {
		line += fmt.Sprintf(", last checkpoint %s ago", a.now().Sub(newest).Round(100*time.Millisecond))
	}
	line += fmt.Sprintf(", %d checkpoint failure(s)", failures)
	if failed > 0 {
		line += fmt.Sprintf(", %d given up", failed)
	}
	if s.RuntimeErr != "" {
		line += ", runtime error: " + s.RuntimeErr
	}
	return line
}

// takeCheckpoint checkpoints one container with the configured method and
// commits the archive to the store.
func (a *Agent) takeCheckpoint(ctx context.Context, w discovery.Workload) (store.Entry, error) {
	set := a.cfg()
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	case <-ctx.Done():
		return store.Entry{}, ctx.Err()
	}
	start := a.now()
	meta := store.Entry{Created: start, Source: set.Node}
	method := set.Method
	a.mu.Lock()
	kc := a.kubelet
	a.mu.Unlock()
	if method == MethodAuto && kc == nil {
		method = MethodCRI
	}
	if method == MethodAuto {
		a.mu.Lock()
		paused := a.now().Before(a.kubeletPaused)
		a.mu.Unlock()
		if paused {
			method = MethodCRI
		}
	}
	if method == MethodKubelet || method == MethodAuto {
		if kc == nil {
			return store.Entry{}, errors.New("checkpoint method kubelet, but no kubelet is configured")
		}
		// kubelet knows the pod by its own name (NAME-NODE for a static
		// pod), which can differ from the workload's.
		pod := w.PodName
		if pod == "" {
			pod = w.ID.Pod
		}
		path, err := kc.Checkpoint(ctx, w.ID.Namespace, pod, w.ID.Container, set.CheckpointTimeout)
		if err == nil {
			meta.Method, meta.Duration = MethodKubelet, a.now().Sub(start)
			return a.store.Commit(w.ID, path, meta)
		}
		if method == MethodKubelet || isRuntimeFailure(err) {
			return store.Entry{}, err
		}
		a.mu.Lock()
		a.kubeletPaused = a.now().Add(kubeletCooldown)
		a.mu.Unlock()
		a.log.Warn("kubelet checkpoint failed; using the CRI for a while", "workload", w.ID.String(), "err", err, "retry_kubelet_in", kubeletCooldown)
		start = a.now()
		meta.Created = start
	}
	tmp, err := a.store.TempPath(w.ID)
	if err != nil {
		return store.Entry{}, err
	}
	if a.podLevelMayWork() {
		err := a.checkpointPod(ctx, w, tmp, set.CheckpointTimeout)
		if err == nil {
			meta.Method, meta.Duration = MethodCRIPod, a.now().Sub(start)
			return a.store.Commit(w.ID, tmp, meta)
		}
		removeQuiet(tmp)
		if !errors.Is(err, cri.ErrUnsupported) {
			return store.Entry{}, err
		}
		a.setPodLevel(podLevelUnsupported)
		a.log.Info("the runtime has no pod-level CheckpointPod; using CheckpointContainer", "err", err)
		start = a.now()
		meta.Created = start
	}
	if err := a.rt.CheckpointContainer(ctx, w.ContainerID, tmp, set.CheckpointTimeout); err != nil {
		removeQuiet(tmp)
		return store.Entry{}, err
	}
	meta.Method, meta.Duration = MethodCRI, a.now().Sub(start)
	return a.store.Commit(w.ID, tmp, meta)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
