package state

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// Bounds of what a node may report of itself (a hostile node must not
// bloat the state every node keeps).
const (
	MaxCPUFlags   = 1024
	maxFlagLen    = 64
	maxCapsText   = 1024
	cpuDigestSize = 32
)

func (s *State) nodeCapabilities(c *NodeCapabilities) error {
	what := fmt.Sprintf("record the capabilities of node %q", c.Node)
	if c.Node == "" {
		return fmt.Errorf("%s: node is required: %w", what, ErrInvalid)
	}
	if err := checkCaps(c.Caps); err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, ErrInvalid)
	}
	n := s.Nodes[c.Node]
	if n == nil {
		return fmt.Errorf("%s: %w %q (the leader records a node once it proved its name)", what, ErrUnknownNode, c.Node)
	}
	caps := c.Caps
	caps.CPUFlags = capability.NormalFlags(caps.CPUFlags)
	n.Caps, n.CPUDigest, n.CapsAt = &caps, capability.FlagsDigest(caps.CPUFlags), c.At
	return nil
}

// ClampCapabilities cuts c to what NodeCapabilities accepts: texts to
// their limit, CPU flags longer than their limit left out, at most
// MaxCPUFlags of them (a node proposes what the state can record, instead
// of a report refused for ever).
func ClampCapabilities(c capability.Node) capability.Node {
	cut := func(s string) string {
		if len(s) <= maxCapsText {
			return s
		}
		return s[:maxCapsText-3] + "..."
	}
	c.Runtime.Name, c.Runtime.Version = cut(c.Runtime.Name), cut(c.Runtime.Version)
	c.CheckpointReason, c.RestoreReason, c.Kernel, c.CRIU = cut(c.CheckpointReason), cut(c.RestoreReason), cut(c.Kernel), cut(c.CRIU)
	var flags []string
	for _, f := range c.CPUFlags {
		if len(f) <= maxFlagLen && len(flags) < MaxCPUFlags {
			flags = append(flags, f)
		}
	}
	c.CPUFlags = flags
	return c
}

func checkCaps(c capability.Node) error {
	if len(c.CPUFlags) > MaxCPUFlags {
		return fmt.Errorf("%d CPU flags, more than %d", len(c.CPUFlags), MaxCPUFlags)
	}
	for _, f := range c.CPUFlags {
		if len(f) > maxFlagLen {
			return fmt.Errorf("CPU flag %.16q... is longer than %d bytes", f, maxFlagLen)
		}
	}
	// A slice, not a map: the first field named is the same on every node.
	for _, f := range []struct{ name, v string }{{"runtime name", c.Runtime.Name}, {"runtime version", c.Runtime.Version},
		{"checkpoint reason", c.CheckpointReason}, {"restore path", string(c.Restore)}, {"restore reason", c.RestoreReason},
		{"kernel", c.Kernel}, {"criu", c.CRIU}} {
		if len(f.v) > maxCapsText {
			return fmt.Errorf("%s is longer than %d bytes", f.name, maxCapsText)
		}
	}
	switch c.Restore {
	case "", capability.RestoreCreate, capability.RestorePod, capability.RestoreNative, capability.RestoreNone:
	default:
		return fmt.Errorf("restore path %q is none of %q, %q, %q, %q", c.Restore,
			capability.RestoreCreate, capability.RestorePod, capability.RestoreNative, capability.RestoreNone)
	}
	return nil
}

// checkNeeds checks the needs a committed checkpoint records.
func checkNeeds(cp Checkpoint) error {
	if len(cp.Runtime.Name) > maxCapsText || len(cp.Runtime.Version) > maxCapsText || len(cp.TakenOn) > maxCapsText {
		return fmt.Errorf("runtime or node name longer than %d bytes", maxCapsText)
	}
	if cp.CPU != "" && len(cp.CPU) != cpuDigestSize {
		return fmt.Errorf("CPU digest %.40q is not %d hex digits", cp.CPU, cpuDigestSize)
	}
	return nil
}

