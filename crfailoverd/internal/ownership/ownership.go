// Package ownership is the data that passes between a node's agent and the
// cluster, so that neither imports the other and calls go one way only:
//
//   - the cluster publishes a read-only [View] on a [Board]: per workload,
//     its owner, epoch and status, and whether this node is fenced and why;
//     the agent reads it at every discovery and judges each local copy with
//     [View.Admit];
//   - the agent queues [Report]s of what it found and did (a copy the
//     cluster does not know yet, a committed checkpoint, an application
//     failure it hands over); the cluster reads them;
//   - the cluster asks the node to act (restore a [Placement], stop a
//     copy, checkpoint now) through an interface the cluster declares.
//
// Everything here is plain data and pure functions, but for the Board,
// which holds the newest View under a lock and signals its changes.
package ownership

import (
	"maps"
	"reflect"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/notify"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Entry is what the cluster records of one workload.
type Entry struct {
	Owner  string
	Epoch  uint64
	Status string // the cluster state's status ("running", "restoring", "app-failed", "failed")
	Why    string // the reason of the last placement or the last error
	// Checkpoints are the workload's checkpoints the cluster records,
	// newest first: an archive is restored only when it matches one.
	Checkpoints []Record
}

// Record is the cluster's record of one checkpoint: what its archive must
// be (the plaintext archive's sha256 and size).
type Record struct {
	Seq    uint64
	SHA256 string
	Size   int64
}

// Checkpoint returns the record of checkpoint seq, if the cluster has one.
func (e Entry) Checkpoint(seq uint64) (Record, bool) {
	for _, r := range e.Checkpoints {
		if r.Seq == seq {
			return r, true
		}
	}
	return Record{}, false
}

// Failed reports whether the cluster has given the workload up.
func (e Entry) Failed() bool { return e.Status == "failed" }

// View is one published picture of the cluster as this node sees it. A
// published View is never changed; the cluster publishes a new one.
type View struct {
	Node string
	// Connected: this node is in contact with a working quorum now.
	Connected bool
	// Fenced: this node must not run or restore anything (it lost the
	// quorum for longer than the fence time); FenceWhy says why.
	Fenced   bool
	FenceWhy string
	// LocalRestore: an application failure is restored on its owner by
	// the owner's agent itself (restore.policy = "local").
	LocalRestore bool
	Workloads    map[string]Entry  // by workload ID "namespace/pod/container"
	Adopted      map[string]uint64 // sandbox ID -> epoch a registration gave a running original copy
}

// Admission is the verdict on a local copy of a workload.
type Admission int

// Verdicts.
const (
	Run  Admission = iota // this node owns it at the copy's epoch: checkpoint and watch it
	Wait                  // not known to the cluster (yet), or this node lags behind: ask again later
	Stop                  // another node or a later epoch owns it, or this node is fenced: stop the copy
)

func (a Admission) String() string {
	switch a {
	case Run:
		return "run"
	case Wait:
		return "wait"
	case Stop:
		return "stop"
	}
	return "unknown"
}

// CopyEpoch is the epoch a local copy belongs to: its pod's epoch label (an
// original pod counts as epoch 1), or the epoch its registration gave it.
func (v *View) CopyEpoch(w discovery.Workload) uint64 {
	return max(w.Epoch, 1, v.Adopted[w.SandboxID])
}

// Admit judges a running local copy. Known reports whether the cluster
// knows the workload (and has not given it up): when it does not, the
// agent reports the copy so that the cluster registers it.
func (v *View) Admit(w discovery.Workload) (a Admission, known bool) {
	e, known := v.Workloads[w.ID.String()]
	known = known && !e.Failed()
	switch {
	case v.Fenced:
		return Stop, known
	case !v.Connected:
		return Wait, known
	case !known:
		return Wait, false
	}
	copyEpoch := v.CopyEpoch(w)
	switch {
	case e.Owner != v.Node || copyEpoch < e.Epoch:
		return Stop, true
	case copyEpoch > e.Epoch:
		return Wait, true // this node's state lags behind
	}
	return Run, true
}

// RestoreHere reports whether the agent restores a failed application on
// this node itself (policy local, this node owns it and is not fenced);
// otherwise it hands the failure to the cluster with a Report.
func (v *View) RestoreHere(w discovery.Workload) bool {
	e, ok := v.Workloads[w.ID.String()]
	return v.LocalRestore && !v.Fenced && ok && e.Owner == v.Node
}

// Board holds the newest View and wakes readers when it changes.
type Board struct {
	mu      sync.Mutex
	v       *View
	changed notify.Signal
	quorum  time.Time // last real quorum contact (SetQuorumContact)
}

// SetQuorumContact records the cluster's last real contact with a quorum
// (zero: none since the daemon started). It wakes nobody: it changes at
// every look while connected, and only the fence guard's renewals read it.
func (b *Board) SetQuorumContact(t time.Time) {
	b.mu.Lock()
	if t.After(b.quorum) {
		b.quorum = t
	}
	b.mu.Unlock()
}

// QuorumContact is the last time given to SetQuorumContact (zero: none).
func (b *Board) QuorumContact() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.quorum
}

