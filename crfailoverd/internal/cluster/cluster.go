// Package cluster wires crfailoverd's cluster parts into one member of the
// cluster, and owns nothing but the wiring and the Raft plumbing:
//
//   - membership: gossip membership and failure detection (memberlist);
//   - replicated: the Raft FSM over package state, with a change signal;
//   - leader: membership to Raft configuration, failover decisions;
//   - controller: this node's reaction (fencing, the ownership view for
//     the agent, restores of placements, lost copies, registration,
//     migration);
//   - replication: checkpoint records, pushes to peers, holders, fetches.
//
// The parts talk to each other through small interfaces each declares
// itself; this package implements them over hashicorp/raft, memberlist
// and the peer transport. The agent is reached only through the
// controller's Node interface, and reads only the ownership view.
package cluster

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/controller"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/leader"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/replicated"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/replication"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/failover"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Restore policies for an application failure on a live node.
const (
	PolicyPeer  = controller.PolicyPeer
	PolicyLocal = controller.PolicyLocal
)

// Options configure the cluster side of a daemon.
type Options struct {
	Node              string
	DataDir           string // Raft state goes to DataDir/raft
	BindAddr          string // gossip
	AdvertiseAddr     string // gossip, "" for memberlist's choice
	RPCAddr           string // gRPC + Raft listener
	Join              []string
	BootstrapExpect   int
	GossipKey         []byte
	TLS               *peer.TLS
	ReplicationFactor int
	Profile           string
	Lease             time.Duration // a node cut off from the quorum this long stops its copies
	DeadServerGrace   time.Duration
	MaxVoters         int
	Policy            string
	MaxAttempts       int
	Store             *store.Store
	// Local is the node's agent, which the controller asks to act.
	Local controller.Node
	// Board is where the controller publishes the ownership view the
	// agent reads.
	Board *ownership.Board
	Log   *slog.Logger
	// OnEvent, when set, is told of cluster events (failovers, restores)
	// for metrics. It must not block.
	OnEvent event.Sink
	// Capabilities is what this node's runtime can do now (the
	// capability watcher's latest); nil: nothing is reported and
	// checkpoints record no needs.
	Capabilities func() capability.Node

	// For in-process tests: the network the RPC port listens and dials on
	// (nil: the host's), a wrapper of the gossip transport (nil: none),
	// and faster loops (zero: the defaults).
	Network       peer.Network
	WrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
	Tick          time.Duration
	LostGrace     time.Duration
	// JoinWait bounds the first gossip join before Raft starts (default
	// 10 s).
	JoinWait time.Duration
	// Stabilization: how long a gossip member must be alive before the
	// leader makes it a Raft server (default 5 s).
	Stabilization time.Duration
}

// Cluster is the running cluster member.
type Cluster struct {
	o      Options
	log    *slog.Logger
	ml     *membership.Membership
	mux    *peer.Mux
	srv    *grpc.Server
	raft   *raft.Raft
	logs   io.Closer // the Raft log store, closed after Raft
	fsm    *replicated.FSM
	queue  *peer.Replicator
	repl   *replication.Replication
	ctrl   *controller.Controller
	leader *leader.Leader
	events *event.Ring
	// leaderCh gets every leadership change (raft's NotifyCh).
	leaderCh chan bool
	// raftUp is c.raft once it exists, for the Raft connection check.
	raftUp atomic.Pointer[raft.Raft]

	mu      sync.Mutex
	clients map[string]*peer.Client
}

