// Package nativert is the agent's runtime on a node whose containerd
// restores only through its own client (containerd 2.4 and later, no
// kubelet): it wraps the CRI client and a native restorer
// (nativerestore) so that the agent, which knows only its Runtime
// interface, supervises, checkpoints and fences natively restored copies
// as it does CRI pods. Restores go native; the native containers are
// presented as pods with synthetic sandbox and container IDs
// ("native-<containerd id>") and the registration they were restored
// with; every call about a CRI ID goes to the CRI.
package nativert

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// IDPrefix starts the sandbox and container IDs of native copies; a CRI
// ID (64 hex digits) never does.
const IDPrefix = "native-"

// CRI is what the runtime takes from the CRI client (*cri.Client).
type CRI interface {
	Version(ctx context.Context) (string, error)
	ListPods(ctx context.Context) ([]cri.Pod, error)
	PodNetwork(ctx context.Context, sandboxID string) (ip string, hostNetwork bool, err error)
	SandboxConfig(ctx context.Context, sandboxID string) (*runtimeapi.PodSandboxConfig, error)
	ContainerConfig(ctx context.Context, containerID string) (*runtimeapi.ContainerConfig, error)
	CheckpointContainer(ctx context.Context, containerID, location string, timeout time.Duration) error
	CheckpointPod(ctx context.Context, sandboxID string, containerIDs []string, outDir string, timeout time.Duration) error
	RemovePod(ctx context.Context, sandboxID string) error
}

// Native is what the runtime takes from the native restorer
// (*nativerestore.Restorer).
type Native interface {
	Restore(ctx context.Context, req nativerestore.Request) (nativerestore.Result, error)
	List(ctx context.Context) ([]nativerestore.Container, error)
	Inspect(ctx context.Context, id string) (nativerestore.Info, error)
	Checkpoint(ctx context.Context, id, location string) (nativerestore.CheckpointResult, error)
	Remove(ctx context.Context, id string) error
}

// Runtime is the agent's runtime on a native-restore node.
type Runtime struct {
	cri CRI
	nat Native
	log *slog.Logger
	// newID makes a containerd container ID for a restore (random
	// suffix; tests replace it).
	newID func(sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig) string
	now   func() time.Time

	mu    sync.Mutex
	infos map[string]nativerestore.Info // by containerd ID: what does not change, read once
}

// New returns the runtime over the CRI client c and the restorer n.
func New(c CRI, n Native, log *slog.Logger) *Runtime {
	if log == nil {
		log = slog.Default()
	}
	return &Runtime{cri: c, nat: n, log: log.With("component", "native-runtime"), newID: randomID, now: time.Now, infos: map[string]nativerestore.Info{}}
}

// IsNative reports whether a sandbox or container ID is a native copy's.
func IsNative(id string) bool { return strings.HasPrefix(id, IDPrefix) && len(id) > len(IDPrefix) }

// NativeID is the synthetic sandbox and container ID of containerd
// container id.
func NativeID(id string) string { return IDPrefix + id }

func containerdID(id string) string { return strings.TrimPrefix(id, IDPrefix) }

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// randomID is "crf-<pod>-<8 hex digits>", within containerd's and
// nativerestore's ID rules.
func randomID(sb *runtimeapi.PodSandboxConfig, _ *runtimeapi.ContainerConfig) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := unsafeID.ReplaceAllString(sb.GetMetadata().GetName(), "-")
	if len(name) > 48 {
		name = name[:48]
	}
	return "crf-" + strings.Trim(name, "-._") + "-" + hex.EncodeToString(b[:])
}

// Version is the CRI's.
func (r *Runtime) Version(ctx context.Context) (string, error) { return r.cri.Version(ctx) }