func (s *State) unplaceable(c *Unplaceable) error {
	what := fmt.Sprintf("record workload %q at epoch %d as unplaceable", c.ID, c.Epoch)
	if c.ID == "" || c.Reason == "" {
		return fmt.Errorf("%s: id and reason are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	switch {
	case w.Epoch != c.Epoch:
		return fmt.Errorf("%s: %w: the workload is at epoch %d (owner %q)", what, ErrStale, w.Epoch, w.Owner)
	case w.Status == StatusFailed:
		return fmt.Errorf("%s: %w: the workload is %s", what, ErrStatus, w.Status)
	}
	w.LastError = c.Reason
	return nil
}

// validate checks a node record's capabilities: flags sorted and unique,
// the digest theirs.
func (n *Node) validate() error {
	if n.Caps == nil {
		if n.CPUDigest != "" {
			return errors.New("a CPU digest without capabilities")
		}
		return nil
	}
	if !slices.Equal(n.Caps.CPUFlags, capability.NormalFlags(n.Caps.CPUFlags)) {
		return errors.New("CPU flags not sorted, unique and non-empty")
	}
	if d := capability.FlagsDigest(n.Caps.CPUFlags); d != n.CPUDigest {
		return fmt.Errorf("CPU digest %q, the flags' is %q", n.CPUDigest, d)
	}
	return nil
}

// Needs is what checkpoint cp needs of the node that restores it. The CPU
// flags are those of a node whose record has cp's digest (the node that
// took it, first); cpuKnown is false when cp records a digest that no
// node record has any more (the node's CPU changed since): its CPU needs
// are then unknown and not checked.
func (s *State) Needs(cp *Checkpoint) (need capability.Needs, cpuKnown bool) {
	need.Runtime = cp.Runtime
	if cp.CPU == "" {
		return need, true
	}
	if n := s.Nodes[cp.TakenOn]; n != nil && n.Caps != nil && n.CPUDigest == cp.CPU {
		need.CPUFlags = n.Caps.CPUFlags
		return need, true
	}
	for _, name := range sortedKeys(s.Nodes) {
		if n := s.Nodes[name]; n.Caps != nil && n.CPUDigest == cp.CPU {
			need.CPUFlags = n.Caps.CPUFlags
			return need, true
		}
	}
	return need, false
}

// RecordsNeeds reports whether cp records anything it needs.
func (cp *Checkpoint) RecordsNeeds() bool {
	return cp.Runtime != (capability.Runtime{}) || cp.CPU != ""
}

// CanRestore reports whether node name can restore checkpoint cp, and why
// not (capability.Compatible with the node's reported capabilities and
// cp's needs). A node that has not reported its capabilities can restore
// only a checkpoint that records no needs (as before capabilities were
// recorded).
func (s *State) CanRestore(name string, cp *Checkpoint) (bool, string) {
	n := s.Nodes[name]
	switch {
	case n == nil:
		return false, "it is not a node of the cluster"
	case n.Caps == nil && cp.RecordsNeeds():
		return false, "it has not reported what its runtime can restore"
	case n.Caps == nil:
		return true, ""
	}
	need, cpuKnown := s.Needs(cp)
	if !cpuKnown && n.CPUDigest != cp.CPU {
		// The node that took cp reports other CPU flags now: what cp
		// needs is known only by its digest, which only a node with the
		// same flags matches.
		return false, fmt.Sprintf("its CPU flags are not those of the node that took checkpoint #%d (digest %.12s), whose flags the cluster no longer records", cp.Seq, cp.CPU)
	}
	return capability.Compatible(*n.Caps, need)
}

// AtRisk reports whether no node but the owner holds a checkpoint of w
// that it can restore, so that w could not move if its owner failed; why
// names each other holder and why it cannot. A failed workload, or one
// without checkpoints, is not at risk (there is nothing to lose, or
// nothing yet).
func (s *State) AtRisk(w *Workload) (bool, string) {
	if w.Status == StatusFailed || w.Status == StatusRetrying || len(w.Checkpoints) == 0 {
		return false, ""
	}
	reasons := map[string]string{}
	for i := range w.Checkpoints {
		cp := &w.Checkpoints[i]
		for _, h := range cp.Holders {
			if h == w.Owner {
				continue
			}
			ok, why := s.CanRestore(h, cp)
			if ok {
				return false, ""
			}
			if _, seen := reasons[h]; !seen {
				reasons[h] = why
			}
		}
	}
	msg := "at risk: no capable node holds a checkpoint"
	if len(reasons) == 0 {
		return true, msg + " (no node but the owner " + w.Owner + " holds one)"
	}
	parts := make([]string, 0, len(reasons))
	for _, h := range sortedKeys(reasons) {
		parts = append(parts, h+": "+reasons[h])
	}
	return true, msg + " (" + strings.Join(parts, "; ") + ")"
}

// WithNeeds returns cp recording what it needs of its restorer, from the
// capabilities of the node that took it (the runtime, the digest of its
// CPU flags). Capabilities not found out yet (a zero Checked) record
// nothing: the checkpoint needs nothing, as before capabilities existed.
func (cp Checkpoint) WithNeeds(node string, caps capability.Node) Checkpoint {
	if caps.Checked.IsZero() && caps.Runtime == (capability.Runtime{}) {
		return cp
	}
	cp.Runtime, cp.CPU, cp.TakenOn = caps.Runtime, capability.FlagsDigest(caps.CPUFlags), node
	return cp
}