// New starts listening (gossip, gRPC and Raft) and opens the Raft state.
// Run does the rest.
func New(o Options) (*Cluster, error) {
	if o.Lease <= 0 {
		o.Lease = 3 * time.Second
	}
	for name, missing := range map[string]bool{"Local (the node's agent)": o.Local == nil, "Board": o.Board == nil, "Store": o.Store == nil} {
		if missing {
			return nil, fmt.Errorf("cluster: option %s is required", name)
		}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{o: o, log: o.Log.With("component", "cluster"), clients: map[string]*peer.Client{},
		events: &event.Ring{Next: o.OnEvent}}
	mux, err := peer.Listen(o.RPCAddr, o.TLS, peer.WithNetwork(o.Network))
	if err != nil {
		return nil, fmt.Errorf("cluster RPC listener on %s: %w", o.RPCAddr, err)
	}
	c.mux = mux
	_, rpcPort, _ := net.SplitHostPort(mux.Addr().String())
	port, _ := strconv.Atoi(rpcPort)
	ml, err := membership.Start(membership.Options{Name: o.Node, BindAddr: o.BindAddr, AdvertiseAddr: o.AdvertiseAddr,
		RPCPort: port, Join: o.Join, Key: o.GossipKey, Profile: o.Profile, Log: o.Log.With("component", "gossip"),
		WrapTransport: o.WrapTransport})
	if err != nil {
		mux.Close()
		return nil, err
	}
	c.ml = ml
	// Raft starts after the first gossip join has succeeded or timed out,
	// so that a restarted node sees its peers alive before it may lead
	// (and decide about their workloads).
	if len(o.Join) > 0 {
		joinWait := o.JoinWait
		if joinWait <= 0 {
			joinWait = 10 * time.Second
		}
		stop := make(chan struct{})
		t := time.AfterFunc(joinWait, func() { close(stop) })
		ml.JoinLoop(stop)
		t.Stop()
	}
	advertise, err := net.ResolveTCPAddr("tcp", ml.RPCAddr())
	if err != nil {
		c.closeListeners()
		return nil, fmt.Errorf("RPC advertise address %s: %w", ml.RPCAddr(), err)
	}
	logs, snaps, err := openStores(filepath.Join(o.DataDir, "raft"), o.Log)
	if err != nil {
		c.closeListeners()
		return nil, err
	}
	mux.AuthorizeRaft(c.authorizeRaft)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: mux.RaftStream(advertise), MaxPool: 3, Timeout: 5 * time.Second, Logger: hclogOf(o.Log, "raft-net"),
	})
	// A log entry this node cannot apply stops it loudly: going on would
	// let its state diverge from the others'.
	c.fsm = replicated.NewWithOptions(replicated.Options{Fatal: func(err error) {
		c.log.Error("FATAL: cannot apply the replicated log; stopping", "err", err)
		panic(err)
	}})
	rc := raftConfig(o.Node, o.Log)
	// Every leadership change, flaps included (LeaderCh collapses a quick
	// loss and regain into nothing), so the leader loop restarts with a
	// new barrier.
	c.leaderCh = make(chan bool, 64)
	rc.NotifyCh = c.leaderCh
	r, err := raft.NewRaft(rc, c.fsm, logs, logs, snaps, trans)
	if err != nil {
		c.closeListeners()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	c.raft, c.logs = r, logs
	c.raftUp.Store(r)
	if existing, err := raft.HasExistingState(logs, logs, snaps); err == nil && existing {
		c.log.Info("raft state found; rejoining the cluster it belongs to", "dir", filepath.Join(o.DataDir, "raft"))
	}
	prop := proposer{c}
	c.repl = replication.New(replication.Options{Node: o.Node, Factor: o.ReplicationFactor, Store: o.Store, Proposer: prop,
		Members: ml, Peer: func(n string) (replication.Peer, error) { return c.client(n) }, Events: c.events.Emit,
		Log: o.Log.With("component", "replication"), Capabilities: o.Capabilities, State: c.fsm})
	c.queue = peer.NewReplicator(peer.ReplicatorOptions{
		Clients: c.client, MaxConcurrent: 4, Timeout: 2 * time.Minute, MaxTries: 5,
		OnReplicated: c.repl.Replicated, OnFailed: c.repl.ReplicateFailed, Log: o.Log.With("component", "replication"),
	})
	c.repl.UseQueue(c.queue)
	c.ctrl = controller.New(controller.Options{Node: o.Node, Lease: o.Lease, Policy: o.Policy, Local: o.Local, State: c.fsm,
		Proposer: prop, Quorum: raftNode{c}, Members: ml, Replication: c.repl, Store: o.Store, Board: o.Board,
		Events: c.events.Emit, Log: c.log, Tick: o.Tick, LostGrace: o.LostGrace, Capabilities: o.Capabilities})
	stabilization := o.Stabilization
	if stabilization <= 0 {
		stabilization = 5 * time.Second
	}
	c.leader = leader.New(leader.Options{Node: o.Node, MaxVoters: o.MaxVoters, DeadServerGrace: o.DeadServerGrace,
		Policy: failover.Policy{FenceDelay: leader.FenceDelay(o.Lease), LeaderDelay: leader.LeaderDelay(o.Lease),
			MaxAttempts: o.MaxAttempts, RestoreTimeout: controller.RestoreTimeout, RetryFailed: RetryFailed},
		Raft: raftNode{c}, Members: ml, State: c.fsm, Proposer: prop, Events: c.events.Emit, Log: c.log,
		Prove: c.prove, Stabilization: stabilization})
	c.srv = peer.NewServer(peer.Handlers{Node: o.Node, HasRaftState: func() bool { r := c.raftUp.Load(); return r != nil && r.LastIndex() > 0 }, Store: o.Store, Apply: c.applyHere, Migrate: c.Migrate, Authorize: authorizer{c},
		Log: o.Log.With("component", "peer")})
	return c, nil
}

