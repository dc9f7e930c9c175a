package agent

import (
	"context"
	"fmt"
	"os"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ociserve"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// StaticPods makes restores go through kubelet: instead of creating the pod
// through the CRI (which kubelet would remove, not having made it), the
// agent writes a static pod manifest whose image is the checkpoint, served
// by this daemon's image endpoint.
type StaticPods struct {
	Dir      string // kubelet's static pod directory
	Endpoint string // host:port of the image endpoint as kubelet's runtime pulls it (localhost:PORT)
}

// restoreCopy brings a checkpoint back as a running copy: through the CRI,
// or, with static pods, by handing kubelet a manifest (then the sandbox and
// container ids are empty: kubelet makes them, and discovery finds them).
func (a *Agent) restoreCopy(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, e store.Entry, epoch uint64) (string, string, error) {
	if a.static != nil {
		path, err := a.writeStaticPod(sb, ctr, e, epoch)
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

func (a *Agent) writeStaticPod(sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, e store.Entry, epoch uint64) (string, error) {
	info, err := archive.Read(e.Path)
	if err != nil {
		return "", err
	}
	pod, err := staticpod.Manifest(staticpod.Options{Workload: e.Workload, Seq: e.Seq, Epoch: epoch,
		Image: ociserve.Ref(a.static.Endpoint, e.Workload, e.Seq), Sandbox: sb, Container: ctr, Info: info})
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(a.static.Dir, 0o755); err != nil {
		return "", fmt.Errorf("static pod directory: %w", err)
	}
	return staticpod.Write(a.static.Dir, pod)
}

// removeStaticPod removes the manifest crfailoverd wrote for a workload,
// if any, so that kubelet stops the copy.
func (a *Agent) removeStaticPod(id store.Workload) error {
	if a.static == nil {
		return nil
	}
	return staticpod.Remove(a.static.Dir, id.Namespace, id.Pod)
}
