package capability

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// RefreshInterval is how often the daemon finds out again what its
// runtime can do (a runtime upgraded or reconfigured in place).
const RefreshInterval = 5 * time.Minute

// Watch holds the node's capabilities as last found out, refreshes them,
// and signals each change.
type Watch struct {
	detect func(context.Context) (Node, error)
	log    *slog.Logger

	mu      sync.Mutex
	cur     Node
	have    bool          // cur was found out at least once
	lastErr string        // the last detection error logged at warning
	changed chan struct{} // closed at the next change
}

// NewWatch returns a Watch that finds out with detect (Detect with the
// node's Deps, as a closure). Nothing is detected until Refresh or Run.
func NewWatch(detect func(context.Context) (Node, error), log *slog.Logger) *Watch {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watch{detect: detect, log: log, changed: make(chan struct{})}
}

// Current returns the capabilities last found out (the zero Node before
// the first detection: no runtime, Restore "", which CanRestore reports
// as false).
func (w *Watch) Current() Node {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.cur
	n.CPUFlags = slices.Clone(n.CPUFlags)
	return n
}

// Changes returns a channel closed at the next change of the
// capabilities (the first detection counts as one); after it is closed,
// call Changes again for the one after.
func (w *Watch) Changes() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Run finds out at once, then every interval, until ctx ends; it returns
// nil then.
func (w *Watch) Run(ctx context.Context, every time.Duration) error {
	w.Refresh(ctx)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Refresh(ctx)
		}
	}
}

// Refresh finds out now and reports whether the capabilities changed
// (ignoring when they were checked). A change is logged at info; a node
// that cannot restore logs why, and the change that would let it, at
// warning once per change.
func (w *Watch) Refresh(ctx context.Context) bool {
	n, err := w.detect(ctx)
	if ctx.Err() != nil {
		return false // stopping: a cancelled detection says nothing of the node
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil && err.Error() != w.lastErr {
		w.log.Warn("runtime capabilities: not everything could be found out", "err", err)
	} else if err != nil {
		w.log.Debug("runtime capabilities: not everything could be found out", "err", err)
	}
	w.lastErr = ""
	if err != nil {
		w.lastErr = err.Error()
	}
	first := !w.have
	old := w.cur
	w.cur, w.have = n, true
	if !first && Same(old, n) {
		return false
	}
	msg := "runtime capabilities changed"
	if first {
		msg = "runtime capabilities"
	}
	w.log.Info(msg, "runtime", n.Runtime.String(), "checkpoint", n.Checkpoint, "restore", string(n.Restore),
		"kernel", n.Kernel, "criu", n.CRIU, "cpu_flags", len(n.CPUFlags))
	if !n.CanRestore() && (first || old.CanRestore() || old.RestoreReason != n.RestoreReason) {
		w.log.Warn("this node cannot restore checkpoints: "+n.RestoreReason, "runtime", n.Runtime.String(),
			"checkpoint", n.Checkpoint, "reason", n.RestoreReason)
	}
	close(w.changed)
	w.changed = make(chan struct{})
	return true
}

// Same reports whether two findings say the same of the node (all but
// when they were checked).
func Same(a, b Node) bool {
	return a.Runtime == b.Runtime && a.Checkpoint == b.Checkpoint && a.CheckpointReason == b.CheckpointReason &&
		a.Restore == b.Restore && a.RestoreReason == b.RestoreReason && a.Kernel == b.Kernel && a.CRIU == b.CRIU &&
		slices.Equal(a.CPUFlags, b.CPUFlags)
}
