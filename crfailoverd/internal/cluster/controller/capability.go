package controller

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// capsRetry is the least time between two reports of the same
// capabilities (a refused or lost one is sent again after it).
const capsRetry = 2 * time.Second

// capsReport is the state of this node's capability reports (under c.mu).
type capsReport struct {
	inFlight bool
	last     capability.Node // the last one sent
	at       time.Time       // when
}

// reportCapabilities proposes this node's capabilities when the state
// records other ones (or none), once the state records the node (the
// leader records it once it proved its name), one report at a time.
func (c *Controller) reportCapabilities(ctx context.Context, st *state.State) {
	if c.o.Capabilities == nil {
		return
	}
	caps := state.ClampCapabilities(c.o.Capabilities())
	n := st.Nodes[c.o.Node]
	if n == nil || (caps.Checked.IsZero() && caps.Runtime == (capability.Runtime{})) {
		return // not recorded yet, or not found out yet
	}
	if n.Caps != nil && SameCapabilities(*n.Caps, caps) {
		return
	}
	now := time.Now()
	c.mu.Lock()
	if c.capsReport.inFlight || (SameCapabilities(c.capsReport.last, caps) && now.Sub(c.capsReport.at) < capsRetry) {
		c.mu.Unlock()
		return
	}
	c.capsReport = capsReport{inFlight: true, last: caps, at: now}
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := c.o.Proposer.Apply(ctx, &state.NodeCapabilities{At: time.Now(), Node: c.o.Node, Caps: caps})
		c.mu.Lock()
		c.capsReport.inFlight = false
		c.mu.Unlock()
		switch {
		case err == nil:
			c.log.Info("reported this node's capabilities to the cluster", "runtime", caps.Runtime.String(), "restore", string(caps.Restore),
				"restore_reason", caps.RestoreReason, "cpu_flags", len(caps.CPUFlags))
		case errors.Is(err, state.ErrUnknownNode), ctx.Err() != nil:
			c.log.Debug("reporting this node's capabilities must wait", "err", err)
		default:
			c.log.Warn("reporting this node's capabilities failed; retrying", "err", err)
		}
	}()
}

// SameCapabilities reports whether a and b say the same, apart from when
// they were found out (Checked) and the order of the CPU flags.
func SameCapabilities(a, b capability.Node) bool {
	return a.Runtime == b.Runtime && a.Checkpoint == b.Checkpoint && a.CheckpointReason == b.CheckpointReason &&
		a.Restore == b.Restore && a.RestoreReason == b.RestoreReason && a.Kernel == b.Kernel && a.CRIU == b.CRIU &&
		slices.Equal(capability.NormalFlags(a.CPUFlags), capability.NormalFlags(b.CPUFlags))
}

// withNeeds is cp recording what it needs, from this node's capabilities.
func (c *Controller) withNeeds(cp state.Checkpoint) state.Checkpoint {
	if c.o.Capabilities == nil {
		return cp
	}
	return cp.WithNeeds(c.o.Node, c.o.Capabilities())
}
