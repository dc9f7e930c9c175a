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
// that manifest (its AnnCheckpoint and AnnEpoch are checkpoint and epoch:
// the same checkpoint may be restored again at a later epoch), discovery
// ignores the older pods of the workload, one of which is still listed
// (exited, or being stopped by kubelet), so that one failure hands over
// one restore.
type handoff struct {
	checkpoint string
	epoch      uint64 // the manifest's epoch annotation (0: none)
	at         time.Time
}

// handoffWait is how long discovery waits for kubelet to run a handed-over
// pod before it looks after whatever pod of the workload it finds again.
const handoffWait = 2 * time.Minute

// handoffRunning is how long a handed-over restore counts as a running
// copy for the cluster (Running) while kubelet has not run it: kubelet
// runs one within a second or two on the bed; one it cannot start (a
// restore the runtime refuses, over and over) is then reported lost, and
// the cluster places the workload again.
const handoffRunning = 30 * time.Second

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
	// The runtime restores from a file: the archive decrypted into a 0600
	// file, deleted as soon as the runtime call returns.
	path, remove, err := a.store.PlaintextFile(ctx, e)
	if err != nil {
		return "", "", err
	}
	defer remove()
	return restore(ctx, sb, ctr, path)
}

// baseImages is implemented by runtimes (the CRI client) that need the
// checkpoint's base image pulled before a restore (CRI-O).
type baseImages interface {
	EnsureBaseImage(ctx context.Context, sb *runtimeapi.PodSandboxConfig, archivePath string) error
}

// namedBaseImages is baseImages given the base image's name (read from the
// archive through the store) instead of an archive file, which would have
// to be decrypted in full first.
type namedBaseImages interface {
	EnsureBaseImageNamed(ctx context.Context, sb *runtimeapi.PodSandboxConfig, image string) error
}

