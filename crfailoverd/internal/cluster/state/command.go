package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// CommandType is the first byte of an encoded command.
type CommandType uint8

// IgnoreUnknownFlag marks a command type that a node which does not know it
// may skip: Decode returns an [Unknown] for it and Apply leaves the state
// unchanged. A type without the flag that a node does not know is an
// error. Set it on new command types whose effect older nodes can safely
// miss (advisory records), never on ones that change ownership.
const IgnoreUnknownFlag CommandType = 128

// Command types. The values are part of the log format: never reuse or
// renumber one.
const (
	TypeRegisterWorkload CommandType = 1
	TypeCommitCheckpoint CommandType = 2
	TypeAddHolder        CommandType = 3
	TypePlace            CommandType = 4
	TypeRestoreDone      CommandType = 5
	TypeAppFailed        CommandType = 6
	TypeGiveUp           CommandType = 7
	TypeRemoveWorkload   CommandType = 8
	TypeUpsertNode       CommandType = 9
	TypeRemoveNode       CommandType = 10
	TypeDropHolder       CommandType = 11
	// TypeNodeCapabilities has no IgnoreUnknownFlag: placements, the
	// authorization of migrations and replication targets read what it
	// records, so a node that skipped it would decide differently from the
	// others on the same log. A node that does not know it stops at it
	// (replicated.ApplyError): upgrade every node before any proposes it.
	TypeNodeCapabilities CommandType = 12
	// TypeUnplaceable has the IgnoreUnknownFlag: it only records why the
	// leader cannot place a workload (LastError), which no decision reads
	// but the leader's own check that it said so already.
	TypeUnplaceable = IgnoreUnknownFlag | 13
	// TypeRetryWorkload and TypeMarkCheckpointBad have no
	// IgnoreUnknownFlag: the first changes ownership (a new epoch, no
	// owner), the second what placements may restore. A node that does not
	// know them stops at them instead of deciding differently from the
	// others: upgrade every node before the leader proposes them.
	TypeRetryWorkload     CommandType = 14
	TypeMarkCheckpointBad CommandType = 15
)

// String returns the command type's name, or "type-N" for one this
// version does not know.
func (t CommandType) String() string {
	if c, ok := commands[t]; ok {
		return c.name
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Command is a change to the state. Commands are pointers to the structs
// below; each carries At, the proposer's time, which Apply uses instead of
// a clock.
type Command interface {
	Type() CommandType
}

// RegisterWorkload: node Node found a running copy of workload ID, started
// or restored at CopyEpoch (0: an original pod, not started by
// crfailoverd, counted as epoch 1).
//
//   - ID unknown: it is created, owned by Node at epoch max(CopyEpoch, 1),
//     running.
//   - Status failed (the cluster gave up; someone started it by hand): Node
//     becomes the owner at Epoch+1, running.
//   - Owner is Node and CopyEpoch >= Epoch: Interval and Config are
//     updated; a restoring workload becomes running (the owner's copy
//     runs), unless that attempt was already recorded as failed.
//   - Otherwise the copy is stale: ErrStale, naming the owner and epoch;
//     the node must stop its copy.
//
// On success the copy runs at the workload's Epoch, which the node must
// adopt (read it back): after a registration of a failed workload it is
// higher than CopyEpoch.
type RegisterWorkload struct {
	At        time.Time     `json:"at"`
	ID        string        `json:"id"`
	Node      string        `json:"node"`
	Interval  time.Duration `json:"interval_ns"`
	Config    []byte        `json:"config"`
	CopyEpoch uint64        `json:"copy_epoch"`
}

// CommitCheckpoint records a checkpoint Node took of workload ID as its
// owner at Epoch (ErrStale otherwise). Its holders start as [Node] (the
// Holders field of the command is ignored; see AddHolder). The checkpoint
// becomes the newest: recorded checkpoints with the same Seq and another
// SHA256, or a higher Seq, belong to a line an earlier owner numbered
// further before the workload moved, and are dropped. The same Seq and
// SHA256 again (a retried commit) keeps its holders. At most
// MaxCheckpoints are kept.
type CommitCheckpoint struct {
	At         time.Time  `json:"at"`
	ID         string     `json:"id"`
	Node       string     `json:"node"`
	Epoch      uint64     `json:"epoch"`
	Checkpoint Checkpoint `json:"checkpoint"`
}

// AddHolder records that Node holds a verified copy of checkpoint Seq of
// workload ID, whose sha256 and size are SHA256 and Size. A checkpoint no
// longer recorded (trimmed away) is no error and no change. SHA256 and
// Size must match the recorded checkpoint's (ErrStale otherwise: the copy
// is of another archive, or of a checkpoint of the same number that the
// cluster replaced). Every proposer sets both; entries of older versions
// in the log, without them, are applied unchecked (an empty SHA256, a Size
// of 0).
type AddHolder struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Seq    uint64    `json:"seq"`
	SHA256 string    `json:"sha256,omitempty"`
	Size   int64     `json:"size,omitempty"`
	Node   string    `json:"node"`
}

// DropHolder removes Node from the holders of checkpoint Seq of workload
// ID: its copy did not match the record, or was refused before a restore,
// and is marked bad in its store. SHA256 is the recorded checkpoint's that
// the node judged: when the checkpoint of that number is now another one
// (another SHA256), or is no longer recorded, or Node does not hold it,
// the command is no error and no change. Reason says why, for the logs.
type DropHolder struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Seq    uint64    `json:"seq"`
	SHA256 string    `json:"sha256"`
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
}