// RetryFailed is how long after giving a workload up the leader retries
// it, when a node that can restore one of its checkpoints (not marked bad)
// is alive (failover rule 9: every copy is stopped first, the placement
// follows after the leader wait).
const RetryFailed = 30 * time.Second

func (c *Cluster) closeListeners() {
	if c.ml != nil {
		_ = c.ml.Shutdown()
	}
	if c.mux != nil {
		_ = c.mux.Close()
	}
}

// Run runs the cluster until ctx ends, then leaves the gossip and shuts
// Raft down.
func (c *Cluster) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	loop := func(f func(context.Context)) func() error {
		return func() error { f(gctx); return nil }
	}
	g.Go(func() error {
		// The listener ends when Run stops the server below; before that
		// an early end is an error.
		if err := c.srv.Serve(c.mux.GRPCListener()); err != nil && gctx.Err() == nil {
			return fmt.Errorf("cluster RPC server: %w", err)
		}
		return nil
	})
	g.Go(loop(func(ctx context.Context) { c.ml.JoinLoop(ctx.Done()) }))
	g.Go(loop(func(ctx context.Context) { c.ml.ReconnectLoop(ctx.Done(), 2*time.Second) }))
	if c.o.Capabilities != nil {
		g.Go(loop(c.gossipCaps))
	}
	g.Go(loop(c.bootstrap))
	g.Go(func() error { return c.leader.Run(gctx) })
	g.Go(func() error { return c.ctrl.Run(gctx) })
	g.Go(func() error { return c.repl.Run(gctx) })
	g.Go(loop(c.queue.Run))
	<-gctx.Done()
	c.srv.Stop()
	err := g.Wait()
	if serr := c.raft.Shutdown().Error(); serr != nil {
		c.log.Warn("raft shutdown", "err", serr)
	}
	if cerr := c.logs.Close(); cerr != nil {
		c.log.Warn("close the raft log", "err", cerr)
	}
	if lerr := c.ml.Leave(time.Second); lerr != nil {
		c.log.Debug("gossip leave", "err", lerr)
	}
	_ = c.mux.Close()
	c.mu.Lock()
	for _, cl := range c.clients {
		_ = cl.Close()
	}
	c.mu.Unlock()
	return err
}

