package capability

import (
	"fmt"
	"strings"
)

// Summary is the node's capabilities on one line, as `crfailoverd
// status` prints them: "containerd 2.1.9, checkpoint yes, restore
// create, kernel 6.18.44, CRIU 4.2.1, 97 CPU flags"; a node that cannot
// restore says "restore none: REASON" (and "checkpoint no: REASON").
func (n Node) Summary() string {
	var b strings.Builder
	b.WriteString(n.Runtime.String())
	if n.Checkpoint {
		b.WriteString(", checkpoint yes")
	} else {
		b.WriteString(", checkpoint no")
		if n.CheckpointReason != "" && n.CheckpointReason != n.RestoreReason {
			b.WriteString(" (" + n.CheckpointReason + ")")
		}
	}
	if n.CanRestore() {
		b.WriteString(", restore " + string(n.Restore))
	} else {
		b.WriteString(", restore none")
	}
	crui := n.CRIU
	if crui == "" {
		crui = "unknown"
	}
	kernel := n.Kernel
	if kernel == "" {
		kernel = "unknown"
	}
	fmt.Fprintf(&b, ", kernel %s, CRIU %s, %d CPU flags", kernel, crui, len(n.CPUFlags))
	if !n.CanRestore() && n.RestoreReason != "" {
		b.WriteString(": " + n.RestoreReason)
	}
	return b.String()
}

// CannotRestore is "cannot restore: REASON" for a node that cannot
// restore, "" for one that can: what the systemd STATUS line adds.
func (n Node) CannotRestore() string {
	if n.CanRestore() {
		return ""
	}
	r := n.RestoreReason
	if r == "" {
		r = "unknown"
	}
	return "cannot restore: " + r
}