// Place tells Owner to restore workload ID from checkpoint Seq, at Epoch.
// It is a compare-and-set: Epoch must be the workload's Epoch+1 (ErrStale
// otherwise), Owner a known node, and Seq not a checkpoint marked Bad
// (ErrInvalid; only [MarkCheckpointBad] marks one, so a log without it
// applies as it always did). The workload becomes restoring; its Tried
// list is kept (a retry's new round is [RetryWorkload]'s).
type Place struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Owner  string    `json:"owner"`
	Epoch  uint64    `json:"epoch"`
	Seq    uint64    `json:"seq"`
	Reason string    `json:"reason"`
}

// RestoreDone reports the outcome of the restore the owner Node was told
// to do at Epoch from Seq (ErrStale for any other node, epoch or
// checkpoint). OK: the workload runs; its Tried list and LastError are
// cleared, and RestoredFrom and RestoredAt record Seq and At (read only
// by the leader's decisions). Not OK: the attempt is appended to Tried and the workload stays
// restoring, for the leader to move on. A report on an attempt already
// recorded as failed (by the leader's timeout) is ErrStale; a repeated OK
// on a running workload is no error and no change.
type RestoreDone struct {
	At    time.Time `json:"at"`
	ID    string    `json:"id"`
	Node  string    `json:"node"`
	Epoch uint64    `json:"epoch"`
	Seq   uint64    `json:"seq"`
	OK    bool      `json:"ok"`
	Error string    `json:"error"`
}

