// Package leader is the work only the Raft leader does: it turns gossip
// membership into the Raft configuration (voters up to a limit, then
// non-voters; dead servers removed after a grace, never below three
// voters), records members' RPC addresses in the replicated state, and
// makes the failover decisions (package failover, no I/O) and commits
// them. The loop starts when this node becomes leader and stops when it
// stops being leader.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/failover"
)

// Server is a member of the Raft configuration.
type Server struct {
	ID    string
	Addr  string
	Voter bool
}

// Raft is what the leader part needs of the consensus module.
type Raft interface {
	// LeaderCh tells of leadership changes (true: this node leads now).
	LeaderCh() <-chan bool
	// Barrier waits until this node has applied everything committed.
	Barrier(timeout time.Duration) error
	Servers() ([]Server, error)
	AddVoter(id, addr string) error
	AddNonvoter(id, addr string) error
	RemoveServer(id string) error
}

// Members is the gossip view.
type Members interface {
	Members() []membership.Member
	Changes() <-chan struct{}
}

// State reads the replicated state.
type State interface {
	State() *state.State
}

// Proposer commits a command to the replicated state.
type Proposer interface {
	Apply(ctx context.Context, cmd state.Command) error
}

// Options configure the leader part.
type Options struct {
	Node            string
	MaxVoters       int
	DeadServerGrace time.Duration
	Policy          failover.Policy
	Raft            Raft
	Members         Members
	State           State
	Proposer        Proposer
	Events          event.Sink // nil: none
	Log             *slog.Logger
	// Every is how often the leader looks even without a change (default
	// 250 ms).
	Every time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Prove checks over mutual TLS that the member's RPC address serves a
	// certificate for the name it gossips; a member becomes a Raft server
	// (or changes its address) only after it has. nil: no proof (tests).
	Prove func(ctx context.Context, name, addr string) error
	// Stabilization is how long a member must have been alive at the same
	// address before it is added to Raft (as Nomad's autopilot waits).
	Stabilization time.Duration
}

// Leader is the leader part; Run follows leadership.
type Leader struct {
	o Options

	mu        sync.Mutex
	deadSeen  map[string]time.Time // dead members reported, with the time they died
	aliveSeen map[string]aliveAt   // since when each member is seen alive, at which address
	proofs    map[string]*proof    // "name@addr" -> proof of the name at that address
	passes    int
	leading   bool
	wonAt     time.Time // when this node's current term as leader began
}

type proof struct {
	running, ok bool
	at          time.Time
}

type aliveAt struct {
	addr  string
	since time.Time
}

// New makes the leader part.
func New(o Options) *Leader {
	if o.Every <= 0 {
		o.Every = 250 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Events == nil {
		o.Events = func(event.Event) {}
	}
	return &Leader{o: o, deadSeen: map[string]time.Time{}, aliveSeen: map[string]aliveAt{}}
}

// Leading reports whether the leader loop runs.
func (l *Leader) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading
}

// Passes is how many leader passes this node has made (for tests).
func (l *Leader) Passes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.passes
}

// Run starts the leader loop when this node becomes leader and stops it
// when it no longer is, until ctx ends. Quick flaps are handled by the
// loop's own stop channel.
func (l *Leader) Run(ctx context.Context) error {
	var stop chan struct{}
	done := make(chan struct{})
	close(done)
	for {
		select {
		case <-ctx.Done():
			if stop != nil {
				close(stop)
			}
			<-done
			return nil
		case leader := <-l.o.Raft.LeaderCh():
			if leader && stop == nil {
				<-done
				stop, done = make(chan struct{}), make(chan struct{})
				l.o.Log.Info("this node is the cluster leader")
				go func(stop, done chan struct{}) {
					defer close(done)
					l.loop(ctx, stop)
				}(stop, done)
			} else if !leader && stop != nil {
				l.o.Log.Info("this node is no longer the cluster leader")
				close(stop)
				stop = nil
			}
		}
	}
}

// loop reconciles membership with Raft and makes failover decisions, on
// every membership change and every Every.
func (l *Leader) loop(ctx context.Context, stop <-chan struct{}) {
	l.mu.Lock()
	l.leading, l.wonAt = true, l.o.Now()
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.leading = false
		l.mu.Unlock()
	}()
	// Barrier: the state has everything the old leader committed.
	start := time.Now()
	if err := l.o.Raft.Barrier(5 * time.Second); err != nil {
		l.o.Log.Warn("leader barrier", "err", err)
	}
	l.o.Log.Debug("leader barrier done", "took_ms", time.Since(start).Milliseconds())
	t := time.NewTicker(l.o.Every)
	defer t.Stop()
	for {
		t0 := time.Now()
		l.Reconcile()
		t1 := time.Now()
		l.Decide(ctx)
		if d := time.Since(t0); d > 500*time.Millisecond {
			l.o.Log.Warn("slow leader pass", "reconcile_ms", t1.Sub(t0).Milliseconds(), "decide_ms", time.Since(t1).Milliseconds())
		}
		l.mu.Lock()
		l.passes++
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		case <-l.o.Members.Changes():
		}
	}
}

