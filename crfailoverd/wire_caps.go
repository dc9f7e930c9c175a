package main

import (
	"context"
	"log/slog"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/agent"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/metrics"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
)

// criCapabilities asks the CRI client what capability.Detect needs.
type criCapabilities struct{ rt *cri.Client }

func (c criCapabilities) RuntimeVersion(ctx context.Context) (string, string, error) {
	return c.rt.RuntimeVersion(ctx)
}

func (c criCapabilities) CheckpointConfig(ctx context.Context) (capability.RuntimeConfig, error) {
	cfg, err := c.rt.CheckpointConfig(ctx)
	return capability.RuntimeConfig(cfg), err
}

func (c criCapabilities) RestorePodImplemented(ctx context.Context) (bool, error) {
	return c.rt.RestorePodImplemented(ctx)
}

// capabilityDeps are Detect's inputs on this node. A kubelet node is one
// whose restores go through kubelet static pods or whose checkpoints go
// through kubelet only: the native path (native: this daemon has it) is
// for the others. CRIU is asked where it is on PATH (or /usr/sbin), else
// left unknown.
func capabilityDeps(c config.Config, rt capability.RuntimeAsker, native bool) capability.Deps {
	kubelet := staticpod.Mode(c.Runtime.RestoreMode, c.Runtime.StaticPodDir) == staticpod.ModeStaticPod ||
		c.Checkpoint.Method == agent.MethodKubelet
	return capability.Deps{Runtime: rt, Host: capability.SystemHost{CRIU: capability.FindCRIU()},
		NativeRestore: native, Kubelet: kubelet}
}

// newCapabilities returns the holder of what this node's runtime can do,
// and the daemon component that finds it out at start and every
// capability.RefreshInterval and sets the capability gauges at each
// change. native: this daemon has the native restore path (false until
// it is wired).
func newCapabilities(c config.Config, rt *cri.Client, rec *metrics.Recorder, native bool, log *slog.Logger) (*capability.Watch, component) {
	return newCapabilitiesWith(capabilityDeps(c, criCapabilities{rt}, native), rec, log)
}

func newCapabilitiesWith(deps capability.Deps, rec *metrics.Recorder, log *slog.Logger) (*capability.Watch, component) {
	w := capability.NewWatch(func(ctx context.Context) (capability.Node, error) { return capability.Detect(ctx, deps) },
		log.With("component", "capabilities"))
	return w, component{"capabilities", func(ctx context.Context) error {
		done := make(chan struct{})
		go func() {
			defer close(done)
			followCapabilities(ctx, w, rec)
		}()
		err := w.Run(ctx, capability.RefreshInterval)
		<-done
		return err
	}}
}

// followCapabilities sets the gauges from the watch now and after each
// change, until ctx ends.
func followCapabilities(ctx context.Context, w *capability.Watch, rec *metrics.Recorder) {
	for {
		changed := w.Changes() // before Current: a change after it closes this channel
		n := w.Current()
		rec.SetCapabilities(n.Checkpoint, string(n.Restore))
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// capabilitiesOf is what api.Status carries: nil before the first
// detection.
func capabilitiesOf(w *capability.Watch) *capability.Node {
	if w == nil {
		return nil
	}
	n := w.Current()
	if n.Checked.IsZero() {
		return nil
	}
	return &n
}

// capabilitiesStatus is what the systemd STATUS line adds: "; cannot
// restore: REASON" on a node that cannot restore, "" on one that can or
// before the first detection.
func capabilitiesStatus(w *capability.Watch) string {
	n := capabilitiesOf(w)
	if n == nil || n.CanRestore() {
		return ""
	}
	return "; " + n.CannotRestore()
}
