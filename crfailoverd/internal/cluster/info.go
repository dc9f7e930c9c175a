package cluster

import (
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// Members lists the gossip members with their Raft role.
func (c *Cluster) Members() []api.Member {
	roles := map[string]string{}
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			roles[string(s.ID)] = s.Suffrage.String()
		}
	}
	leader := raftNode{c}.Leader()
	var out []api.Member
	for _, m := range c.ml.Members() {
		x := api.Member{Name: m.Name, Addr: m.Addr, RPCAddr: m.RPCAddr, Status: string(m.Status), DeadSince: m.DeadSince,
			Raft: roles[m.Name], Leader: m.Name == leader}
		if m.Caps != nil {
			x.Capabilities = m.Caps.String()
		}
		out = append(out, x)
	}
	return out
}

// RaftPeers lists the Raft configuration as this node sees it.
func (c *Cluster) RaftPeers() api.RaftInfo {
	info := api.RaftInfo{Node: c.o.Node, State: c.raft.State().String(), LastIndex: c.raft.LastIndex(),
		AppliedIndex: c.raft.AppliedIndex()}
	info.Fenced, info.FenceReason = c.ctrl.Fenced()
	if t := c.raft.LastContact(); !t.IsZero() {
		info.LastContact = time.Since(t)
	}
	addr, id := c.raft.LeaderWithID()
	info.Leader, info.LeaderAddr = string(id), string(addr)
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			info.Peers = append(info.Peers, api.RaftPeer{ID: string(s.ID), Address: string(s.Address),
				Voter: s.Suffrage == raft.Voter, Leader: s.ID == id})
		}
	}
	sort.Slice(info.Peers, func(i, j int) bool { return info.Peers[i].ID < info.Peers[j].ID })
	return info
}

// Workloads lists the workloads of the cluster state.
func (c *Cluster) Workloads() []api.ClusterWorkload {
	st := c.fsm.State()
	var out []api.ClusterWorkload
	for _, w := range st.Workloads {
		x := api.ClusterWorkload{ID: w.ID, Owner: w.Owner, Epoch: w.Epoch, Status: string(w.Status), Reason: w.Reason,
			Since: w.Since, LastError: w.LastError, Interval: w.Interval}
		if len(w.Checkpoints) > 0 {
			cp := w.Checkpoints[0]
			x.Newest = &api.ClusterCheckpoint{Seq: cp.Seq, SHA256: cp.SHA256, Size: cp.Size, Created: cp.Created, Holders: cp.Holders}
			if cp.Runtime.Name != "" {
				x.Newest.Runtime = cp.Runtime.String()
			}
		}
		if risk, why := st.AtRisk(w); risk {
			x.AtRisk = why
		}
		for _, t := range w.Tried {
			x.Tried = append(x.Tried, t.Node+"#"+itoa(t.Seq)+": "+t.Error)
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Events returns the recent cluster events seen on this node.
func (c *Cluster) Events() []event.Event { return c.events.Recent() }

// StatusLine summarises the cluster for systemd's STATUS=.
func (c *Cluster) StatusLine() string {
	alive := len(c.ml.Alive())
	s := itoa(uint64(alive)) + " member(s) alive, raft " + c.raft.State().String()
	if f, _ := c.ctrl.Fenced(); f {
		s += ", FENCED (no quorum)"
	}
	return s
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// GossipAddr is this node's advertised gossip address.
func (c *Cluster) GossipAddr() string { return c.ml.GossipAddr() }

// RPCAddr is this node's advertised RPC (gRPC and Raft) address.
func (c *Cluster) RPCAddr() string { return c.ml.RPCAddr() }

// State is a copy of the replicated state as this node has applied it.
func (c *Cluster) State() *state.State { return c.fsm.State() }
