package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/agent"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativert"
)

// nativeStateDir is where natively restored containers keep their files
// (the extracted checkpoint during a restore or checkpoint, the files
// bound into the container, its log), under the data directory:
// containerd must see it at the same path.
func nativeStateDir(c config.Config) string { return filepath.Join(c.Node.DataDir, "nativerestore") }

// newRuntime returns the agent's runtime: the CRI client itself, unless
// the runtime is a containerd without CRI restore (2.4 and later) on a
// node without kubelet; then the native adapter (nativert) over the CRI
// client and a native restorer connected to the same socket, and native
// is true (the capability detection's NativeRestore). closeFn closes what
// newRuntime opened (not the CRI client). A runtime that cannot be asked
// its version at start is used through the CRI (logged): the path is
// chosen again at the next start.
func newRuntime(ctx context.Context, c config.Config, criClient *cri.Client, log *slog.Logger) (rt agent.Runtime, native bool, closeFn func(), err error) {
	noop := func() {}
	name, version, err := runtimeVersion(ctx, criClient, log)
	newNative := func() (*nativerestore.Restorer, error) {
		return nativerestore.New(c.Runtime.SocketPath(), nativerestore.Options{
			StateDir: nativeStateDir(c),
			Log:      log.With("component", "native-restore"),
		})
	}
	if err != nil {
		// Copies this daemon restored natively before it stopped must
		// still be supervised and fenced: if containerd's own API answers
		// and holds any, the native path is kept.
		if r, nerr := newNative(); nerr == nil {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // ctx may be spent on the retries
			cs, lerr := r.List(lctx)
			cancel()
			if lerr == nil && len(cs) > 0 {
				log.Warn("cannot ask the runtime its version, but containerd holds copies restored natively: keeping the native path", "err", err, "native_copies", len(cs))
				return nativert.New(criClient, r, log), true, func() { _ = r.Close() }, nil
			}
			_ = r.Close()
		}
		log.Warn("cannot ask the runtime its version; restoring through the CRI (the native path is chosen at start only)", "err", err)
		return criClient, false, noop, nil
	}
	kubelet := capabilityDeps(c, nil, false).Kubelet
	if !nativert.Wanted(name, version, kubelet) {
		return criClient, false, noop, nil
	}
	r, err := newNative()
	if err != nil {
		return nil, false, noop, fmt.Errorf("runtime %s %s restores only natively: %w", name, version, err)
	}
	log.Info("restoring natively through containerd's client (no CRI restore in this runtime, no kubelet on this node)",
		"runtime", name, "version", version, "containerd_namespace", nativerestore.Namespace, "state_dir", nativeStateDir(c))
	return nativert.New(criClient, r, log), true, func() { _ = r.Close() }, nil
}

// runtimeVersion asks the runtime its name and version, retrying once a
// second until ctx ends (a runtime restarted just before this daemon
// answers a moment later).
func runtimeVersion(ctx context.Context, criClient *cri.Client, log *slog.Logger) (string, string, error) {
	for try := 1; ; try++ {
		name, version, err := criClient.RuntimeVersion(ctx)
		if err == nil || ctx.Err() != nil {
			return name, version, err
		}
		if try == 1 {
			log.Info("the runtime does not answer yet; asking again every second", "err", err)
		}
		select {
		case <-ctx.Done():
			return "", "", err
		case <-time.After(time.Second):
		}
	}
}