// AppFailed reports that the application of workload ID failed on its
// owner Node at Epoch (ErrStale otherwise); the workload must be running
// (ErrStatus otherwise: a failing restore is reported with RestoreDone).
// It becomes app-failed, for the leader to restore it elsewhere; Kind is
// recorded in the workload's FailKind. It marks nothing itself: the
// leader proposes [MarkCheckpointBad] when the copy was restored from a
// checkpoint and the application itself failed within QuickFailWindow.
type AppFailed struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Node   string    `json:"node"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
	// Kind says what failed, as the reporter knows it; empty when it
	// cannot tell (and for entries of older versions).
	Kind FailKind `json:"kind,omitempty"`
}

// FailKind is what an application failure report is about.
type FailKind string

// Failure kinds. Only FailExited and FailProbe are the application's own
// failures ([FailKind.Own]); the others say nothing about the checkpoint
// the copy was restored from.
const (
	FailExited    FailKind = "exited"    // the container exited on its own
	FailProbe     FailKind = "probe"     // its liveness/health probe failed
	FailLost      FailKind = "lost"      // the owner finds no copy running (removed, never started, killed by others)
	FailFenced    FailKind = "fenced"    // the copy was stopped or killed because its node was fenced (the fence guard included)
	FailMigration FailKind = "migration" // a migration stopped the copy and could not place it
)

// Own reports whether the failure is the application's own: only those
// can condemn the checkpoint a copy was restored from. An empty or
// unknown kind is not.
func (k FailKind) Own() bool { return k == FailExited || k == FailProbe }

// RetryWorkload is the first half of the leader's retry of a failed
// workload (failover rule 9): Epoch must be the workload's Epoch+1
// (ErrStale otherwise) and the workload failed (ErrStatus otherwise). It
// becomes retrying, owned by no node at the new epoch, so that every node
// stops any copy of it it runs or registers (a copy started by hand, a
// registration on its way); its Tried list and LastError are cleared (a
// new round of attempts). The leader places it ([Place]) only once this
// has been committed for the fence wait, or gives it up again.
type RetryWorkload struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

// MarkCheckpointBad marks checkpoint Seq of workload ID (whose sha256 is
// SHA256) Bad with Why: the leader found that a copy restored from it
// failed on its own within QuickFailWindow of its restore. Placements pass
// over it from then on. A checkpoint that is no longer recorded, or is now
// another one (another SHA256), or is already marked, is no error and no
// change.
type MarkCheckpointBad struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Seq    uint64    `json:"seq"`
	SHA256 string    `json:"sha256"`
	Why    string    `json:"why"`
}

// GiveUp marks workload ID failed, with no owner: a compare-and-set on
// Epoch (ErrStale if the workload has moved on).
type GiveUp struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

// RemoveWorkload forgets workload ID (no error if it is unknown).
type RemoveWorkload struct {
	At time.Time `json:"at"`
	ID string    `json:"id"`
}

// UpsertNode records node Name and its RPC address; Joined is set when the
// node is first recorded.
type UpsertNode struct {
	At      time.Time `json:"at"`
	Name    string    `json:"name"`
	RPCAddr string    `json:"rpc_addr"`
}

// RemoveNode forgets node Name and drops it from every checkpoint's
// holders (no error if it is unknown). Workloads it owns keep it as owner:
// the leader moves them as from any dead node.
type RemoveNode struct {
	At   time.Time `json:"at"`
	Name string    `json:"name"`
}

// NodeCapabilities records what node Node's runtime can do with
// checkpoints (capability.Node), as the node found out; the node proposes
// it for itself at start and whenever it changes. Node must be a known
// node (ErrUnknownNode: the leader records a node once it proved its
// name). CPU flags are kept sorted and without duplicates; at most
// MaxCPUFlags of at most 64 bytes each, and texts of at most 1024 bytes.
type NodeCapabilities struct {
	At   time.Time       `json:"at"`
	Node string          `json:"node"`
	Caps capability.Node `json:"caps"`
}

// Unplaceable records, in LastError, why the leader cannot place workload
// ID at Epoch: no node that could restore it holds or can fetch any of its
// checkpoints. The workload keeps its owner and status (ErrStale for
// another epoch, ErrStatus for a failed one), and is placed as soon as a
// capable node can take it.
type Unplaceable struct {
	At     time.Time `json:"at"`
	ID     string    `json:"id"`
	Epoch  uint64    `json:"epoch"`
	Reason string    `json:"reason"`
}

// Unknown is a decoded command of a type this version does not know but
// may skip (its type has the IgnoreUnknownFlag). Apply ignores it; Encode
// writes it back unchanged.
type Unknown struct {
	T       CommandType
	Payload []byte
}

// Type implementations.
func (*RegisterWorkload) Type() CommandType { return TypeRegisterWorkload }
func (*CommitCheckpoint) Type() CommandType { return TypeCommitCheckpoint }
func (*AddHolder) Type() CommandType        { return TypeAddHolder }
func (*Place) Type() CommandType            { return TypePlace }
func (*RestoreDone) Type() CommandType      { return TypeRestoreDone }
func (*AppFailed) Type() CommandType        { return TypeAppFailed }
func (*GiveUp) Type() CommandType           { return TypeGiveUp }
func (*RemoveWorkload) Type() CommandType   { return TypeRemoveWorkload }
func (*UpsertNode) Type() CommandType       { return TypeUpsertNode }
func (*RemoveNode) Type() CommandType       { return TypeRemoveNode }
func (*DropHolder) Type() CommandType       { return TypeDropHolder }
func (*NodeCapabilities) Type() CommandType { return TypeNodeCapabilities }
func (*Unplaceable) Type() CommandType      { return TypeUnplaceable }
func (*RetryWorkload) Type() CommandType    { return TypeRetryWorkload }
func (*MarkCheckpointBad) Type() CommandType {
	return TypeMarkCheckpointBad
}
func (u *Unknown) Type() CommandType {
	if u == nil {
		return 0
	}
	return u.T
}

// commandInfo is one row of the dispatch table.
type commandInfo struct {
	name   string
	decode func(payload []byte) (Command, error)
	apply  func(s *State, cmd Command) error
}

// commands is the dispatch table: every command type this version knows.
var commands = map[CommandType]commandInfo{
	TypeRegisterWorkload:  entry("register-workload", (*State).registerWorkload),
	TypeCommitCheckpoint:  entry("commit-checkpoint", (*State).commitCheckpoint),
	TypeAddHolder:         entry("add-holder", (*State).addHolder),
	TypePlace:             entry("place", (*State).place),
	TypeRestoreDone:       entry("restore-done", (*State).restoreDone),
	TypeAppFailed:         entry("app-failed", (*State).appFailed),
	TypeGiveUp:            entry("give-up", (*State).giveUp),
	TypeRemoveWorkload:    entry("remove-workload", (*State).removeWorkload),
	TypeUpsertNode:        entry("upsert-node", (*State).upsertNode),
	TypeRemoveNode:        entry("remove-node", (*State).removeNode),
	TypeDropHolder:        entry("drop-holder", (*State).dropHolder),
	TypeNodeCapabilities:  entry("node-capabilities", (*State).nodeCapabilities),
	TypeUnplaceable:       entry("unplaceable", (*State).unplaceable),
	TypeRetryWorkload:     entry("retry-workload", (*State).retryWorkload),
	TypeMarkCheckpointBad: entry("mark-checkpoint-bad", (*State).markCheckpointBad),
}

// entry builds a dispatch table row for command struct T, applied by
// apply.
func entry[T any, PT interface {
	*T
	Command
}](name string, apply func(*State, PT) error) commandInfo {
	return commandInfo{
		name: name,
		decode: func(payload []byte) (Command, error) {
			c := PT(new(T))
			if err := json.Unmarshal(payload, c); err != nil {
				return nil, err
			}
			return c, nil
		},
		apply: func(s *State, cmd Command) error {
			c, ok := cmd.(PT)
			if !ok || c == nil {
				return fmt.Errorf("apply %s: got a %T: %w", name, cmd, ErrInvalid)
			}
			return apply(s, c)
		},
	}
}

// Encode returns cmd as a log entry: its type byte, then its JSON.
func Encode(cmd Command) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("encode command: nil: %w", ErrInvalid)
	}
	t := cmd.Type()
	if u, ok := cmd.(*Unknown); ok {
		if u == nil {
			return nil, fmt.Errorf("encode command: nil: %w", ErrInvalid)
		}
		return append([]byte{byte(t)}, u.Payload...), nil
	}
	c, ok := commands[t]
	if !ok {
		return nil, fmt.Errorf("encode command %T: type %d: %w", cmd, t, ErrUnknownCommand)
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", c.name, err)
	}
	return append([]byte{byte(t)}, payload...), nil
}

// Decode parses a log entry written by Encode. A type it does not know is
// an *Unknown when the type has the IgnoreUnknownFlag, and an error
// wrapping ErrUnknownCommand otherwise.
func Decode(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, errors.New("decode command: empty entry")
	}
	t := CommandType(b[0])
	c, ok := commands[t]
	if !ok {
		if t&IgnoreUnknownFlag != 0 {
			return &Unknown{T: t, Payload: append([]byte(nil), b[1:]...)}, nil
		}
		return nil, fmt.Errorf("decode command: type %d: %w", uint8(t), ErrUnknownCommand)
	}
	cmd, err := c.decode(b[1:])
	if err != nil {
		return nil, fmt.Errorf("decode %s command: %w", c.name, err)
	}
	return cmd, nil
}

// Apply applies cmd to the state. On error the state is unchanged. An
// unknown command type with the IgnoreUnknownFlag is skipped (nil); one
// without it is an error wrapping ErrUnknownCommand.
func (s *State) Apply(cmd Command) error {
	if cmd == nil {
		return fmt.Errorf("apply command: nil: %w", ErrInvalid)
	}
	t := cmd.Type()
	c, ok := commands[t]
	if !ok {
		if t&IgnoreUnknownFlag != 0 {
			return nil
		}
		return fmt.Errorf("apply command: type %d: %w", uint8(t), ErrUnknownCommand)
	}
	return c.apply(s, cmd)
}