// Reconcile adds alive gossip members to Raft (voters up to MaxVoters,
// then non-voters), records their RPC addresses in the state, and removes
// servers that have been dead longer than DeadServerGrace, never below
// three voters.
func (l *Leader) Reconcile() {
	servers, err := l.o.Raft.Servers()
	if err != nil {
		l.o.Log.Debug("raft configuration unavailable", "err", err)
		return
	}
	inRaft := map[string]Server{}
	voters := 0
	for _, s := range servers {
		inRaft[s.ID] = s
		if s.Voter {
			voters++
		}
	}
	members := l.o.Members.Members()
	st := l.o.State.State()
	for _, m := range members {
		if !m.Status.Alive() || m.RPCAddr == "" {
			continue
		}
		s, inConfig := inRaft[m.Name]
		// Gossip alone never records a node nor makes a Raft server: the
		// member must have been alive at this address for the stabilization
		// time and have proven its name over mutual TLS (a Raft server at
		// its recorded address was proven when it was added).
		if !(inConfig && s.Addr == m.RPCAddr) && !l.proven(m) {
			continue
		}
		if n, ok := st.Nodes[m.Name]; !ok || n.RPCAddr != m.RPCAddr {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := l.o.Proposer.Apply(ctx, &state.UpsertNode{At: l.o.Now(), Name: m.Name, RPCAddr: m.RPCAddr}); err != nil {
				l.o.Log.Warn("recording a member's address failed", "member", m.Name, "err", err)
			}
			cancel()
		}
		if inConfig && s.Addr == m.RPCAddr {
			continue
		}
		var err error
		if voters < l.o.MaxVoters {
			err = l.o.Raft.AddVoter(m.Name, m.RPCAddr)
			voters++
		} else {
			err = l.o.Raft.AddNonvoter(m.Name, m.RPCAddr)
		}
		if err != nil {
			l.o.Log.Warn("adding a member to raft failed", "member", m.Name, "err", err)
		} else {
			l.o.Log.Info("added a member to raft", "member", m.Name, "rpc_addr", m.RPCAddr)
		}
	}
	for _, m := range members {
		if !m.Status.Alive() {
			l.mu.Lock()
			delete(l.aliveSeen, m.Name)
			l.mu.Unlock()
		}
		s, ok := inRaft[m.Name]
		if !ok || m.Name == l.o.Node || m.Status.Alive() || m.DeadSince.IsZero() {
			continue
		}
		if m.Status == membership.StatusDead && l.o.Now().Sub(m.DeadSince) < l.o.DeadServerGrace {
			continue
		}
		if s.Voter && voters <= 3 {
			// Never shrink below three voters: a small cluster keeps its dead
			// server, which rejoins when it comes back.
			continue
		}
		if err := l.o.Raft.RemoveServer(s.ID); err != nil {
			l.o.Log.Warn("removing a dead member from raft failed", "member", m.Name, "err", err)
			continue
		}
		if s.Voter {
			voters--
		}
		l.o.Log.Warn("removed a dead member from raft", "member", m.Name, "dead_since", m.DeadSince)
	}
}

// proven reports whether m has been alive at its RPC address for the
// stabilization time and has proven its name there. Proofs run in the
// background (one at a time per member, retried at most every 2 s), so a
// member whose port hangs never holds up the leader's pass.
func (l *Leader) proven(m membership.Member) bool {
	if !l.stable(m) {
		return false
	}
	if l.o.Prove == nil {
		return true
	}
	key := m.Name + "@" + m.RPCAddr
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.proofs == nil {
		l.proofs = map[string]*proof{}
	}
	p := l.proofs[key]
	switch {
	case p != nil && p.ok:
		return true
	case p != nil && (p.running || l.o.Now().Sub(p.at) < 2*time.Second):
		return false
	}
	p = &proof{running: true, at: l.o.Now()}
	l.proofs[key] = p
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := l.o.Prove(ctx, m.Name, m.RPCAddr)
		cancel()
		l.mu.Lock()
		p.running, p.ok, p.at = false, err == nil, l.o.Now()
		l.mu.Unlock()
		if err != nil {
			l.o.Log.Warn("REFUSED to record a member: it did not prove its name over mutual TLS", "member", m.Name, "rpc_addr", m.RPCAddr, "err", err)
		}
	}()
	return false
}

// stable reports whether m has been alive at its RPC address for the
// stabilization time, and keeps track of it.
func (l *Leader) stable(m membership.Member) bool {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.aliveSeen[m.Name]
	if !ok || a.addr != m.RPCAddr {
		l.aliveSeen[m.Name] = aliveAt{addr: m.RPCAddr, since: now}
		return l.o.Stabilization <= 0
	}
	return now.Sub(a.since) >= l.o.Stabilization
}

