// Package api holds the JSON types of crfailoverd's admin socket, shared by
// the daemon and its CLI.
package api

import (
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// Status is the answer to GET /v1/status.
type Status struct {
	Node       string           `json:"node"`
	Version    string           `json:"version"`
	Runtime    string           `json:"runtime"`       // "containerd 2.1.9", or empty while unreachable
	RuntimeErr string           `json:"runtime_error"` // why the runtime is unreachable
	Method     string           `json:"method"`        // configured checkpoint method
	Started    time.Time        `json:"started"`
	ConfigFile string           `json:"config_file"`
	DataDir    string           `json:"data_dir"`
	Workloads  []WorkloadStatus `json:"workloads"`
	Problems   []string         `json:"problems"` // annotated pods that were skipped, with why
	// Capabilities: what the node's runtime can do (checkpoint, restore
	// path or why none, kernel, CRIU, CPU flags), as last found out; nil
	// before the first detection.
	Capabilities *capability.Node `json:"capabilities,omitempty"`
}

// WorkloadStatus is one checkpointed container.
type WorkloadStatus struct {
	ID                  string          `json:"id"` // namespace/pod/container
	SandboxID           string          `json:"sandbox_id"`
	ContainerID         string          `json:"container_id"`
	State               string          `json:"state"` // running, exited, restoring, failed (gave up)
	Interval            time.Duration   `json:"interval_ns"`
	Checkpoints         int             `json:"checkpoints"` // taken since the daemon started
	Last                *CheckpointInfo `json:"last,omitempty"`
	NextDue             time.Time       `json:"next_due"`
	CheckpointFailures  int             `json:"checkpoint_failures"`
	ConsecutiveFailures int             `json:"consecutive_failures"`
	LastError           string          `json:"last_error,omitempty"`
	ProbeFailures       int             `json:"probe_failures"` // in a row, now
	Restores            int             `json:"restores"`
	LastRestore         *RestoreInfo    `json:"last_restore,omitempty"`
}

// CheckpointInfo describes one checkpoint in the store.
type CheckpointInfo struct {
	Workload string        `json:"workload"`
	Seq      uint64        `json:"seq"`
	Path     string        `json:"path"`
	SHA256   string        `json:"sha256"`
	Size     int64         `json:"size"`
	Created  time.Time     `json:"created"`
	Duration time.Duration `json:"duration_ns"`
	Method   string        `json:"method"`
	Source   string        `json:"source"`
	Bad      bool          `json:"bad"`
}

// RestoreInfo describes the last restore of a workload.
type RestoreInfo struct {
	At         time.Time     `json:"at"`
	Reason     string        `json:"reason"`
	Seq        uint64        `json:"seq"`
	Age        time.Duration `json:"checkpoint_age_ns"` // age of the checkpoint used
	Duration   time.Duration `json:"duration_ns"`       // the CRI calls
	Attempts   int           `json:"attempts"`
	OK         bool          `json:"ok"`
	Error      string        `json:"error,omitempty"`
	NewSandbox string        `json:"new_sandbox_id,omitempty"`
}

// Member is a node of the cluster as the answering node sees it.
type Member struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"`
	RPCAddr   string    `json:"rpc_addr"`
	Status    string    `json:"status"` // alive, suspect, dead, left
	DeadSince time.Time `json:"dead_since"`
	Raft      string    `json:"raft"` // Voter, Nonvoter, or "" when not in Raft
	Leader    bool      `json:"leader"`
	// Capabilities: the member's runtime and restore path as it gossips
	// them ("containerd 2.1.9 restore=create"), "" when it does not.
	Capabilities string `json:"capabilities,omitempty"`
}

// RaftInfo is the Raft view of the answering node.
type RaftInfo struct {
	Node         string        `json:"node"`
	State        string        `json:"state"`
	Leader       string        `json:"leader"`
	LeaderAddr   string        `json:"leader_addr"`
	LastIndex    uint64        `json:"last_index"`
	AppliedIndex uint64        `json:"applied_index"`
	LastContact  time.Duration `json:"last_contact_ns"`
	Fenced       bool          `json:"fenced"`
	FenceReason  string        `json:"fence_reason,omitempty"`
	Peers        []RaftPeer    `json:"peers"`
}

// RaftPeer is a server of the Raft configuration.
type RaftPeer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
	Leader  bool   `json:"leader"`
}

// ClusterWorkload is a workload in the cluster state.
type ClusterWorkload struct {
	ID        string             `json:"id"`
	Owner     string             `json:"owner"`
	Epoch     uint64             `json:"epoch"`
	Status    string             `json:"status"`
	Reason    string             `json:"reason"`
	Since     time.Time          `json:"since"`
	Interval  time.Duration      `json:"interval_ns"`
	Newest    *ClusterCheckpoint `json:"newest,omitempty"`
	Tried     []string           `json:"tried,omitempty"`
	LastError string             `json:"last_error,omitempty"`
	// AtRisk: "at risk: no capable node holds a checkpoint (NODE: why;
	// ...)" when no node but the owner holds a checkpoint it can restore;
	// "" otherwise.
	AtRisk string `json:"at_risk,omitempty"`
}

// ClusterCheckpoint is a checkpoint recorded in the cluster state.
type ClusterCheckpoint struct {
	Seq     uint64    `json:"seq"`
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Holders []string  `json:"holders"`
	// Runtime is the runtime that took it ("containerd 2.1.9"), which a
	// restorer must run; "" when not recorded.
	Runtime string `json:"runtime,omitempty"`
}

// MigrateRequest asks for a planned migration.
type MigrateRequest struct {
	Workload string `json:"workload"`
	To       string `json:"to"`
}

// MigrateResult reports a migration.
type MigrateResult struct {
	Seq      uint64        `json:"seq"`
	Downtime time.Duration `json:"downtime_ns"`
}

// Event is one entry of the daemon's recent events (GET /v1/events).
type Event struct {
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Kind     string            `json:"kind"`
	Workload string            `json:"workload,omitempty"`
	Message  string            `json:"message"`
	Fields   map[string]string `json:"fields,omitempty"`
}
