// Package capability says what a node's container runtime can do with
// checkpoints (take them, restore them, and by which path), and what a
// checkpoint needs of the node that restores it (the runtime that took it,
// the CPU features its processes may use). Detection (detect*.go) asks the
// runtime and the host; compatibility (compat*.go) is pure logic the
// cluster's placement and replication use.
package capability

import "time"

// RestorePath is how a node restores a container from a checkpoint.
type RestorePath string

// The restore paths.
const (
	// RestoreCreate: CRI CreateContainer with a checkpoint archive or
	// image (containerd up to 2.1, 2.2/2.3 with
	// enable_experimental_restore_via_create; CRI-O).
	RestoreCreate RestorePath = "create"
	// RestorePod: CRI RestorePod (cri-api v0.37), where implemented.
	RestorePod RestorePath = "restore-pod"
	// RestoreNative: containerd's own client API, outside the CRI
	// (containerd 2.4 and later, nodes without kubelet).
	RestoreNative RestorePath = "native"
	// RestoreNone: this node cannot restore; Reason says why and what
	// configuration change would let it.
	RestoreNone RestorePath = "none"
)

// Runtime names a container runtime and its version.
type Runtime struct {
	Name    string `json:"name"`    // "containerd" or "cri-o" (as the CRI Version call reports it, lower case)
	Version string `json:"version"` // e.g. "2.1.9", "1.36.3"
}

// Node is what one node can do, as its daemon found out.
type Node struct {
	Runtime Runtime `json:"runtime"`
	// Checkpoint: the runtime can checkpoint a container (CRI
	// CheckpointContainer, or kubelet's API on top of it).
	Checkpoint       bool   `json:"checkpoint"`
	CheckpointReason string `json:"checkpoint_reason,omitempty"` // why not
	// Restore is the path this node restores by; RestoreNone when it
	// cannot, with RestoreReason naming why and the change that would let
	// it (e.g. `set [plugins."io.containerd.cri.v1.runtime"]
	// enable_experimental_restore_via_create = true`).
	Restore       RestorePath `json:"restore"`
	RestoreReason string      `json:"restore_reason,omitempty"`
	Kernel        string      `json:"kernel"`         // uname release
	CRIU          string      `json:"criu,omitempty"` // CRIU version, "" when unknown
	// CPUFlags are the CPU features the node's processors have (the flags
	// of /proc/cpuinfo that CRIU compares), sorted, without duplicates.
	CPUFlags []string  `json:"cpu_flags,omitempty"`
	Checked  time.Time `json:"checked"` // when this was found out
}

// CanRestore reports whether the node can restore at all.
func (n Node) CanRestore() bool { return n.Restore != "" && n.Restore != RestoreNone }

// Needs is what a checkpoint needs of the node that restores it: the
// runtime that took it (archives are runtime-specific) and the CPU
// features of the node that took it.
type Needs struct {
	Runtime  Runtime  `json:"runtime"`
	CPUFlags []string `json:"cpu_flags,omitempty"`
}
