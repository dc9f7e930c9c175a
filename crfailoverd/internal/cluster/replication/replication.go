// Package replication is the cluster's archive replication: it records
// each new local checkpoint in the replicated state, pushes it to the
// peers chosen for its workload (peer.Targets), records every peer that
// committed a copy as a holder, and fetches a checkpoint this node lacks
// from one of its holders. The transfers themselves are peer's (a queue
// per peer, latest wins); this part decides what goes where and records
// it.
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Proposer commits a command to the replicated state.
type Proposer interface {
	Apply(ctx context.Context, cmd state.Command) error
}

// Peer is one other node's archive service.
type Peer interface {
	Push(ctx context.Context, e store.Entry, progress func(sent int64)) error
	Fetch(ctx context.Context, st *store.Store, w store.Workload, seq uint64, want peer.Expect) (store.Entry, error)
}

// Queue sends entries to peers in the background (peer.Replicator).
type Queue interface {
	Enqueue(e store.Entry, targets []string)
}

// Aside tells which peers cannot take archives for now (a full disk,
// failures in a row): new replicas go to other peers meanwhile. A Queue
// that implements it (peer.Replicator) is used as such.
type Aside interface {
	SetAside(peer string) (until time.Time, ok bool)
}

// Members is the gossip view: which members are alive.
type Members interface {
	Alive() map[string]bool
}

// State reads the replicated state (what each node can restore).
type State interface {
	State() *state.State
}

// Options configure the replication part.
type Options struct {
	Node     string
	Factor   int // replicas per checkpoint besides this node's own
	Store    *store.Store
	Proposer Proposer
	Members  Members
	Peer     func(node string) (Peer, error)
	Events   event.Sink // nil: none
	Log      *slog.Logger
	// Capabilities are this node's (what each checkpoint it records
	// needs); State tells which peers can restore them. Either nil: no
	// needs recorded, every alive peer a target (as before capabilities).
	Capabilities func() capability.Node
	State        State
	// FetchTimeout bounds one fetch from one holder (default 2 minutes).
	FetchTimeout time.Duration
}

// Replication is the running part. Record queues; Run works the queue.
type Replication struct {
	o       Options
	queue   Queue
	aside   Aside // nil: no peer is ever set aside
	records chan record

	mu      sync.Mutex
	noPeers map[string]string // workload -> the last "no capable peer" message, said once
}

// record is one queued proposal: a checkpoint to commit and then
// replicate (entry set), or another command to commit in order.
type record struct {
	what  string
	cmd   state.Command
	entry *store.Entry
}

// New makes the part; set its transfer queue with UseQueue before Run.
func New(o Options) *Replication {
	if o.Events == nil {
		o.Events = func(event.Event) {}
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 2 * time.Minute
	}
	return &Replication{o: o, records: make(chan record, 4096), noPeers: map[string]string{}}
}

// UseQueue sets the transfer queue (whose callbacks are Replicated and
// ReplicateFailed). When it also implements Aside, peers it sets aside
// get no new replicas while they are.
func (r *Replication) UseQueue(q Queue) {
	r.queue = q
	r.aside, _ = q.(Aside)
}

// Record commits checkpoint e of a local copy of epoch copyEpoch to the
// replicated state, then replicates it. It does not block: records wait
// in a bounded queue, in order.
func (r *Replication) Record(w discovery.Workload, copyEpoch uint64, e store.Entry) {
	cp := r.Checkpoint(e)
	r.queueRecord(record{what: "record checkpoint", cmd: &state.CommitCheckpoint{At: time.Now(), ID: w.ID.String(), Node: r.o.Node, Epoch: copyEpoch, Checkpoint: cp}, entry: &e})
}

// Checkpoint is the state's record of a local checkpoint e: held by this
// node, needing what this node's capabilities say.
func (r *Replication) Checkpoint(e store.Entry) state.Checkpoint {
	cp := state.Checkpoint{Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Created: e.Created, Holders: []string{r.o.Node}}
	if r.o.Capabilities != nil {
		cp = cp.WithNeeds(r.o.Node, r.o.Capabilities())
	}
	return cp
}

// InOrder commits cmd after every record queued before it, without
// blocking (an application failure after the checkpoints before it).
func (r *Replication) InOrder(what string, cmd state.Command) {
	r.queueRecord(record{what: what, cmd: cmd})
}

func (r *Replication) queueRecord(rec record) {
	select {
	case r.records <- rec:
	default:
		// Each kind is made again: the next checkpoint supersedes this one,
		// a lost copy is found again by the controller's next look.
		r.o.Log.Error("cluster record queue full; dropping a record", "what", rec.what, "cmd", fmt.Sprintf("%T", rec.cmd))
	}
}