// bootstrap forms the cluster when there is no Raft state yet: once
// BootstrapExpect members are alive, the first BootstrapExpect of them by
// name bootstrap with the same configuration. Later nodes are added by the
// leader.
func (c *Cluster) bootstrap(ctx context.Context) {
	for {
		if c.raft.LastIndex() > 0 {
			return
		}
		var alive []membership.Member
		for _, m := range c.ml.Members() {
			if m.Status.Alive() && m.RPCAddr != "" {
				alive = append(alive, m)
			}
		}
		if len(alive) >= c.o.BootstrapExpect {
			sort.Slice(alive, func(i, j int) bool { return alive[i].Name < alive[j].Name })
			first := alive[:c.o.BootstrapExpect]
			var cfg raft.Configuration
			in := false
			for _, m := range first {
				cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.RPCAddr)})
				in = in || m.Name == c.o.Node
			}
			if !in {
				c.log.Info("not among the bootstrap servers; waiting for the leader to add this node")
				return
			}
			formed, err := c.proveAll(ctx, first)
			if formed {
				c.log.Info("a peer belongs to a formed cluster; not bootstrapping, waiting for its leader to add this node")
				return
			}
			if err != nil {
				c.log.Warn("not bootstrapping yet: a member did not prove its name over mutual TLS", "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			err = c.raft.BootstrapCluster(cfg).Error()
			switch {
			case err == nil:
				c.log.Info("bootstrapped the cluster", "servers", len(cfg.Servers))
				return
			case errors.Is(err, raft.ErrCantBootstrap):
				return
			default:
				c.log.Error("bootstrap failed; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-c.ml.Changes():
		case <-time.After(time.Second):
		}
	}
}

// prove checks that addr serves a certificate of the cluster CA for node
// name and answers to that name.
func (c *Cluster) prove(ctx context.Context, name, addr string) error {
	cl, err := peer.Dial(name, addr, c.o.TLS, peer.WithNetwork(c.o.Network))
	if err != nil {
		return err
	}
	defer cl.Close()
	_, err = cl.Identify(ctx)
	return err
}

// proveAll proves every member but this node, and reports whether one of
// them already belongs to a formed cluster (then this node must not
// bootstrap a configuration of its own: the leader adds it).
func (c *Cluster) proveAll(ctx context.Context, ms []membership.Member) (formed bool, err error) {
	for _, m := range ms {
		if m.Name == c.o.Node {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		cl, err := peer.Dial(m.Name, m.RPCAddr, c.o.TLS, peer.WithNetwork(c.o.Network))
		if err == nil {
			var has bool
			has, err = cl.Identify(pctx)
			formed = formed || has
			cl.Close()
		}
		cancel()
		if err != nil {
			return formed, fmt.Errorf("%s at %s: %w", m.Name, m.RPCAddr, err)
		}
	}
	return formed, nil
}

// client returns the (cached) RPC client of a node.
func (c *Cluster) client(node string) (*peer.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.clients[node]; ok {
		return cl, nil
	}
	addr := c.rpcAddrOf(node)
	if addr == "" {
		return nil, fmt.Errorf("no RPC address known for node %s", node)
	}
	// The store decrypts this node's sealed archives as they are pushed.
	cl, err := peer.Dial(node, addr, c.o.TLS, peer.WithNetwork(c.o.Network), peer.WithArchives(c.o.Store))
	if err != nil {
		return nil, err
	}
	c.clients[node] = cl
	return cl, nil
}

func (c *Cluster) rpcAddrOf(node string) string {
	for _, m := range c.ml.Members() {
		if m.Name == node && m.RPCAddr != "" {
			return m.RPCAddr
		}
	}
	if n, ok := c.fsm.Node(node); ok {
		return n.RPCAddr
	}
	return ""
}

// proposer commits commands: on the leader through Raft, elsewhere
// forwarded to the leader. It returns the command's own error (for
// example state.ErrStale) as well as any failure to commit it.
type proposer struct{ c *Cluster }

func (p proposer) Apply(ctx context.Context, cmd state.Command) error {
	c := p.c
	b, err := state.Encode(cmd)
	if err != nil {
		return err
	}
	if c.raft.State() == raft.Leader {
		return c.applyHere(ctx, b)
	}
	_, id := c.raft.LeaderWithID()
	if id == "" {
		return errors.New("no cluster leader (no quorum?)")
	}
	cl, err := c.client(string(id))
	if err != nil {
		return fmt.Errorf("forward to leader %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cl.Apply(ctx, b); err != nil {
		return fmt.Errorf("forwarded to leader %s: %w", id, err)
	}
	return nil
}

// applyHere commits an encoded command through this node's Raft (the
// leader's), and is the handler of forwarded commands.
func (c *Cluster) applyHere(ctx context.Context, b []byte) error {
	if c.raft.State() != raft.Leader {
		_, id := c.raft.LeaderWithID()
		return fmt.Errorf("%s is not the leader (leader: %s)", c.o.Node, id)
	}
	f := c.raft.Apply(b, 5*time.Second)
	if err := f.Error(); err != nil {
		return fmt.Errorf("raft apply: %w", err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}

// raftNode adapts *raft.Raft to the leader's Raft and the controller's
// Quorum interfaces.
type raftNode struct{ c *Cluster }

func (n raftNode) LeaderCh() <-chan bool { return n.c.leaderCh }

func (n raftNode) Barrier(timeout time.Duration) error { return n.c.raft.Barrier(timeout).Error() }

func (n raftNode) Servers() ([]leader.Server, error) {
	f := n.c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	var out []leader.Server
	for _, s := range f.Configuration().Servers {
		out = append(out, leader.Server{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

func (n raftNode) AddVoter(id, addr string) error {
	return n.c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 5*time.Second).Error()
}

func (n raftNode) AddNonvoter(id, addr string) error {
	return n.c.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 5*time.Second).Error()
}

func (n raftNode) RemoveServer(id string) error {
	return n.c.raft.RemoveServer(raft.ServerID(id), 0, 5*time.Second).Error()
}

func (n raftNode) IsLeader() bool { return n.c.raft.State() == raft.Leader }

func (n raftNode) Leader() string {
	_, id := n.c.raft.LeaderWithID()
	return string(id)
}

func (n raftNode) LastContact() time.Time { return n.c.raft.LastContact() }

func (n raftNode) Voters() ([]string, error) {
	servers, err := n.Servers()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range servers {
		if s.Voter {
			out = append(out, s.ID)
		}
	}
	return out, nil
}

// Migrate moves a workload to node to. Asked on a node that does not own
// it, it is forwarded to the owner; the owner's controller does it.
func (c *Cluster) Migrate(ctx context.Context, workload, to string) (uint64, time.Duration, error) {
	w, ok := c.fsm.Workload(workload)
	if !ok {
		return 0, 0, fmt.Errorf("no workload %q in the cluster", workload)
	}
	if w.Owner != c.o.Node && w.Owner != "" && w.Owner != to {
		if !c.ml.Alive()[to] {
			return 0, 0, fmt.Errorf("target node %s is not an alive member", to)
		}
		cl, err := c.client(w.Owner)
		if err != nil {
			return 0, 0, fmt.Errorf("reach owner %s: %w", w.Owner, err)
		}
		return cl.Migrate(ctx, workload, to)
	}
	return c.ctrl.Migrate(ctx, workload, to)
}

// gossipCaps puts this node's capabilities (a short summary: runtime,
// restore path) in its gossip metadata and keeps them current; SetCaps
// does nothing for unchanged ones.
func (c *Cluster) gossipCaps(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var warned membership.Caps
	for {
		if n := c.o.Capabilities(); !n.Checked.IsZero() {
			caps := membership.CapsOf(n)
			if err := c.ml.SetCaps(ctx, caps); err != nil && ctx.Err() == nil && caps != warned {
				c.log.Warn("cannot gossip this node's capabilities", "caps", caps.String(), "err", err)
				warned = caps
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