// View is the leader's view of the members for failover.Decide: alive
// members (membership.Status.Alive, the one meaning of alive), when each
// other one was declared dead, and when this leader won. A node the state
// knows that this leader's gossip never reported (it died before this node
// joined: memberlist does not pass on members it has only heard are dead)
// counts as dead since the leader won, never since long ago: its workloads
// move only after the fence delay and the leader wait, counted from then.
func View(now, leaderSince time.Time, members []membership.Member, nodes map[string]*state.Node) failover.View {
	v := failover.View{Now: now, LeaderSince: leaderSince, Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	for _, m := range members {
		if m.Status.Alive() {
			v.Alive[m.Name] = true
		} else {
			v.DeadSince[m.Name] = m.DeadSince
		}
	}
	if !leaderSince.IsZero() {
		for name := range nodes {
			if _, seen := v.Alive[name]; !seen {
				if _, dead := v.DeadSince[name]; !dead {
					v.DeadSince[name] = leaderSince
				}
			}
		}
	}
	return v
}

// Decide runs the failover decision logic on the current state and view
// and commits what it returns.
func (l *Leader) Decide(ctx context.Context) {
	st := l.o.State.State()
	members := l.o.Members.Members()
	for _, m := range members {
		if m.Status.Alive() {
			continue
		}
		l.mu.Lock()
		seen := l.deadSeen[m.Name].Equal(m.DeadSince)
		l.deadSeen[m.Name] = m.DeadSince
		l.mu.Unlock()
		if !seen && !m.DeadSince.IsZero() {
			l.o.Events(event.Event{Kind: event.NodeDead, Node: m.Name, At: m.DeadSince, Reason: string(m.Status)})
		}
	}
	l.mu.Lock()
	won := l.wonAt
	l.mu.Unlock()
	cmds := failover.Decide(st, View(l.o.Now(), won, members, st.Nodes), l.o.Policy)
	for _, cmd := range cmds {
		if err := l.o.Proposer.Apply(ctx, cmd); err != nil {
			l.o.Log.Warn("failover decision not committed", "cmd", describe(cmd), "err", err)
			continue
		}
		if p, ok := cmd.(*state.Place); ok {
			from := ""
			if w, ok := st.Workloads[p.ID]; ok {
				from = w.Owner
			}
			l.o.Log.Warn("failover: workload placed", "workload", p.ID, "from", from, "to", p.Owner, "epoch", p.Epoch, "seq", p.Seq, "reason", p.Reason)
			l.o.Events(event.Event{Kind: event.Placed, Workload: p.ID, From: from, To: p.Owner, Seq: p.Seq, Epoch: p.Epoch, Reason: p.Reason})
		} else if u, ok := cmd.(*state.Unplaceable); ok {
			from := ""
			if w, ok := st.Workloads[u.ID]; ok {
				from = w.Owner
			}
			l.o.Log.Error("failover: no node can restore the workload", "workload", u.ID, "owner", from, "epoch", u.Epoch, "reason", u.Reason)
			l.o.Events(event.Event{Kind: Unplaceable, Workload: u.ID, From: from, Epoch: u.Epoch, Reason: u.Reason})
		} else {
			l.o.Log.Warn("failover decision", "cmd", describe(cmd))
		}
	}
}

func describe(cmd state.Command) string {
	switch x := cmd.(type) {
	case *state.Place:
		return "place " + x.ID + " on " + x.Owner
	case *state.GiveUp:
		return "give up " + x.ID + ": " + x.Reason
	case *state.RestoreDone:
		return "restore of " + x.ID + " on " + x.Node + " failed: " + x.Error
	case *state.Unplaceable:
		return "no node can restore " + x.ID + ": " + x.Reason
	}
	return "command"
}

// Unplaceable is the event kind of a workload no node can restore (From:
// its owner, Reason: each node and why). It belongs in package event's
// kinds; until it is there, it is declared here.
const Unplaceable event.Kind = "unplaceable"

// MinDetect is the least time between a node losing the network and the
// others declaring it dead under the LAN profile (probe plus suspicion).
const MinDetect = 1200 * time.Millisecond

// StopLatency is the longest a node takes to stop a copy once it knows it
// must (a pod removal), as the failover simulation models it.
const StopLatency = 500 * time.Millisecond

// FenceDelay is how long the leader waits after a node is declared dead
// before moving its workloads: a node cut off from the others stops its
// copies within the lease of losing them (plus the time a stop takes), and
// the others declare it dead no sooner than MinDetect after the cut. The
// failover simulation shows two live copies with anything less at the
// smallest lease (2 s).
func FenceDelay(lease time.Duration) time.Duration {
	return max(lease-MinDetect+StopLatency, 0)
}

// LeaderDelay is how long a new leader moves no dead owner's workload
// after it won (its own gossip view may have declared the owner dead while
// the owner still had a quorum behind the previous leader).
func LeaderDelay(lease time.Duration) time.Duration {
	return lease + StopLatency
}
