// Package controller is this node's side of the cluster: it watches how
// the node stands with the quorum (fencing), publishes the ownership view
// the agent reads, restores what the cluster placed on this node, reports
// owned workloads that have no local copy, registers the copies the agent
// reports, hands application failures to the leader, and moves a workload
// it owns to another node (migration).
//
// It depends on small interfaces declared here: the node (the agent, which
// acts on the local runtime), the replicated state, a proposer that commits
// commands through the leader, the Raft quorum and gossip as this node sees
// them, and the replication part.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Node is what the controller asks of the node's agent.
type Node interface {
	// RecordConfig records the restore configuration of a running copy.
	RecordConfig(ctx context.Context, w discovery.Workload) ([]byte, error)
	// Restore restores a placement on this node (removing older local
	// copies first) and returns how long the runtime's restore took.
	Restore(ctx context.Context, p ownership.Placement) (time.Duration, error)
	// RemoveCopies stops and removes every local copy of a workload.
	RemoveCopies(ctx context.Context, id store.Workload) (int, error)
	// Running reports whether a local copy runs (or is being restored).
	Running(id store.Workload) bool
	// CheckpointNow takes a checkpoint of a running copy at once.
	CheckpointNow(ctx context.Context, id store.Workload) (store.Entry, error)
	// Stop ends the agent's care of a workload and removes its copies.
	Stop(ctx context.Context, id store.Workload) error
	// Reports is what the agent tells the cluster.
	Reports() <-chan ownership.Report
}

// Proposer commits a command to the replicated state: it returns the
// command's own error (for example one wrapping state.ErrStale) as well
// as any failure to commit it.
type Proposer interface {
	Apply(ctx context.Context, cmd state.Command) error
}

// State reads the replicated state.
type State interface {
	State() *state.State
	Workload(id string) (state.Workload, bool)
	Changed() <-chan struct{}
}

// Quorum is how this node stands with Raft.
type Quorum interface {
	IsLeader() bool
	Leader() string // "" when none is known
	LastContact() time.Time
	Voters() ([]string, error)
}

// Members is the gossip view: which members are alive.
type Members interface {
	Alive() map[string]bool
}

// Replication records and replicates checkpoints and fetches the ones this
// node lacks.
type Replication interface {
	// Record commits a checkpoint a local copy of epoch copyEpoch took,
	// then replicates it; it must not block.
	Record(w discovery.Workload, copyEpoch uint64, e store.Entry)
	// InOrder commits cmd after every record queued before it; it must
	// not block.
	InOrder(what string, cmd state.Command)
	// Fetch pulls checkpoint seq of w from one of its holders.
	Fetch(ctx context.Context, w state.Workload, seq uint64) (store.Entry, error)
	// Push sends a checkpoint to node now (migration).
	Push(ctx context.Context, node string, e store.Entry) error
}

// Checkpoints is the local checkpoint store.
type Checkpoints interface {
	Get(w store.Workload, seq uint64) (store.Entry, error)
}

// Restore policies for an application failure on a live node.
const (
	PolicyPeer  = "peer"
	PolicyLocal = "local"
)

// RestoreTimeout is how long the leader waits for a restore report before
// it counts the attempt as failed; restoreMargin keeps a node from starting
// a copy close to that deadline.
const (
	RestoreTimeout = 2 * time.Minute
	restoreMargin  = 15 * time.Second
)

// LostGrace is how long an owned, running workload may lack a local copy
// (between a restore and its discovery, say) before it counts as lost.
const LostGrace = 5 * time.Second

// Options configure a Controller. Every interface field is required.
type Options struct {
	Node        string
	Lease       time.Duration
	Policy      string
	Local       Node
	State       State
	Proposer    Proposer
	Quorum      Quorum
	Members     Members
	Replication Replication
	Store       Checkpoints
	Board       *ownership.Board
	Events      event.Sink // nil: none
	Log         *slog.Logger
	// Tick is how often the controller looks even without a change
	// (default 200 ms); LostGrace overrides the default when positive.
	Tick      time.Duration
	LostGrace time.Duration
	// Capabilities is what this node's runtime can do now (nil: nothing
	// is reported, and checkpoints record no needs). The controller
	// reports it to the cluster (state.NodeCapabilities) once the node is
	// recorded, and again whenever it changes.
	Capabilities func() capability.Node
}

// Controller is this node's reaction to the replicated state.
type Controller struct {
	o   Options
	log *slog.Logger

	mu          sync.Mutex
	fence       fenceClock
	verdict     fenceVerdict
	restoring   map[string]uint64 // workload -> epoch this node restores or restored
	registering map[string]bool
	lostSince   map[string]time.Time
	adopted     map[string]uint64 // sandbox -> epoch a registration gave a running copy
	capsReport  capsReport
	wake        chan struct{} // asks for a pass now
	wg          sync.WaitGroup
}