// Run commits queued records, in order, until ctx ends.
func (r *Replication) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case rec := <-r.records:
			err := r.o.Proposer.Apply(ctx, rec.cmd)
			if err != nil {
				if !errors.Is(err, state.ErrStale) && ctx.Err() == nil {
					r.o.Log.Warn("cluster update failed", "what", rec.what, "cmd", fmt.Sprintf("%T", rec.cmd), "err", err)
				}
				continue
			}
			if rec.entry == nil {
				continue
			}
			id := rec.entry.Workload.String()
			cc, _ := rec.cmd.(*state.CommitCheckpoint)
			if targets := r.targets(id, cc); len(targets) > 0 && r.queue != nil {
				r.queue.Enqueue(*rec.entry, targets)
			}
		}
	}
}

// Targets are the alive peers that should hold replicas of workload.
func (r *Replication) Targets(workload string) []string {
	return r.targets(workload, nil)
}

// targets are the alive peers that should hold replicas of the checkpoint
// cc commits (nil: of any checkpoint of workload): chosen by rendezvous
// among the peers that can restore it (ChooseTargets); when none can, among
// all, and an event says so (once until it changes).
func (r *Replication) targets(workload string, cc *state.CommitCheckpoint) []string {
	var st *state.State
	if cc != nil && r.o.State != nil {
		st = r.o.State.State()
	}
	return r.targetsIn(st, workload, cc)
}

// targetsIn is targets judged with state st (nil: no state to judge
// with, rendezvous among all alive peers).
func (r *Replication) targetsIn(st *state.State, workload string, cc *state.CommitCheckpoint) []string {
	var peers []string
	for n, ok := range r.o.Members.Alive() {
		if ok && n != r.o.Node && !r.setAside(n) {
			peers = append(peers, n)
		}
	}
	sort.Strings(peers)
	if cc == nil || st == nil {
		return peer.Targets(workload, r.o.Node, peers, r.o.Factor)
	}
	cp := cc.Checkpoint
	targets, why := ChooseTargets(workload, r.o.Node, peers, r.o.Factor, func(n string) (bool, string) { return st.CanRestore(n, &cp) })
	r.mu.Lock()
	said := r.noPeers[workload]
	if why == "" {
		delete(r.noPeers, workload)
	} else {
		r.noPeers[workload] = why
	}
	r.mu.Unlock()
	if why != "" && why != said {
		r.o.Log.Warn("no alive peer can restore this workload's checkpoints; replicating to others all the same", "workload", workload, "seq", cp.Seq, "why", why)
		r.o.Events(event.Event{Kind: NoCapablePeer, Workload: workload, Node: r.o.Node, Seq: cp.Seq, Reason: why})
	}
	return targets
}

// NoCapablePeer is the event kind of a checkpoint no alive peer can
// restore (Reason: each peer and why). It belongs in package event's
// kinds; until it is there, it is declared here.
const NoCapablePeer event.Kind = "no-capable-peer"

// ChooseTargets picks factor replica targets for workload among peers
// (sorted, this node excluded): by rendezvous among those that can
// restore the checkpoint, first; when fewer than factor can, the other
// slots go to incapable peers by rendezvous (the factor's copies are kept;
// a capable node can fetch from them); when none can, by
// rendezvous among all peers (a copy there still survives this node's
// disk, and a capable node can fetch it), with why naming each peer and
// why it cannot restore. It does no I/O.
func ChooseTargets(workload, self string, peers []string, factor int, can func(node string) (bool, string)) (targets []string, why string) {
	var capable, reasons []string
	for _, p := range peers {
		if ok, reason := can(p); ok {
			capable = append(capable, p)
		} else {
			reasons = append(reasons, p+": "+reason)
		}
	}
	if len(peers) == 0 {
		return nil, ""
	}
	if len(capable) == 0 {
		return peer.Targets(workload, self, peers, factor), "no alive peer can restore it (" + strings.Join(reasons, "; ") + ")"
	}
	targets = peer.Targets(workload, self, capable, factor)
	if len(targets) < factor {
		// Fewer capable peers than the factor: the other slots go to
		// peers that cannot restore it (a copy there still survives this
		// node's disk, and a capable node can fetch it from them).
		var rest []string
		for _, p := range peers {
			if !slices.Contains(capable, p) {
				rest = append(rest, p)
			}
		}
		targets = append(targets, peer.Targets(workload, self, rest, factor-len(targets))...)
	}
	return targets, ""
}

