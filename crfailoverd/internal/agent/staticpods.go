package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ociserve"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// StaticPods makes restores go through kubelet: instead of creating the pod
// through the CRI (which kubelet would remove, not having made it), the
// agent writes a static pod manifest whose image is the checkpoint, served
// by this daemon's image endpoint.
//
// On a kubelet node crfailoverd owns a protected static pod: after the
// first checkpoint of a pod from the user's own manifest, it moves that
// manifest out of kubelet's directory (into DATA_DIR/adopted/, where the
// operator finds it again) and restores the pod from the checkpoint under
// a manifest of its own, with restartPolicy Never. From then on kubelet
// runs only crfailoverd's manifest: kubelet never restarts the
// application fresh beside or instead of a restore, a restore replaces the
// pod instead of adding one, and a copy the cluster stops has no manifest
// left to start again.
type StaticPods struct {
	Dir      string // kubelet's static pod directory
	Endpoint string // host:port of the image endpoint as kubelet's runtime pulls it (localhost:PORT)
}

// handoff is a restore handed to kubelet: until kubelet runs the pod of
// that manifest (its AnnCheckpoint is checkpoint), discovery ignores the
// older pods of the workload, one of which is still listed (exited, or
// being stopped by kubelet), so that one failure hands over one restore.
type handoff struct {
	checkpoint string
	at         time.Time
}

// handoffWait is how long discovery waits for kubelet to run a handed-over
// pod before it looks after whatever pod of the workload it finds again.
const handoffWait = 2 * time.Minute

// restoreCopy brings a checkpoint back as a running copy: through the CRI,
// or, with static pods, by handing kubelet a manifest (then the sandbox and
// container ids are empty: kubelet makes them, and discovery finds them).
func (a *Agent) restoreCopy(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, e store.Entry, epoch uint64) (string, string, error) {
	if a.static != nil {
		path, err := a.writeStaticPod(ctx, sb, ctr, e, epoch)
		if err != nil {
			return "", "", err
		}
		a.log.Info("handed the restore to kubelet as a static pod", "workload", e.Workload.String(), "seq", e.Seq, "manifest", path)
		return "", "", nil
	}
	restore := a.rt.RestoreContainer
	if e.Method == MethodCRIPod {
		restore = a.restorePod
	}
	return restore(ctx, sb, ctr, e.Path)
}

// baseImages is implemented by runtimes (the CRI client) that need the
// checkpoint's base image pulled before a restore (CRI-O).
type baseImages interface {
	EnsureBaseImage(ctx context.Context, sb *runtimeapi.PodSandboxConfig, archivePath string) error
}

func (a *Agent) writeStaticPod(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, e store.Entry, epoch uint64) (string, error) {
	info, err := archive.Read(e.Path)
	if err != nil {
		return "", err
	}
	if bi, ok := a.rt.(baseImages); ok {
		if err := bi.EnsureBaseImage(ctx, sb, e.Path); err != nil {
			return "", err
		}
	}
	pod, err := staticpod.Manifest(staticpod.Options{Workload: e.Workload, Seq: e.Seq, Epoch: epoch,
		Image: ociserve.Ref(a.static.Endpoint, e.Workload, e.Seq), Sandbox: sb, Container: ctr, Info: info})
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(a.static.Dir, 0o755); err != nil {
		return "", fmt.Errorf("static pod directory: %w", err)
	}
	a.mu.Lock()
	if a.handoffs == nil {
		a.handoffs = map[store.Workload]handoff{}
	}
	a.handoffs[e.Workload] = handoff{checkpoint: pod.Annotations[discovery.AnnCheckpoint], at: a.now()}
	a.mu.Unlock()
	path, err := staticpod.Write(a.static.Dir, pod)
	if err != nil {
		a.mu.Lock()
		delete(a.handoffs, e.Workload)
		a.mu.Unlock()
	}
	return path, err
}

// awaitingKubelet reports whether discovery should pass over the pod w
// found: a restore of its workload was handed to kubelet, whose pod is not
// this one, and kubelet has had less than handoffWait to run it. Called
// with a.mu held.
func (a *Agent) awaitingKubelet(w discovery.Workload) bool {
	h, ok := a.handoffs[w.ID]
	switch {
	case !ok:
		return false
	case w.Checkpoint == h.checkpoint:
		delete(a.handoffs, w.ID)
		a.log.Info("kubelet runs the restored pod", "workload", w.ID.String(), "checkpoint", h.checkpoint, "pod", w.PodName,
			"handed_over_ms", a.now().Sub(h.at).Milliseconds())
		return false
	case a.now().Sub(h.at) < handoffWait:
		return true
	}
	a.log.Warn("kubelet has not run the handed-over restore; looking after the pod it runs instead", "workload", w.ID.String(),
		"checkpoint", h.checkpoint, "handed_over", h.at, "sandbox_id", short(w.SandboxID))
	delete(a.handoffs, w.ID)
	return false
}