// New makes a controller; Run starts it.
func New(o Options) *Controller {
	if o.Lease <= 0 {
		o.Lease = 3 * time.Second
	}
	if o.Tick <= 0 {
		o.Tick = 200 * time.Millisecond
	}
	if o.LostGrace <= 0 {
		o.LostGrace = LostGrace
	}
	if o.Events == nil {
		o.Events = func(event.Event) {}
	}
	return &Controller{o: o, log: o.Log, fence: fenceClock{lease: o.Lease},
		restoring: map[string]uint64{}, registering: map[string]bool{}, lostSince: map[string]time.Time{}, adopted: map[string]uint64{},
		wake: make(chan struct{}, 1)}
}

// Fenced reports whether this node is fenced now, and why.
func (c *Controller) Fenced() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verdict.fenced, c.verdict.why
}

// LastQuorum is this node's last real contact with a working quorum (it
// led, or heard a leader), as the fence clock counts it; zero when it had
// none since the controller started. The fence guard's deadline is derived
// from it and from nothing else.
func (c *Controller) LastQuorum() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fence.lastQuorum
}

// Run reacts until ctx ends, then waits for the restores and
// registrations it started.
func (c *Controller) Run(ctx context.Context) error {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.reports(ctx)
	}()
	t := time.NewTicker(c.o.Tick)
	defer t.Stop()
	for {
		changed := c.o.State.Changed()
		c.pass(ctx)
		select {
		case <-ctx.Done():
			c.wg.Wait()
			return nil
		case <-t.C:
		case <-changed:
		case <-c.wake:
		}
	}
}

// nudge asks for a pass now; the view is published only by passes, so
// that a newer view is never replaced by an older one.
func (c *Controller) nudge() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// pass is one look at the quorum and the state.
func (c *Controller) pass(ctx context.Context) {
	v := c.observeQuorum()
	st := c.o.State.State()
	c.publish(st, v)
	if v.fenced {
		return
	}
	c.checkLostCopies(st)
	c.reportCapabilities(ctx, st)
	for id, w := range st.Workloads {
		if w.Owner != c.o.Node || w.Status != state.StatusRestoring {
			continue
		}
		c.mu.Lock()
		start := c.restoring[id] < w.Epoch
		if start {
			c.restoring[id] = w.Epoch
		}
		c.mu.Unlock()
		if start {
			c.wg.Add(1)
			go func(w state.Workload) {
				defer c.wg.Done()
				c.restore(ctx, w)
			}(*w)
		}
	}
}

func (c *Controller) observeQuorum() fenceVerdict {
	s := quorumSample{now: time.Now(), leader: c.o.Quorum.IsLeader(), leaderKnown: c.o.Quorum.Leader() != "",
		lastContact: c.o.Quorum.LastContact()}
	if voters, err := c.o.Quorum.Voters(); err == nil {
		alive := c.o.Members.Alive()
		s.voters = len(voters)
		for _, v := range voters {
			if alive[v] || v == c.o.Node {
				s.votersUp++
			}
		}
	}
	c.mu.Lock()
	v := c.fence.observe(s)
	was := c.verdict.fenced
	c.verdict = v
	lastQuorum := c.fence.lastQuorum
	c.mu.Unlock()
	if c.o.Board != nil {
		c.o.Board.SetQuorumContact(lastQuorum)
	}
	switch {
	case v.firstContact:
		c.log.Info("connected to the cluster's quorum", "leader", c.o.Quorum.Leader())
	case v.minorityEnded:
		c.log.Info("quorum visible again", "voters_up", v.votersUp, "voters", v.nVot)
	}
	if v.fenced && !was {
		c.log.Warn("FENCED: local copies stop", "why", v.why, "voters_up", v.votersUp, "voters", v.nVot)
	} else if !v.fenced && was {
		c.log.Info("no longer fenced", "voters_up", v.votersUp, "voters", v.nVot)
	}
	return v
}

// publish puts the ownership view for the agent on the board.
func (c *Controller) publish(st *state.State, v fenceVerdict) {
	view := &ownership.View{Node: c.o.Node, Connected: v.connected, Fenced: v.fenced, FenceWhy: v.why,
		LocalRestore: c.o.Policy == PolicyLocal, Workloads: make(map[string]ownership.Entry, len(st.Workloads))}
	for id, w := range st.Workloads {
		why := w.Reason
		if w.Status == state.StatusFailed {
			why = w.LastError
		}
		e := ownership.Entry{Owner: w.Owner, Epoch: w.Epoch, Status: string(w.Status), Why: why}
		for _, cp := range w.Checkpoints {
			e.Checkpoints = append(e.Checkpoints, ownership.Record{Seq: cp.Seq, SHA256: cp.SHA256, Size: cp.Size})
		}
		view.Workloads[id] = e
	}
	c.mu.Lock()
	view.Adopted = make(map[string]uint64, len(c.adopted))
	for sb, e := range c.adopted {
		view.Adopted[sb] = e
	}
	c.mu.Unlock()
	c.o.Board.Publish(view)
}