// ListPods lists the CRI's ready pods and, after them, the native copies
// as pods: the sandbox metadata, labels and annotations of their
// registration (the epoch annotation the agent restored with included),
// one container of the registration's name in the state of its task.
func (r *Runtime) ListPods(ctx context.Context) ([]cri.Pod, error) {
	pods, err := r.cri.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := r.nat.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the native copies: %w", err)
	}
	seen := map[string]bool{}
	for _, c := range cs {
		seen[c.ID] = true
		info, err := r.info(ctx, c.ID)
		if err != nil {
			if nativerestore.IsNotFound(err) {
				continue // removed meanwhile
			}
			if errors.Is(err, nativerestore.ErrBadRegistration) {
				// No daemon can supervise or fence it: it must not run
				// beside a copy the cluster places elsewhere.
				r.log.Error("REMOVED a native container whose registration cannot be read", "container", c.ID, "err", err)
				if rerr := r.nat.Remove(ctx, c.ID); rerr != nil {
					return nil, fmt.Errorf("remove native container %s, whose registration cannot be read (%v): %w", c.ID, err, rerr)
				}
				continue
			}
			// A transient failure: no listing rather than one without a
			// live copy (which the cluster would take for lost).
			return nil, fmt.Errorf("list the native copies: %w", err)
		}
		pods = append(pods, podOf(c, info, r.now()))
	}
	r.mu.Lock()
	for id := range r.infos {
		if !seen[id] {
			delete(r.infos, id)
		}
	}
	r.mu.Unlock()
	return pods, nil
}

// info returns container id's Info, asked of containerd once.
func (r *Runtime) info(ctx context.Context, id string) (nativerestore.Info, error) {
	r.mu.Lock()
	info, ok := r.infos[id]
	r.mu.Unlock()
	if ok {
		return info, nil
	}
	info, err := r.nat.Inspect(ctx, id)
	if err != nil {
		return info, err
	}
	r.mu.Lock()
	r.infos[id] = info
	r.mu.Unlock()
	return info, nil
}

// podOf presents a native container as a pod at time now. It does no
// I/O.
func podOf(c nativerestore.Container, info nativerestore.Info, now time.Time) cri.Pod {
	sb, ctr := info.Registration.Sandbox, info.Registration.Container
	md := sb.GetMetadata()
	id := NativeID(c.ID)
	return cri.Pod{
		SandboxID: id, Name: md.GetName(), Namespace: md.GetNamespace(), UID: md.GetUid(), Attempt: md.GetAttempt(),
		Labels: sb.GetLabels(), Annotations: sb.GetAnnotations(), CreatedAt: info.Created,
		Containers: []cri.Container{{
			ID: id, Name: ctr.GetMetadata().GetName(), Attempt: ctr.GetMetadata().GetAttempt(),
			State: stateOf(c.Status, now.Sub(info.Created)), CreatedAt: info.Created, Image: ctr.GetImage().GetImage(),
		}},
	}
}

// restoreWindow bounds how long a container may be without a task
// because it is being restored (between its creation and CRIU's restore
// of its task): within it such a container is created, as the CRI shows
// one made and not yet started; past it, the task is gone (a reboot) and
// the copy has exited.
const restoreWindow = 5 * time.Minute

// stateOf maps a containerd task status to the CRI's container state,
// for a container age old: a paused task (a checkpoint in progress) runs;
// a container without a task is being restored when young (created: a
// listing taken during a restore must not read as the copy's exit), else
// has exited.
func stateOf(status string, age time.Duration) cri.ContainerState {
	switch status {
	case "running", "paused", "pausing":
		return cri.StateRunning
	case "created":
		return cri.StateCreated
	case "":
		if age < restoreWindow {
			return cri.StateCreated
		}
		return cri.StateExited
	case "stopped":
		return cri.StateExited
	}
	return cri.StateUnknown
}

// PodNetwork: a native copy runs in the node's network (the only network
// the native path gives), so the agent probes it on the node.
func (r *Runtime) PodNetwork(ctx context.Context, sandboxID string) (string, bool, error) {
	if IsNative(sandboxID) {
		return "", true, nil
	}
	return r.cri.PodNetwork(ctx, sandboxID)
}