// NewBoard returns a board whose first View is not connected (copies
// wait) for node.
func NewBoard(node string) *Board {
	return &Board{v: &View{Node: node, Workloads: map[string]Entry{}, Adopted: map[string]uint64{}}}
}

// View returns the newest published View; callers must not change it.
func (b *Board) View() *View {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.v
}

// Changed returns a channel closed at the next change of the View.
func (b *Board) Changed() <-chan struct{} { return b.changed.Wait() }

// Publish replaces the View; readers are woken only when it differs from
// the previous one. The board keeps v: the caller must not change it.
func (b *Board) Publish(v *View) {
	if v.Workloads == nil {
		v.Workloads = map[string]Entry{}
	}
	if v.Adopted == nil {
		v.Adopted = map[string]uint64{}
	}
	b.mu.Lock()
	same := reflect.DeepEqual(b.v, v)
	b.v = v
	b.mu.Unlock()
	if !same {
		b.changed.Signal()
	}
}

// Clone returns a copy of v that the caller may change before publishing.
func (v *View) Clone() *View {
	c := *v
	c.Workloads = maps.Clone(v.Workloads)
	c.Adopted = maps.Clone(v.Adopted)
	return &c
}

// ReportKind says what a Report tells.
type ReportKind int

// Report kinds.
const (
	// Unregistered: a running copy the cluster does not know (or gave up):
	// the cluster records it with its restore configuration.
	Unregistered ReportKind = iota + 1
	// Checkpointed: a checkpoint of a copy was committed to the store: the
	// cluster records it and replicates it.
	Checkpointed
	// AppFailed: the application failed and the agent removed the failed
	// copy: the cluster restores it (elsewhere when it can).
	AppFailed
	// BadCopy: this node's copy of checkpoint Record did not match the
	// record or was refused before a restore, and is marked bad in the
	// store: the cluster drops this node from its holders.
	BadCopy
)

func (k ReportKind) String() string {
	switch k {
	case Unregistered:
		return "unregistered"
	case Checkpointed:
		return "checkpointed"
	case AppFailed:
		return "app-failed"
	case BadCopy:
		return "bad-copy"
	}
	return "unknown"
}

// Report is something the agent tells the cluster.
type Report struct {
	Kind      ReportKind
	Workload  discovery.Workload
	CopyEpoch uint64      // the copy's epoch as the View gave it when the report was made
	Entry     store.Entry // Checkpointed: the committed checkpoint; BadCopy: the refused one
	Reason    string      // AppFailed, BadCopy: why
	Record    Record      // BadCopy: the cluster's record the copy was judged against
}

// Placement asks a node to restore a workload that the cluster placed on
// it: checkpoint Entry (in the local store), which must match the
// cluster's Record of it, with the restore configuration Config (the
// registration's), as a copy of epoch Epoch.
type Placement struct {
	Entry  store.Entry
	Record Record
	Config []byte
	Epoch  uint64
	Reason string
}
