// Package state is the data of crfailoverd's replicated state machine and
// its pure apply logic: which workloads the cluster protects, which node
// owns (runs, or must restore) each one at which epoch, which checkpoints
// of it exist and which nodes hold a verified copy, and the cluster's nodes.
//
// Every change is a [Command]: encoded as one type byte and a JSON payload
// ([Encode], [Decode]), applied by [State.Apply] through a dispatch table.
// Apply is deterministic: it reads no clock (commands carry their own At)
// and either applies a command completely or returns an error and leaves
// the state unchanged, so every node that applies the same log holds the
// same state. Snapshots are a header and typed records
// ([State.WriteSnapshot], [ReadSnapshot]).
//
// # Ownership and fencing
//
// A workload's Epoch rises by one with every placement change (see
// [Place]); a node runs a copy of a workload at the epoch it was started or
// restored at. A node may keep a copy only while the workload's Owner is
// that node at that Epoch: commands from a stale owner or of a stale epoch
// fail with an error wrapping [ErrStale], which tells the proposer to stop
// its copy.
//
// The package does no locking: the caller (the Raft FSM) serialises Apply
// and hands readers a [State.Clone].
package state

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// Errors returned (wrapped) by Apply.
var (
	// ErrStale: the proposer is not the workload's owner at the epoch it
	// named, or its report is of an attempt the cluster has moved past. A
	// node that gets it must stop its copy of the workload.
	ErrStale = errors.New("stale owner or epoch")
	// ErrStatus: the workload is not in a status the command applies to.
	ErrStatus = errors.New("workload not in the required status")
	// ErrUnknownWorkload: no workload with the command's ID.
	ErrUnknownWorkload = errors.New("unknown workload")
	// ErrUnknownNode: the command names a node the cluster does not know.
	ErrUnknownNode = errors.New("unknown node")
	// ErrInvalid: the command lacks a required field or has a bad value.
	ErrInvalid = errors.New("invalid command")
	// ErrUnknownCommand: a command type this version does not know, without
	// the [IgnoreUnknownFlag].
	ErrUnknownCommand = errors.New("unknown command type")
)

// Checkpoint of a workload known to the cluster.
type Checkpoint struct {
	Seq     uint64    `json:"seq"` // per-workload sequence (assigned by the taking node's store)
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Holders []string  `json:"holders"` // node names holding a verified copy, sorted, no duplicates
	// What the checkpoint needs of the node that restores it (see
	// [State.Needs]): the runtime that took it, and the digest
	// (capability.FlagsDigest) of the CPU flags of TakenOn, the node that
	// took it, whose Node record holds the flags themselves. All empty for
	// a checkpoint taken before capabilities were recorded: it needs
	// nothing.
	Runtime capability.Runtime `json:"runtime,omitzero"`
	CPU     string             `json:"cpu,omitempty"`
	TakenOn string             `json:"taken_on,omitempty"`
	// Bad, when set, says why this checkpoint must not be restored again:
	// a copy restored from it failed on its own (FailKind.Own) within
	// QuickFailWindow of its restore (the checkpoint caught the
	// application dying). Only MarkCheckpointBad sets it. Placements pass
	// over it (failover rule 6).
	Bad string `json:"bad,omitempty"`
}

// QuickFailWindow: a restored copy whose application fails on its own
// (AppFailed of a FailKind.Own kind) within this long of its restore being
// reported has the checkpoint it was restored from marked Bad by the
// leader (MarkCheckpointBad). Long enough for the owner to notice a copy that
// exits at once (its lost-copy grace of 5 s included), short enough that a
// copy that ran for a while (and checkpointed again) does not condemn it.
const QuickFailWindow = 10 * time.Second

// Try is a failed restore attempt: Node could not restore checkpoint Seq.
type Try struct {
	Node  string `json:"node"`
	Seq   uint64 `json:"seq"`
	Error string `json:"error"`
}

// Status of a workload in the cluster.
type Status string

// Workload status values.
const (
	StatusRunning   Status = "running"    // owner runs it
	StatusRestoring Status = "restoring"  // owner was told to restore it at Epoch from Seq
	StatusAppFailed Status = "app-failed" // owner reported the application failed; wants it restored on a peer
	StatusFailed    Status = "failed"     // gave up: no candidate left, or attempts exhausted
	// StatusRetrying: the leader retries a failed workload (RetryWorkload):
	// no node owns it, so every node stops any copy of it, until the leader
	// places it once the fence wait has passed (or gives it up again).
	StatusRetrying Status = "retrying"
)

// Workload is a container the cluster protects.
type Workload struct {
	ID          string        `json:"id"`     // "namespace/pod/container"
	Owner       string        `json:"owner"`  // node that runs it (or must restore it); "" only when failed
	Epoch       uint64        `json:"epoch"`  // starts at 1; every placement change is Epoch+1
	Status      Status        `json:"status"` // one of the Status constants
	Seq         uint64        `json:"seq"`    // for restoring: the checkpoint to restore from
	Reason      string        `json:"reason"` // why the last placement was made
	Since       time.Time     `json:"since"`  // when Status was last set (from the command's At)
	Interval    time.Duration `json:"interval_ns"`
	Config      []byte        `json:"config"`      // opaque restore configuration (JSON the daemon writes)
	Checkpoints []Checkpoint  `json:"checkpoints"` // newest (highest Seq) first, at most MaxCheckpoints
	Tried       []Try         `json:"tried"`       // failed restore attempts since the workload last ran; reset on success
	LastError   string        `json:"last_error"`
	// RestoredFrom and RestoredAt: the checkpoint the running copy was
	// restored from, and when its restore was reported (zero for a copy
	// that was registered, not restored by a placement).
	RestoredFrom uint64    `json:"restored_from,omitempty"`
	RestoredAt   time.Time `json:"restored_at,omitzero"`
	// FailKind is the Kind of the last AppFailed (empty: none, or the
	// reporter could not tell).
	FailKind FailKind `json:"fail_kind,omitempty"`
}