// checkLostCopies reports owned workloads that have no local copy (it was
// fenced away during a partition, or vanished) as failed, so that the
// leader places them again.
func (c *Controller) checkLostCopies(st *state.State) {
	now := time.Now()
	running := map[string]bool{}
	for id, w := range st.Workloads {
		if w.Owner != c.o.Node || w.Status != state.StatusRunning {
			continue
		}
		if wid, err := store.ParseWorkload(id); err == nil {
			running[id] = c.o.Local.Running(wid) // not under c.mu: the agent takes its own locks
		}
	}
	var lost []*state.Workload
	c.mu.Lock()
	for id, w := range st.Workloads {
		if w.Owner != c.o.Node || w.Status != state.StatusRunning || running[id] {
			delete(c.lostSince, id)
			continue
		}
		since, ok := c.lostSince[id]
		if !ok {
			c.lostSince[id] = now
			continue
		}
		if now.Sub(since) < c.o.LostGrace {
			continue
		}
		delete(c.lostSince, id)
		lost = append(lost, w)
	}
	c.mu.Unlock()
	for _, w := range lost {
		c.log.Warn("an owned workload has no local copy; asking the cluster to restore it", "workload", w.ID, "epoch", w.Epoch)
		c.o.Replication.InOrder("report lost copy", &state.AppFailed{At: now, ID: w.ID, Node: c.o.Node, Epoch: w.Epoch, Reason: "no copy running on " + c.o.Node, Kind: state.FailLost})
	}
}

// reports handles what the agent tells the cluster.
func (c *Controller) reports(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-c.o.Local.Reports():
			switch r.Kind {
			case ownership.Unregistered:
				c.register(ctx, r.Workload)
			case ownership.Checkpointed:
				c.o.Replication.Record(r.Workload, r.CopyEpoch, r.Entry)
			case ownership.AppFailed:
				// After the checkpoints reported before it: the leader then
				// places the workload from the newest one.
				c.o.Replication.InOrder("report application failure", &state.AppFailed{At: time.Now(), ID: r.Workload.ID.String(),
					Node: c.o.Node, Epoch: r.CopyEpoch, Reason: r.Reason, Kind: agentFailKind(r.Reason)})
			case ownership.BadCopy:
				c.log.Warn("dropping this node's holder record of a refused copy", "workload", r.Workload.ID.String(), "seq", r.Record.Seq,
					"recorded_sha256", r.Record.SHA256, "why", r.Reason)
				c.o.Replication.InOrder("drop a refused copy's holder record", &state.DropHolder{At: time.Now(), ID: r.Workload.ID.String(),
					Seq: r.Record.Seq, SHA256: r.Record.SHA256, Node: c.o.Node, Reason: r.Reason})
			}
		}
	}
}

// register records a local original copy in the cluster (with its restore
// configuration), in the background, once at a time per workload.
func (c *Controller) register(ctx context.Context, w discovery.Workload) {
	id := w.ID.String()
	c.mu.Lock()
	if c.registering[id] {
		c.mu.Unlock()
		return
	}
	c.registering[id] = true
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.registering, id)
			c.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cfg, err := c.o.Local.RecordConfig(ctx, w)
		if err != nil {
			c.log.Warn("cannot record a workload's configuration; it is not protected yet", "workload", id, "err", err)
			return
		}
		c.mu.Lock()
		copyEpoch := max(w.Epoch, 1, c.adopted[w.SandboxID])
		c.mu.Unlock()
		err = c.o.Proposer.Apply(ctx, &state.RegisterWorkload{At: time.Now(), ID: id, Node: c.o.Node, Interval: w.Interval, Config: cfg, CopyEpoch: copyEpoch})
		switch {
		case err == nil:
			// Registering a workload the cluster had given up on gives it a
			// new epoch; the running copy belongs to it. On a follower the
			// local state catches up with the leader's commit a moment
			// later: wait for it.
			cw, ok := c.awaitOwned(ctx, id)
			if ok {
				c.mu.Lock()
				c.adopted[w.SandboxID] = cw.Epoch
				c.mu.Unlock()
				c.nudge()
			}
			c.log.Info("workload registered with the cluster", "workload", id, "epoch", cw.Epoch, "seen_locally", ok)
		case errors.Is(err, state.ErrStale):
			c.log.Warn("another node owns this workload; the local copy will be stopped", "workload", id, "err", err)
		default:
			c.log.Warn("registering a workload failed; retrying at the next discovery", "workload", id, "err", err)
		}
	}()
}

