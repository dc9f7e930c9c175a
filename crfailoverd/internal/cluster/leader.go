package cluster

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/failover"
)

// leadership starts the leader loop when this node becomes leader and
// stops it when it stops being leader; quick flaps are handled by the
// loop's own stop channel.
func (c *Cluster) leadership(ctx context.Context) {
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
			return
		case leader := <-c.raft.LeaderCh():
			if leader && stop == nil {
				<-done
				stop, done = make(chan struct{}), make(chan struct{})
				c.log.Info("this node is the cluster leader")
				go func(stop, done chan struct{}) {
					defer close(done)
					c.leaderLoop(ctx, stop)
				}(stop, done)
			} else if !leader && stop != nil {
				c.log.Info("this node is no longer the cluster leader")
				close(stop)
				stop = nil
			}
		}
	}
}

// leaderLoop reconciles membership with Raft and makes failover
// decisions, on every membership or state change and every 250 ms.
func (c *Cluster) leaderLoop(ctx context.Context, stop <-chan struct{}) {
	// Barrier: the FSM has applied everything the old leader committed.
	start := time.Now()
	if err := c.raft.Barrier(5 * time.Second).Error(); err != nil {
		c.log.Warn("leader barrier", "err", err)
	}
	c.log.Debug("leader barrier done", "took_ms", time.Since(start).Milliseconds())
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		t0 := time.Now()
		c.reconcileMembers()
		t1 := time.Now()
		c.decide(ctx)
		if d := time.Since(t0); d > 500*time.Millisecond {
			c.log.Warn("slow leader pass", "reconcile_ms", t1.Sub(t0).Milliseconds(), "decide_ms", time.Since(t1).Milliseconds())
		}
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		case <-c.ml.Changes():
		}
	}
}

// reconcileMembers adds alive gossip members to Raft (voters up to
// MaxVoters, then non-voters), records their RPC addresses in the state,
// and removes servers that have been dead longer than DeadServerGrace,
// never below a quorum of the voters.
func (c *Cluster) reconcileMembers() {
	cf := c.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return
	}
	servers := cf.Configuration().Servers
	inRaft := map[string]raft.Server{}
	voters := 0
	for _, s := range servers {
		inRaft[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	members := c.ml.Members()
	st := c.fsm.clone()
	for _, m := range members {
		if m.Status != "alive" || m.RPCAddr == "" {
			continue
		}
		if n, ok := st.Nodes[m.Name]; !ok || n.RPCAddr != m.RPCAddr {
			c.propose("record node "+m.Name, &state.UpsertNode{At: time.Now(), Name: m.Name, RPCAddr: m.RPCAddr}, nil)
		}
		if s, ok := inRaft[m.Name]; ok && string(s.Address) == m.RPCAddr {
			continue
		}
		var f raft.IndexFuture
		if voters < c.o.MaxVoters {
			f = c.raft.AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.RPCAddr), 0, 5*time.Second)
			voters++
		} else {
			f = c.raft.AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.RPCAddr), 0, 5*time.Second)
		}
		if err := f.Error(); err != nil {
			c.log.Warn("adding a member to raft failed", "member", m.Name, "err", err)
		} else {
			c.log.Info("added a member to raft", "member", m.Name, "rpc_addr", m.RPCAddr)
		}
	}
	for _, m := range members {
		s, ok := inRaft[m.Name]
		if !ok || m.Name == c.o.Node || (m.Status != "dead" && m.Status != "left") || m.DeadSince.IsZero() {
			continue
		}
		if m.Status == "dead" && time.Since(m.DeadSince) < c.o.DeadServerGrace {
			continue
		}
		if s.Suffrage == raft.Voter && voters <= 3 {
			// Never shrink below three voters: a small cluster keeps its dead
			// server, which rejoins when it comes back.
			continue
		}
		if err := c.raft.RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
			c.log.Warn("removing a dead member from raft failed", "member", m.Name, "err", err)
			continue
		}
		if s.Suffrage == raft.Voter {
			voters--
		}
		c.log.Warn("removed a dead member from raft", "member", m.Name, "dead_since", m.DeadSince)
	}
}

// decide runs the failover decision logic on the current state and view
// and proposes what it returns.
func (c *Cluster) decide(ctx context.Context) {
	st := c.fsm.clone()
	view := failover.View{Now: time.Now(), Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	for _, m := range c.ml.Members() {
		switch m.Status {
		case "alive", "suspect":
			view.Alive[m.Name] = true
		default:
			view.DeadSince[m.Name] = m.DeadSince
			c.mu.Lock()
			seen := c.deadSeen[m.Name].Equal(m.DeadSince)
			c.deadSeen[m.Name] = m.DeadSince
			c.mu.Unlock()
			if !seen && !m.DeadSince.IsZero() {
				c.event(Event{Kind: "node-dead", Node: m.Name, At: m.DeadSince, Reason: m.Status})
			}
		}
	}
	cmds := failover.Decide(st, view, failover.Policy{FenceDelay: c.fenceDelay(), MaxAttempts: c.o.MaxAttempts, RestoreTimeout: restoreTimeout})
	for _, cmd := range cmds {
		err := c.apply(ctx, cmd)
		if err != nil {
			c.log.Warn("failover decision not committed", "cmd", describe(cmd), "err", err)
			continue
		}
		if p, ok := cmd.(*state.Place); ok {
			from := ""
			if w, ok := st.Workloads[p.ID]; ok {
				from = w.Owner
			}
			c.log.Warn("failover: workload placed", "workload", p.ID, "from", from, "to", p.Owner, "epoch", p.Epoch, "seq", p.Seq, "reason", p.Reason)
			c.event(Event{Kind: "placed", Workload: p.ID, From: from, To: p.Owner, Seq: p.Seq, Epoch: p.Epoch, Reason: p.Reason})
		} else {
			c.log.Warn("failover decision", "cmd", describe(cmd))
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
	}
	return "command"
}

// minDetect is the least time between a node losing the network and the
// others declaring it dead under the LAN profile (probe plus suspicion).
const minDetect = 1200 * time.Millisecond

// fenceDelay is how long the leader waits after a node is declared dead
// before moving its workloads: a node cut off from the others stops its
// copies within the lease of losing them, and the others declare it dead
// no sooner than minDetect after that.
func (c *Cluster) fenceDelay() time.Duration {
	return max(c.o.Lease-minDetect, 0)
}