// AttemptFailed reports whether the current placement's restore attempt
// has already been recorded as failed: the workload is restoring and its
// last Try is the owner's, of the checkpoint it was told to restore. (A
// placement never repeats a tried (node, checkpoint) pair, so the last Try
// can only match the current attempt.)
func (w *Workload) AttemptFailed() bool {
	if w.Status != StatusRestoring || len(w.Tried) == 0 {
		return false
	}
	last := w.Tried[len(w.Tried)-1]
	return last.Node == w.Owner && last.Seq == w.Seq
}

// Checkpoint returns the workload's checkpoint seq, or nil.
func (w *Workload) Checkpoint(seq uint64) *Checkpoint {
	for i := range w.Checkpoints {
		if w.Checkpoints[i].Seq == seq {
			return &w.Checkpoints[i]
		}
	}
	return nil
}

// Node is a member of the cluster.
type Node struct {
	Name    string    `json:"name"`
	RPCAddr string    `json:"rpc_addr"`
	Joined  time.Time `json:"joined"`
	// Caps is what the node's runtime can do, as the node last reported
	// it (NodeCapabilities); nil until it does. CPUDigest is
	// capability.FlagsDigest(Caps.CPUFlags), CapsAt the report's time.
	Caps      *capability.Node `json:"caps,omitempty"`
	CPUDigest string           `json:"cpu_digest,omitempty"`
	CapsAt    time.Time        `json:"caps_at,omitzero"`
}

// MaxCheckpoints is how many checkpoints per workload the state keeps.
const MaxCheckpoints = 5

// State is the replicated state: workloads by ID, nodes by name.
type State struct {
	Workloads map[string]*Workload
	Nodes     map[string]*Node
}

// New returns an empty state.
func New() *State {
	return &State{Workloads: map[string]*Workload{}, Nodes: map[string]*Node{}}
}

// Clone returns a deep copy, which callers may read without the lock that
// guards the original.
func (s *State) Clone() *State {
	c := &State{
		Workloads: make(map[string]*Workload, len(s.Workloads)),
		Nodes:     make(map[string]*Node, len(s.Nodes)),
	}
	for id, w := range s.Workloads {
		c.Workloads[id] = w.Clone()
	}
	for name, n := range s.Nodes {
		c.Nodes[name] = n.Clone()
	}
	return c
}

// Clone returns a deep copy of n.
func (n *Node) Clone() *Node {
	c := *n
	if n.Caps != nil {
		caps := *n.Caps
		caps.CPUFlags = slices.Clone(n.Caps.CPUFlags)
		c.Caps = &caps
	}
	return &c
}

// Clone returns a deep copy of w.
func (w *Workload) Clone() *Workload {
	c := *w
	c.Config = bytes.Clone(w.Config)
	c.Tried = slices.Clone(w.Tried)
	c.Checkpoints = slices.Clone(w.Checkpoints)
	for i := range c.Checkpoints {
		c.Checkpoints[i].Holders = slices.Clone(c.Checkpoints[i].Holders)
	}
	return &c
}

// Validate checks the state's own invariants: keys match names, statuses
// are known, only a failed workload lacks an owner, epochs start at 1,
// checkpoints are at most MaxCheckpoints with strictly decreasing
// sequence numbers, and holder lists are sorted without duplicates. Apply
// keeps them; ReadSnapshot checks them.
func (s *State) Validate() error {
	for name, n := range s.Nodes {
		if n == nil || n.Name != name || name == "" {
			return fmt.Errorf("node %q: record missing or named differently", name)
		}
		if err := n.validate(); err != nil {
			return fmt.Errorf("node %q: %w", name, err)
		}
	}
	for id, w := range s.Workloads {
		if w == nil || w.ID != id || id == "" {
			return fmt.Errorf("workload %q: record missing or named differently", id)
		}
		if err := w.validate(); err != nil {
			return fmt.Errorf("workload %q: %w", id, err)
		}
	}
	return nil
}

func (w *Workload) validate() error {
	switch w.Status {
	case StatusRunning, StatusRestoring, StatusAppFailed:
		if w.Owner == "" {
			return fmt.Errorf("status %s without an owner", w.Status)
		}
	case StatusFailed, StatusRetrying:
		if w.Owner != "" {
			return fmt.Errorf("status %s with owner %s", w.Status, w.Owner)
		}
	default:
		return fmt.Errorf("unknown status %q", w.Status)
	}
	if w.Epoch == 0 {
		return errors.New("epoch 0")
	}
	if len(w.Checkpoints) > MaxCheckpoints {
		return fmt.Errorf("%d checkpoints, more than %d", len(w.Checkpoints), MaxCheckpoints)
	}
	for i, cp := range w.Checkpoints {
		if cp.Seq == 0 {
			return errors.New("checkpoint with seq 0")
		}
		if i > 0 && cp.Seq >= w.Checkpoints[i-1].Seq {
			return fmt.Errorf("checkpoint #%d after #%d: not newest first", cp.Seq, w.Checkpoints[i-1].Seq)
		}
		for j, h := range cp.Holders {
			if h == "" || (j > 0 && h <= cp.Holders[j-1]) {
				return fmt.Errorf("checkpoint #%d: holders %q not sorted, unique and non-empty", cp.Seq, cp.Holders)
			}
		}
	}
	return nil
}