// Replicated records that peer to committed a copy of e (queued, in
// order; it does not block the peer's transfers).
func (r *Replication) Replicated(e store.Entry, to string, took time.Duration, bytes int64) {
	r.o.Events(event.Event{Kind: event.Replicated, Workload: e.Workload.String(), Node: r.o.Node, To: to, Seq: e.Seq, Took: took, Bytes: bytes})
	r.queueRecord(record{what: "record replica on " + to, cmd: &state.AddHolder{At: time.Now(), ID: e.Workload.String(), Seq: e.Seq, SHA256: e.SHA256, Size: e.Size, Node: to}})
}

// ReplicateFailed records that e could not be sent to peer to. When the
// queue set that peer aside (peer.ErrSetAside), e goes to the peers
// chosen without it that do not hold it yet, to keep the factor; when no
// such peer is left, back to the same peer, whose queue waits until the
// set-aside ends (the replica is never dropped for it). The state is read
// once per entry.
func (r *Replication) ReplicateFailed(e store.Entry, to string, err error) {
	r.o.Events(event.Event{Kind: event.ReplicateFailed, Workload: e.Workload.String(), Node: r.o.Node, To: to, Seq: e.Seq, Err: err.Error()})
	if !errors.Is(err, peer.ErrSetAside) || r.queue == nil {
		return
	}
	id := e.Workload.String()
	var held []string
	var st *state.State
	if r.o.State != nil {
		st = r.o.State.State()
		if w := st.Workloads[id]; w != nil {
			if cp := w.Checkpoint(e.Seq); cp != nil && cp.SHA256 == e.SHA256 {
				held = cp.Holders
			} else {
				return // trimmed or replaced: a newer checkpoint is on its way
			}
		}
	}
	var instead []string
	for _, t := range r.targetsIn(st, id, &state.CommitCheckpoint{ID: id, Node: r.o.Node, Checkpoint: r.Checkpoint(e)}) {
		if t != to && !slices.Contains(held, t) {
			instead = append(instead, t)
		}
	}
	if len(instead) == 0 {
		r.o.Log.Warn("peer set aside and no other peer is left for this replica; it waits for the same peer", "workload", id, "seq", e.Seq, "peer", to)
		r.queue.Enqueue(e, []string{to})
		return
	}
	r.o.Log.Info("replicating to other peers while a peer is set aside", "workload", id, "seq", e.Seq, "peer", to, "instead", strings.Join(instead, ","))
	r.queue.Enqueue(e, instead)
}

// setAside reports whether the queue has set peer n aside.
func (r *Replication) setAside(n string) bool {
	if r.aside == nil {
		return false
	}
	_, ok := r.aside.SetAside(n)
	return ok
}

// Fetch pulls checkpoint seq of w from one of its holders, in holder order.
func (r *Replication) Fetch(ctx context.Context, w state.Workload, seq uint64) (store.Entry, error) {
	id, err := store.ParseWorkload(w.ID)
	if err != nil {
		return store.Entry{}, err
	}
	var holders []string
	var want state.Checkpoint
	if cp := w.Checkpoint(seq); cp != nil {
		holders, want = cp.Holders, *cp
	}
	var errs []error
	for _, h := range holders {
		if h == r.o.Node {
			continue
		}
		p, err := r.o.Peer(h)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h, err))
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, r.o.FetchTimeout)
		e, err := p.Fetch(fctx, r.o.Store, id, seq, peer.Expect{SHA256: want.SHA256, Size: want.Size})
		cancel()
		if err == nil && (e.SHA256 != want.SHA256 || e.Size != want.Size) {
			// The holder sent another archive than the one the state
			// records: never restore it.
			err = fmt.Errorf("it sent an archive with sha256 %.12s and %d bytes, the state records %.12s and %d bytes", e.SHA256, e.Size, want.SHA256, want.Size)
			if r.o.Store != nil {
				_ = r.o.Store.MarkBad(id, seq, err.Error())
			}
		}
		if err == nil {
			r.o.Log.Info("fetched a checkpoint from a holder", "workload", w.ID, "seq", seq, "from", h)
			return e, nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", h, err))
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no other holder is recorded"))
	}
	return store.Entry{}, fmt.Errorf("checkpoint #%d is not on this node and no holder gave it: %w", seq, errors.Join(errs...))
}

// Push sends e to node now and records it there as a holder (migration).
func (r *Replication) Push(ctx context.Context, node string, e store.Entry) error {
	p, err := r.o.Peer(node)
	if err != nil {
		return fmt.Errorf("send checkpoint #%d to %s: %w", e.Seq, node, err)
	}
	if err := p.Push(ctx, e, nil); err != nil {
		return fmt.Errorf("send checkpoint #%d to %s: %w", e.Seq, node, err)
	}
	return nil
}