// handedOver reports whether a restore of id waits for kubelet.
func (a *Agent) handedOver(id store.Workload) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.handoffs[id]
	return ok && a.now().Sub(h.at) < handoffWait
}

// adoptedDir keeps the users' manifests crfailoverd took over.
func (a *Agent) adoptedDir() string { return filepath.Join(a.dataDir, "adopted") }

// parkedDir keeps crfailoverd's manifests held back at start until the
// cluster says this node owns their workloads.
func (a *Agent) parkedDir() string { return filepath.Join(a.dataDir, "parked") }

// takeUserManifest moves the user's manifest of workload id out of
// kubelet's directory into DATA_DIR/adopted/ (the copy is fsynced before
// the original goes). It returns the manifest's former path, or "" when
// the directory has none.
func (a *Agent) takeUserManifest(id store.Workload) (string, error) {
	path, b, err := staticpod.FindUserManifest(a.static.Dir, id.Namespace, id.Pod)
	if err != nil || path == "" {
		return "", err
	}
	if err := moveFile(path, filepath.Join(a.adoptedDir(), filepath.Base(path)), b); err != nil {
		return "", fmt.Errorf("adopt the static pod manifest %s of %s: %w", path, id, err)
	}
	a.log.Info("took over the user's static pod manifest; kubelet now runs crfailoverd's", "workload", id.String(),
		"manifest", path, "kept_in", filepath.Join(a.adoptedDir(), filepath.Base(path)))
	return path, nil
}

// moveFile writes b (the content of from) to to, fsynced, then removes
// from and fsyncs its directory.
func moveFile(from, to string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(to, b, 0o600); err != nil {
		return err
	}
	if err := os.Remove(from); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(from))
}

// removeStaticPod removes the manifests of a workload from kubelet's
// directory, crfailoverd's and a user's (which it keeps, as adoption
// does), so that kubelet stops the copy and does not start it again.
func (a *Agent) removeStaticPod(id store.Workload) error {
	if a.static == nil {
		return nil
	}
	if _, err := a.takeUserManifest(id); err != nil {
		return err
	}
	return staticpod.Remove(a.static.Dir, id.Namespace, id.Pod)
}

// replaceFirst is what a local restore of copy w removes first. A pod
// kubelet runs is stopped through kubelet (stopKubeletPods); a pod of the
// user's manifest is adopted on the way (its manifest is moved away).
func (a *Agent) replaceFirst(w discovery.Workload) func(context.Context) error {
	if a.static != nil && w.StaticPod {
		return func(ctx context.Context) error {
			if w.Checkpoint == "" {
				if path, _, err := staticpod.FindUserManifest(a.static.Dir, w.ID.Namespace, w.ID.Pod); err != nil {
					return err
				} else if path == "" {
					return fmt.Errorf("no manifest of pod %s/%s in %s: kubelet would restart it beside the restore", w.ID.Namespace, w.ID.Pod, a.static.Dir)
				}
			}
			return a.stopKubeletPods(ctx, w.ID, []string{w.SandboxID})
		}
	}
	return func(ctx context.Context) error { return a.rt.RemovePod(ctx, w.SandboxID) }
}

// kubeletStopWait bounds how long stopKubeletPods waits for kubelet.
const kubeletStopWait = 15 * time.Second