func (a *Agent) writeStaticPod(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, e store.Entry, epoch uint64) (string, error) {
	info, err := a.archiveInfo(e)
	if err != nil {
		return "", err
	}
	if bi, ok := a.rt.(namedBaseImages); ok {
		// The image is named in the archive's info: no plaintext copy.
		if err := bi.EnsureBaseImageNamed(ctx, sb, info.Image); err != nil {
			return "", err
		}
	} else if bi, ok := a.rt.(baseImages); ok {
		path, remove, err := a.store.PlaintextFile(ctx, e)
		if err != nil {
			return "", err
		}
		err = bi.EnsureBaseImage(ctx, sb, path)
		remove()
		if err != nil {
			return "", err
		}
	}
	if epoch == 0 {
		// A local restore keeps the copy's epoch, which Manifest would
		// drop with the other crfailoverd.io annotations of the sandbox.
		epoch, _ = strconv.ParseUint(sb.GetAnnotations()[discovery.AnnEpoch], 10, 64)
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
	a.handoffs[e.Workload] = handoff{checkpoint: pod.Annotations[discovery.AnnCheckpoint], epoch: epoch, at: a.now()}
	a.mu.Unlock()
	path, err := staticpod.Write(a.static.Dir, pod)
	if err != nil {
		a.mu.Lock()
		delete(a.handoffs, e.Workload)
		a.mu.Unlock()
	}
	return path, err
}

// archiveInfo reads what e's archive says of itself, through the store
// (the archive may be sealed).
func (a *Agent) archiveInfo(e store.Entry) (*archive.Info, error) {
	ar, err := a.store.OpenArchive(e)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	return archive.ReadFrom(ar, ar.Size(), fmt.Sprintf("of %s seq %d", e.Workload, e.Seq))
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
	case w.Checkpoint == h.checkpoint && w.Epoch == h.epoch:
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

// ImagePending reports whether a restore of w from checkpoint seq is
// handed to kubelet on this node and kubelet has not run it yet (for at
// most handoffWait): the image endpoint serves that checkpoint, and no
// other, to the pulls of the node.
func (a *Agent) ImagePending(w store.Workload, seq uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.handoffs[w]
	return ok && h.checkpoint == w.String()+":"+strconv.FormatUint(seq, 10) && a.now().Sub(h.at) < handoffWait
}

// handedOver reports whether a restore of id waits for kubelet, for at
// most handoffRunning.
func (a *Agent) handedOver(id store.Workload) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.handoffs[id]
	return ok && a.now().Sub(h.at) < handoffRunning
}

// adoptedDir keeps the users' manifests crfailoverd took over.
func (a *Agent) adoptedDir() string { return filepath.Join(a.dataDir, "adopted") }

// parkedDir keeps crfailoverd's manifests held back at start until the
// cluster says this node owns their workloads.
func (a *Agent) parkedDir() string { return filepath.Join(a.dataDir, "parked") }

// taken is a user's manifest moved out of kubelet's directory.
type taken struct{ from, kept string }

// takeUserManifests moves the user's manifests of workload id out of
// kubelet's directory into DATA_DIR/adopted/NAMESPACE_POD.yaml (a new
// name when that exists: nothing kept there is overwritten); the copy is
// fsynced before the original goes.
func (a *Agent) takeUserManifests(id store.Workload) ([]taken, error) {
	found, err := staticpod.FindUserManifests(a.static.Dir, id.Namespace, id.Pod)
	if err != nil {
		return nil, err
	}
	var out []taken
	for from, b := range found {
		kept := filepath.Join(a.adoptedDir(), id.Namespace+"_"+id.Pod+".yaml")
		for n := 1; fileExists(kept); n++ {
			kept = filepath.Join(a.adoptedDir(), fmt.Sprintf("%s_%s.%d.yaml", id.Namespace, id.Pod, n))
		}
		if err := moveFile(from, kept, b); err != nil {
			return out, fmt.Errorf("adopt the static pod manifest %s of %s: %w", from, id, err)
		}
		a.log.Info("took over the user's static pod manifest; kubelet now runs crfailoverd's", "workload", id.String(),
			"manifest", from, "kept_in", kept)
		out = append(out, taken{from, kept})
	}
	return out, nil
}

// giveBack puts users' manifests taken over back into kubelet's directory
// (a take-over or a restore that failed after them).
func (a *Agent) giveBack(id store.Workload, ts []taken) {
	for _, t := range ts {
		b, err := os.ReadFile(t.kept)
		if err == nil {
			err = moveFile(t.kept, t.from, b)
		}
		if err != nil {
			a.log.Error("cannot put the user's static pod manifest back; do it by hand", "workload", id.String(), "kept_in", t.kept, "manifest", t.from, "err", err)
			continue
		}
		a.log.Warn("put the user's static pod manifest back: kubelet runs it again", "workload", id.String(), "manifest", t.from)
	}
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// moveFile writes b (the content of from) to to, fsynced, then removes
// from (a symbolic link itself, not its target) and fsyncs its directory.
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

// removeStaticPod removes every manifest of a workload from kubelet's
// directory, crfailoverd's and the user's (which it keeps, as a take-over
// does), so that kubelet stops its copies and does not start them again.
func (a *Agent) removeStaticPod(id store.Workload) error {
	if a.static == nil {
		return nil
	}
	if _, err := a.takeUserManifests(id); err != nil {
		return err
	}
	return staticpod.Remove(a.static.Dir, id.Namespace, id.Pod)
}

// removeManifestOf removes the manifest that runs copy w, and no other:
// crfailoverd's manifest only while it still is the one of w's checkpoint
// and epoch (a newer placement on this node may have replaced it), or the
// user's for a pod of the user's manifest.
func (a *Agent) removeManifestOf(w discovery.Workload) error {
	if w.Checkpoint == "" {
		_, err := a.takeUserManifests(w.ID)
		return err
	}
	path := filepath.Join(a.static.Dir, staticpod.FileName(w.ID.Namespace, w.ID.Pod))
	pod, err := staticpod.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	epoch, _ := strconv.ParseUint(pod.Annotations[discovery.AnnEpoch], 10, 64)
	if pod.Annotations[discovery.AnnCheckpoint] != w.Checkpoint || epoch != w.Epoch {
		a.log.Info("the static pod manifest is a newer copy's; leaving it", "workload", w.ID.String(),
			"manifest_checkpoint", pod.Annotations[discovery.AnnCheckpoint], "manifest_epoch", epoch, "copy_checkpoint", w.Checkpoint, "copy_epoch", w.Epoch)
		return nil
	}
	return staticpod.Remove(a.static.Dir, w.ID.Namespace, w.ID.Pod)
}

// replaceFirst is what a local restore of copy w removes first. A pod
// kubelet runs is stopped through kubelet (stopKubeletPods); a pod of the
// user's manifest is adopted on the way (its manifest moved away, and
// recorded in *ts so that a failed restore can give it back). For a pod of
// kubelet's a failure fails the restore: kubelet would keep the old copy
// beside the new one.
func (a *Agent) replaceFirst(w discovery.Workload, ts *[]taken) func(context.Context) error {
	if a.static != nil && w.StaticPod {
		return func(ctx context.Context) error {
			remove := func() error { return a.removeManifestOf(w) }
			if w.Checkpoint == "" {
				remove = func() error {
					got, err := a.takeUserManifests(w.ID)
					*ts = append(*ts, got...)
					if err == nil && len(got) == 0 {
						return fmt.Errorf("%w: no manifest of pod %s/%s in %s (is node.name kubelet's node name?): kubelet would keep running it beside the restore",
							errKubeletCopy, w.ID.Namespace, w.ID.Pod, a.static.Dir)
					}
					return err
				}
			}
			if err := a.stopKubeletPods(ctx, w.ID, []string{w.SandboxID}, remove); err != nil {
				return fmt.Errorf("%w: %w", errKubeletCopy, err)
			}
			return nil
		}
	}
	return func(ctx context.Context) error { return a.rt.RemovePod(ctx, w.SandboxID) }
}

// errKubeletCopy marks a copy kubelet runs that could not be stopped: a
// restore must not go on beside it.
var errKubeletCopy = errors.New("kubelet's copy not stopped")

// kubeletStopWait bounds how long stopKubeletPods waits for kubelet.
const kubeletStopWait = 15 * time.Second

// stopKubeletPods stops static pods of workload id that kubelet runs (the
// sandboxes given) through kubelet: it removes their manifests (remove) and waits
// until kubelet has removed the sandboxes. Removing a sandbox through the
// CRI instead would have kubelet start the pod again, fresh, while its
// manifest is there; and a new pod of the same name that kubelet gets
// while the old one is still terminating waits for kubelet's next retry,
// about 10 s later. A sandbox still there after kubeletStopWait is
// removed through the CRI.
func (a *Agent) stopKubeletPods(ctx context.Context, id store.Workload, sandboxes []string, remove func() error) error {
	if err := remove(); err != nil {
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
	// Without the runtime's word every manifest is parked: unpark puts
	// back those of workloads this node still owns.
	pods, err := a.rt.ListPods(ctx)
	if err != nil {
		a.log.Warn("cannot list pods before parking static pod manifests; parking them all", "err", err)
		pods = nil
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
// kubelet (unless a newer manifest has taken their place); the others
// (another node owns the workload, a later epoch, a newer manifest) are
// deleted.
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
		dest := filepath.Join(a.static.Dir, de.Name())
		if e.Owner == v.Node && max(epoch, 1) == e.Epoch && !e.Failed() && !fileExists(dest) {
			b, err := os.ReadFile(path)
			if err == nil {
				err = moveFile(path, dest, b)
			}
			if err != nil {
				a.log.Error("cannot put a parked static pod manifest back", "manifest", path, "err", err)
				continue
			}
			// Until kubelet runs it the copy counts as handed over, not lost.
			if wid, err := store.ParseWorkload(id); err == nil {
				if a.handoffs == nil {
					a.handoffs = map[store.Workload]handoff{}
				}
				a.handoffs[wid] = handoff{checkpoint: pod.Annotations[discovery.AnnCheckpoint], epoch: epoch, at: a.now()}
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