// awaitOwned waits until the local state shows workload id owned by this
// node, up to ctx's end.
func (c *Controller) awaitOwned(ctx context.Context, id string) (state.Workload, bool) {
	for {
		changed := c.o.State.Changed()
		if w, ok := c.o.State.Workload(id); ok && w.Owner == c.o.Node && w.Status != state.StatusFailed {
			return w, true
		}
		select {
		case <-ctx.Done():
			return state.Workload{}, false
		case <-changed:
		}
	}
}

// restore restores a workload the cluster placed here, fetching the
// checkpoint from a holder first when this node lacks it, and reports the
// outcome to the leader.
func (c *Controller) restore(ctx context.Context, w state.Workload) {
	log := c.log.With("workload", w.ID, "epoch", w.Epoch, "seq", w.Seq)
	log.Info("restoring a workload the cluster placed here", "reason", w.Reason)
	start := time.Now()
	took, err := c.restoreFrom(ctx, w)
	done := &state.RestoreDone{At: time.Now(), ID: w.ID, Node: c.o.Node, Epoch: w.Epoch, Seq: w.Seq, OK: err == nil}
	ev := event.Event{Kind: event.Restored, Workload: w.ID, Node: c.o.Node, To: c.o.Node, Seq: w.Seq, Epoch: w.Epoch, Reason: w.Reason, Took: took}
	if err != nil {
		done.Error = err.Error()
		ev.Kind, ev.Err = event.RestoreFailed, err.Error()
		log.Error("restore failed; the leader will try elsewhere", "err", err)
	} else {
		log.Info("restored", "restore_ms", took.Milliseconds(), "total_ms", time.Since(start).Milliseconds())
	}
	c.o.Events(ev)
	for attempt := 0; attempt < 20; attempt++ {
		err := c.o.Proposer.Apply(ctx, done)
		if err == nil || ctx.Err() != nil {
			return
		}
		if errors.Is(err, state.ErrStale) || errors.Is(err, state.ErrStatus) {
			if done.OK {
				// The cluster moved on (the restore timed out, or the
				// workload was placed elsewhere): this copy must not run.
				log.Warn("the cluster refused the restore report; stopping the restored copy", "err", err)
				if id, perr := store.ParseWorkload(w.ID); perr == nil {
					if _, rerr := c.o.Local.RemoveCopies(ctx, id); rerr != nil {
						log.Error("stopping the refused copy failed", "err", rerr)
					}
				}
			}
			return
		}
		log.Warn("reporting the restore failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Controller) restoreFrom(ctx context.Context, w state.Workload) (time.Duration, error) {
	id, err := store.ParseWorkload(w.ID)
	if err != nil {
		return 0, err
	}
	// Past the leader's restore deadline the workload may already be placed
	// elsewhere: never start a copy then (a margin covers clock skew). The
	// deadline bounds the fetch and the restore too.
	deadline := w.Since.Add(RestoreTimeout - restoreMargin)
	tooOld := func() error {
		if time.Now().After(deadline) {
			return fmt.Errorf("placement of %s at epoch %d is too old to act on (since %s, deadline %s)", w.ID, w.Epoch,
				w.Since.Format(time.RFC3339), deadline.Format(time.RFC3339))
		}
		return nil
	}
	if err := tooOld(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if len(w.Config) == 0 {
		return 0, errors.New("the cluster holds no restore configuration for it")
	}
	e, err := c.o.Store.Get(id, w.Seq)
	if err != nil {
		if e, err = c.o.Replication.Fetch(ctx, w, w.Seq); err != nil {
			return 0, err
		}
	}
	if err := tooOld(); err != nil {
		return 0, err
	}
	if f, why := c.Fenced(); f {
		return 0, fmt.Errorf("this node is fenced (%s)", why)
	}
	p := ownership.Placement{Entry: e, Config: w.Config, Epoch: w.Epoch, Reason: w.Reason}
	if cp := w.Checkpoint(w.Seq); cp != nil {
		p.Record = ownership.Record{Seq: cp.Seq, SHA256: cp.SHA256, Size: cp.Size}
	}
	return c.o.Local.Restore(ctx, p)
}

// agentFailKind is the kind of an application failure the agent handed
// over, from its reason: the agent reports only an exited container
// ("container exited") and a failed liveness probe ("liveness probe
// failed ..."); anything else is a kind it cannot tell (no checkpoint is
// condemned for it). The agent's Report carries no kind of its own yet.
func agentFailKind(reason string) state.FailKind {
	switch {
	case reason == "container exited":
		return state.FailExited
	case strings.HasPrefix(reason, "liveness probe failed"):
		return state.FailProbe
	}
	return ""
}