// SandboxConfig of a native copy is its registration's sandbox.
func (r *Runtime) SandboxConfig(ctx context.Context, sandboxID string) (*runtimeapi.PodSandboxConfig, error) {
	if !IsNative(sandboxID) {
		return r.cri.SandboxConfig(ctx, sandboxID)
	}
	info, err := r.info(ctx, containerdID(sandboxID))
	if err != nil {
		return nil, fmt.Errorf("sandbox configuration of native copy %s: %w", sandboxID, err)
	}
	return proto.Clone(info.Registration.Sandbox).(*runtimeapi.PodSandboxConfig), nil
}

// ContainerConfig of a native copy is its registration's container.
func (r *Runtime) ContainerConfig(ctx context.Context, containerID string) (*runtimeapi.ContainerConfig, error) {
	if !IsNative(containerID) {
		return r.cri.ContainerConfig(ctx, containerID)
	}
	info, err := r.info(ctx, containerdID(containerID))
	if err != nil {
		return nil, fmt.Errorf("container configuration of native copy %s: %w", containerID, err)
	}
	return proto.Clone(info.Registration.Container).(*runtimeapi.ContainerConfig), nil
}

// CheckpointContainer checkpoints a native copy through containerd's
// client (an archive Restore takes again), a CRI container through the
// CRI.
func (r *Runtime) CheckpointContainer(ctx context.Context, containerID, location string, timeout time.Duration) error {
	if !IsNative(containerID) {
		return r.cri.CheckpointContainer(ctx, containerID, location, timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := r.nat.Checkpoint(ctx, containerdID(containerID), location)
	return err
}

// CheckpointPod is the CRI's; a native copy has no pod-level checkpoint.
func (r *Runtime) CheckpointPod(ctx context.Context, sandboxID string, containerIDs []string, outDir string, timeout time.Duration) error {
	if IsNative(sandboxID) {
		return fmt.Errorf("pod-level checkpoint of native copy %s: %w", sandboxID, cri.ErrUnsupported)
	}
	return r.cri.CheckpointPod(ctx, sandboxID, containerIDs, outDir, timeout)
}

// RestorePod is not what a native node does: the agent then restores per
// container.
func (r *Runtime) RestorePod(context.Context, string, *runtimeapi.PodSandboxConfig, []*runtimeapi.ContainerConfig) (string, []string, error) {
	return "", nil, fmt.Errorf("RestorePod on a native-restore node: %w", cri.ErrUnsupported)
}

// RestoreContainer restores archive natively with the registration sb and
// ctr (the agent's, with its epoch annotation), and returns the copy's
// synthetic sandbox and container IDs.
func (r *Runtime) RestoreContainer(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, archive string) (string, string, error) {
	reg := restorecfg.Config{Sandbox: proto.Clone(sb).(*runtimeapi.PodSandboxConfig), Container: proto.Clone(ctr).(*runtimeapi.ContainerConfig)}
	id := r.newID(sb, ctr)
	res, err := r.nat.Restore(ctx, nativerestore.Request{ID: id, Archive: archive, Registration: reg})
	if err != nil {
		return "", "", err
	}
	r.mu.Lock()
	r.infos[id] = nativerestore.Info{ID: id, Created: r.now().Add(-res.Total), Image: res.Image, Registration: reg}
	r.mu.Unlock()
	return NativeID(id), NativeID(id), nil
}

// RemovePod removes a native copy (kill, delete task and container;
// nothing there is not an error), or a CRI pod through the CRI.
func (r *Runtime) RemovePod(ctx context.Context, sandboxID string) error {
	if !IsNative(sandboxID) {
		return r.cri.RemovePod(ctx, sandboxID)
	}
	id := containerdID(sandboxID)
	if err := r.nat.Remove(ctx, id); err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.infos, id)
	r.mu.Unlock()
	return nil
}

// Wanted reports whether a node whose CRI reports runtime name and
// version restores natively: by capability's rules, a containerd that
// has no CRI restore (2.4 and later) on a node without kubelet. It does no
// I/O.
func Wanted(name, version string, kubelet bool) bool {
	n := capability.Decide(capability.Inputs{Name: name, Version: version, NativeRestore: true, Kubelet: kubelet})
	return n.Restore == capability.RestoreNative
}