// stopKubeletPods stops static pods of workload id that kubelet runs (the
// sandboxes given) through kubelet: it removes their manifests and waits
// until kubelet has removed the sandboxes. Removing a sandbox through the
// CRI instead would have kubelet start the pod again, fresh, while its
// manifest is there; and a new pod of the same name that kubelet gets
// while the old one is still terminating waits for kubelet's next retry,
// about 10 s later. A sandbox still there after kubeletStopWait is
// removed through the CRI.
func (a *Agent) stopKubeletPods(ctx context.Context, id store.Workload, sandboxes []string) error {
	if err := a.removeStaticPod(id); err != nil {
		return err
	}
	start := a.now()
	deadline := start.Add(kubeletStopWait)
	for {
		left, err := a.sandboxesLeft(ctx, sandboxes)
		if err != nil {
			return err
		}
		if len(left) == 0 {
			a.log.Debug("kubelet stopped the pod", "workload", id.String(), "took_ms", a.now().Sub(start).Milliseconds())
			return nil
		}
		if a.now().After(deadline) {
			a.log.Warn("kubelet has not stopped the pod; removing it through the CRI", "workload", id.String(), "waited", kubeletStopWait)
			for _, sb := range left {
				if err := a.rt.RemovePod(ctx, sb); err != nil {
					return err
				}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sandboxesLeft returns those of sandboxes the runtime still lists.
func (a *Agent) sandboxesLeft(ctx context.Context, sandboxes []string) ([]string, error) {
	pods, err := a.rt.ListPods(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pods while waiting for kubelet to stop a pod: %w", err)
	}
	listed := map[string]bool{}
	for _, p := range pods {
		listed[p.SandboxID] = true
	}
	var left []string
	for _, sb := range sandboxes {
		if listed[sb] {
			left = append(left, sb)
		}
	}
	return left, nil
}

// parkManifests runs at start, before the first discovery, on a clustered
// node with static pods: crfailoverd's manifests whose pods do not run
// (the node booted, and kubelet has not started them yet) are moved to
// DATA_DIR/parked until the cluster says whether this node still owns
// them (unpark). A node that was down may have lost its workloads to a
// failover meanwhile: kubelet must not start those copies again, not even
// for the moment until the daemon has caught up with the cluster. The
// daemon's systemd unit starts before kubelet's for this.
func (a *Agent) parkManifests(ctx context.Context) error {
	if a.static == nil || a.own == nil {
		return nil
	}
	mine, err := staticpod.List(a.static.Dir)
	if err != nil || len(mine) == 0 {
		return err
	}
	pods, err := a.rt.ListPods(ctx)
	if err != nil {
		return fmt.Errorf("list pods before parking static pod manifests: %w", err)
	}
	found, _ := discovery.Find(pods, a.cfg().Defaults)
	running := map[store.Workload]bool{}
	for _, w := range found {
		running[w.ID] = running[w.ID] || w.State == cri.StateRunning
	}
	for path, pod := range mine {
		id, err := store.ParseWorkload(pod.Annotations[discovery.AnnWorkload])
		if err != nil || running[id] {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := moveFile(path, filepath.Join(a.parkedDir(), filepath.Base(path)), b); err != nil {
			return fmt.Errorf("park the static pod manifest %s: %w", path, err)
		}
		a.log.Info("parked a static pod manifest until the cluster says this node still owns the workload", "workload", id.String(), "manifest", path)
	}
	return nil
}

// unpark puts parked manifests back once this node is connected to the
// cluster: those of workloads it owns at the manifest's epoch go back to
// kubelet; those another node owns now (or at a later epoch) are deleted.
// Called with a.mu held.
func (a *Agent) unpark() {
	v := a.view()
	if a.static == nil || v == nil || !v.Connected || v.Fenced {
		return
	}
	des, err := os.ReadDir(a.parkedDir())
	if err != nil {
		return
	}
	for _, de := range des {
		path := filepath.Join(a.parkedDir(), de.Name())
		pod, err := staticpod.Load(path)
		if err != nil {
			a.log.Error("cannot read a parked static pod manifest", "manifest", path, "err", err)
			continue
		}
		id := pod.Annotations[discovery.AnnWorkload]
		e, known := v.Workloads[id]
		if !known {
			continue
		}
		epoch, _ := strconv.ParseUint(pod.Annotations[discovery.AnnEpoch], 10, 64)
		if e.Owner == v.Node && max(epoch, 1) == e.Epoch && !e.Failed() {
			b, err := os.ReadFile(path)
			if err == nil {
				err = moveFile(path, filepath.Join(a.static.Dir, de.Name()), b)
			}
			if err != nil {
				a.log.Error("cannot put a parked static pod manifest back", "manifest", path, "err", err)
				continue
			}
			a.log.Info("this node still owns the workload: its static pod manifest goes back to kubelet", "workload", id, "epoch", e.Epoch)
			continue
		}
		if err := os.Remove(path); err != nil {
			a.log.Error("cannot delete a parked static pod manifest", "manifest", path, "err", err)
			continue
		}
		a.log.Info("deleted a parked static pod manifest: the cluster moved the workload", "workload", id, "owner", e.Owner, "epoch", e.Epoch)
	}
}
