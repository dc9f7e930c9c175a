// Package fenceguard kills a node's copies when its daemon stops renewing
// its lease: a frozen (SIGSTOP) or killed daemon cannot fence its own
// copies, and the cluster restores them elsewhere no sooner than
// lastHeard + lease + StopLatency (see package failover's safety contract).
//
// The guard is a separate process (crfailoverd fence-guard) in its own
// session. The daemon connects to its unix socket and sends a [Renewal]
// every 250 ms: a deadline on CLOCK_MONOTONIC derived from its last real
// quorum contact (last contact + lease - 500 ms) and the local copies with
// their init PIDs. When the deadline passes without a later one, the guard
// SIGKILLs each copy through a pidfd, after checking the PID's start time
// and cgroup (PID reuse), and thaws a frozen cgroup so that the kill takes
// effect. A renewal without quorum contact never extends the deadline.
//
// The decisions (state.go) do no I/O; proc.go reads /proc and kills;
// server.go and client.go speak the protocol: one JSON object per line,
// each renewal answered by a [Reply].
package fenceguard

import (
	"fmt"
	"time"
)

// Margin is how much earlier than lastHeard + lease the guard kills: peers
// restore no sooner than lastHeard + lease + StopLatency (500 ms), and the
// kill plus the exit of the copy fit in the 1 s between.
const Margin = 500 * time.Millisecond

// RenewEvery is how often the daemon renews.
const RenewEvery = 250 * time.Millisecond

// SocketName is the guard's socket in the daemon's data directory.
const SocketName = "fence-guard.sock"

// Copy is one local copy the guard kills when the deadline passes.
type Copy struct {
	ContainerID string `json:"container_id"`
	PID         int    `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat (clock ticks after boot):
	// with the PID it names one process, whatever PID reuse does.
	StartTime uint64 `json:"start_time"`
	// Cgroup is /proc/PID/cgroup as read when the copy was listed.
	Cgroup string `json:"cgroup"`
	// Manifest is the kubelet static pod manifest that runs the copy ("":
	// none). The guard moves it to the renewal's ParkDir before the kill,
	// so that kubelet does not start the copy again; the daemon puts it
	// back, or deletes it, once the cluster says who owns the workload.
	Manifest string `json:"manifest,omitempty"`
}

func (c Copy) String() string { return fmt.Sprintf("container %s (pid %d)", c.ContainerID, c.PID) }

// key names the process a copy is.
type key struct {
	pid   int
	start uint64
}

func (c Copy) key() key { return key{c.PID, c.StartTime} }

// Renewal is what the daemon sends.
type Renewal struct {
	DaemonPID int `json:"daemon_pid"`
	// Contact: Deadline is derived from real quorum contact of this
	// daemon. Without it the guard keeps the deadline it has.
	Contact bool `json:"contact"`
	// Deadline is in nanoseconds on CLOCK_MONOTONIC (only with Contact).
	Deadline int64 `json:"deadline_mono_ns,omitempty"`
	// Copies are the local copies the daemon found (added to those the
	// guard knows; the guard forgets a copy only once its process is gone).
	Copies []Copy `json:"copies"`
	// ParkDir is where manifests go (DATA_DIR/parked, the directory the
	// daemon's agent unparks from).
	ParkDir string `json:"park_dir,omitempty"`
	// Stop asks the guard to exit once nothing is left to guard: at once
	// when it has no deadline or no live copy, else after the deadline
	// passed and the copies are killed. A later renewal with Contact
	// cancels it (the daemon was restarted, not stopped).
	Stop bool `json:"stop,omitempty"`
}

// Reply answers every renewal.
type Reply struct {
	GuardPID int    `json:"guard_pid"`
	Armed    bool   `json:"armed"`
	Deadline int64  `json:"deadline_mono_ns"`
	Copies   int    `json:"copies"`
	Killed   int    `json:"killed"` // copies killed since the guard started
	Stopping bool   `json:"stopping,omitempty"`
	Err      string `json:"err,omitempty"`
}
