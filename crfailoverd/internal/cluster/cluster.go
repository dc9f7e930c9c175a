// Package cluster joins crfailoverd daemons into one cluster: gossip
// membership and failure detection (memberlist), a replicated state
// machine (Raft) that records every workload's owner, epoch and
// checkpoints, archive replication to peers, the leader's failover
// decisions (package failover, no I/O), and each node's controller that
// restores what the cluster placed on it and stops what it no longer owns.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Local is what the cluster needs of the node's own agent.
type Local interface {
	RecordConfig(ctx context.Context, w discovery.Workload) ([]byte, error)
	RestoreAt(ctx context.Context, e store.Entry, cfg []byte, epoch uint64) (time.Duration, error)
	RemoveCopies(ctx context.Context, id store.Workload) (int, error)
	Running(id store.Workload) bool
	Nudge()
	CheckpointNow(ctx context.Context, id store.Workload) (store.Entry, error)
	Stop(ctx context.Context, id store.Workload) error
}

// Restore policies for an application failure on a live node.
const (
	PolicyPeer  = "peer"
	PolicyLocal = "local"
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
	Log               *slog.Logger
	// OnEvent, when set, is told of cluster events (failovers, restores)
	// for metrics.
	OnEvent func(Event)
}

// Event is something the cluster did that metrics record.
type Event struct {
	Kind     string // "placed", "restored", "restore-failed", "replicated", "replicate-failed", "node-dead"
	Workload string
	Node     string
	From, To string
	Seq      uint64
	Epoch    uint64
	Reason   string
	Took     time.Duration
	Bytes    int64
	Err      string
	At       time.Time
}

// Cluster is the running cluster member.
type Cluster struct {
	o     Options
	log   *slog.Logger
	ml    *membership.Membership
	mux   *peer.Mux
	srv   *grpc.Server
	raft  *raft.Raft
	fsm   *fsm
	repl  *peer.Replicator
	local Local
	start time.Time

	mu            sync.Mutex
	clients       map[string]*peer.Client
	restoring     map[string]uint64 // workload -> epoch the controller restores or restored
	registering   map[string]bool
	everConnected bool
	minoritySince time.Time            // since when this node sees fewer than a quorum of voters answer
	lastQuorum    time.Time            // last time this node was in contact with a working quorum
	lostSince     map[string]time.Time // owned workloads with no local copy, since when
	adopted       map[string]uint64    // sandbox -> epoch a registration gave a running copy
	deadSeen      map[string]time.Time // dead members the leader has reported, with the time they died
	wasFenced     bool
	lastEvents    []Event

	proposals chan proposal
}

type proposal struct {
	what string
	cmd  state.Command
	then func(error)
}

// New starts listening (gossip, gRPC and Raft) and opens the Raft state.
// Run does the rest.
func New(o Options) (*Cluster, error) {
	if o.Lease <= 0 {
		o.Lease = 3 * time.Second
	}
	c := &Cluster{o: o, log: o.Log.With("component", "cluster"), clients: map[string]*peer.Client{},
		restoring: map[string]uint64{}, registering: map[string]bool{}, lostSince: map[string]time.Time{}, adopted: map[string]uint64{}, deadSeen: map[string]time.Time{}, proposals: make(chan proposal, 4096), start: time.Now()}
	mux, err := peer.Listen(o.RPCAddr, o.TLS)
	if err != nil {
		return nil, fmt.Errorf("cluster RPC listener on %s: %w", o.RPCAddr, err)
	}
	c.mux = mux
	_, rpcPort, _ := net.SplitHostPort(mux.Addr().String())
	port, _ := strconv.Atoi(rpcPort)
	ml, err := membership.Start(membership.Options{Name: o.Node, BindAddr: o.BindAddr, AdvertiseAddr: o.AdvertiseAddr,
		RPCPort: port, Join: o.Join, Key: o.GossipKey, Profile: o.Profile, Log: o.Log.With("component", "gossip")})
	if err != nil {
		mux.Close()
		return nil, err
	}
	c.ml = ml
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
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: mux.RaftStream(advertise), MaxPool: 3, Timeout: 5 * time.Second, Logger: hclogOf(o.Log, "raft-net"),
	})
	c.fsm = newFSM()
	r, err := raft.NewRaft(raftConfig(o.Node, o.Log), c.fsm, logs, logs, snaps, trans)
	if err != nil {
		c.closeListeners()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	c.raft = r
	if existing, err := raft.HasExistingState(logs, logs, snaps); err == nil && existing {
		c.log.Info("raft state found; rejoining the cluster it belongs to", "dir", filepath.Join(o.DataDir, "raft"))
	}
	c.srv = peer.NewServer(peer.Handlers{Store: o.Store, Apply: c.applyHere, Migrate: c.Migrate, Log: o.Log.With("component", "peer")})
	c.repl = peer.NewReplicator(peer.ReplicatorOptions{
		Clients: c.client, MaxConcurrent: 4, Timeout: 2 * time.Minute, MaxTries: 5,
		OnReplicated: c.replicated, OnFailed: c.replicateFailed, Log: o.Log.With("component", "replication"),
	})
	return c, nil
}

func (c *Cluster) closeListeners() {
	if c.ml != nil {
		_ = c.ml.Shutdown()
	}
	if c.mux != nil {
		_ = c.mux.Close()
	}
}

// SetLocal connects the node's agent; call it before Run.
func (c *Cluster) SetLocal(l Local) { c.local = l }

// Run runs the cluster until ctx ends.
func (c *Cluster) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- c.srv.Serve(c.mux.GRPCListener()) }()
	run(func(ctx context.Context) { c.ml.JoinLoop(ctx.Done()) })
	run(func(ctx context.Context) { c.ml.ReconnectLoop(ctx.Done(), 2*time.Second) })
	run(c.bootstrap)
	run(c.leadership)
	run(c.controller)
	run(c.proposer)
	run(c.repl.Run)
	select {
	case <-ctx.Done():
	case err := <-errc:
		c.log.Error("cluster RPC server stopped", "err", err)
	}
	c.srv.Stop()
	wg.Wait()
	if err := c.raft.Shutdown().Error(); err != nil {
		c.log.Warn("raft shutdown", "err", err)
	}
	if err := c.ml.Leave(time.Second); err != nil {
		c.log.Debug("gossip leave", "err", err)
	}
	_ = c.mux.Close()
	c.mu.Lock()
	for _, cl := range c.clients {
		_ = cl.Close()
	}
	c.mu.Unlock()
	return nil
}

// bootstrap forms the cluster when there is no Raft state yet: once
// BootstrapExpect members are alive, the first BootstrapExpect of them by
// name bootstrap with the same configuration. Later nodes are added by the
// leader.
func (c *Cluster) bootstrap(ctx context.Context) {
	for {
		if c.raftHasState() {
			return
		}
		var alive []membership.Member
		for _, m := range c.ml.Members() {
			if m.Status == "alive" && m.RPCAddr != "" {
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
			err := c.raft.BootstrapCluster(cfg).Error()
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

func (c *Cluster) raftHasState() bool {
	return c.raft.LastIndex() > 0
}

// fenced reports whether this node must not run or restore anything: it
// sees fewer than a quorum of the Raft voters answer (gossip notices in
// well under a second), or, as a follower, has not heard from a leader for
// longer than the lease. A node that never had contact (still forming the
// cluster) is not fenced, only not admitted.
func (c *Cluster) fenced() bool {
	c.mu.Lock()
	ever, minority, last := c.everConnected, !c.minoritySince.IsZero(), c.lastQuorum
	c.mu.Unlock()
	if !ever {
		return false
	}
	return minority || time.Since(last) > c.fenceAfter()
}

// fenceAfter is how long without a working quorum fences this node: half
// the lease, so that the copies stop (at the next discovery, a second later
// at most) within the lease, while a leader election (about a second) does
// not fence anyone.
func (c *Cluster) fenceAfter() time.Duration { return c.o.Lease / 2 }

// watchQuorum updates minoritySince from gossip: how many of the Raft
// voters (this node included) answer.
func (c *Cluster) watchQuorum() {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	alive := c.ml.Alive()
	voters, up := 0, 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if alive[string(s.ID)] || string(s.ID) == c.o.Node {
			up++
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case voters == 0 || up > voters/2:
		if !c.minoritySince.IsZero() {
			c.log.Info("quorum visible again", "voters_up", up, "voters", voters)
		}
		c.minoritySince = time.Time{}
	case c.minoritySince.IsZero():
		c.minoritySince = time.Now()
		c.log.Warn("FENCED: fewer than a quorum of voters answer; local copies stop", "voters_up", up, "voters", voters)
	}
}

// connected reports whether this node is in contact with a working quorum
// now: it leads (raft steps a leader down within its lease timeout of
// losing the quorum), or it heard from a leader within the heartbeat
// timeout.
func (c *Cluster) connected() bool {
	if c.raft.State() == raft.Leader {
		c.markConnected(time.Now())
		return true
	}
	if c.leaderID() == "" {
		return false
	}
	last := c.raft.LastContact()
	if last.IsZero() {
		return false
	}
	c.markConnected(last)
	return time.Since(last) < time.Second
}

func (c *Cluster) markConnected(at time.Time) {
	c.mu.Lock()
	if at.After(c.lastQuorum) {
		c.lastQuorum = at
	}
	if !c.everConnected {
		c.everConnected = true
		c.mu.Unlock()
		c.log.Info("connected to the cluster's quorum", "leader", string(c.leaderID()))
		return
	}
	c.mu.Unlock()
}

func (c *Cluster) leaderID() raft.ServerID {
	_, id := c.raft.LeaderWithID()
	return id
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
	cl, err := peer.Dial(node, addr, c.o.TLS)
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
	if w, ok := c.fsmNode(node); ok {
		return w
	}
	return ""
}

func (c *Cluster) fsmNode(name string) (string, bool) {
	c.fsm.mu.RLock()
	defer c.fsm.mu.RUnlock()
	n, ok := c.fsm.s.Nodes[name]
	if !ok {
		return "", false
	}
	return n.RPCAddr, true
}

// apply proposes cmd: on the leader through Raft, elsewhere forwarded to
// the leader. It returns the command's own error (for example
// state.ErrStale) as well as any failure to commit it.
func (c *Cluster) apply(ctx context.Context, cmd state.Command) error {
	b, err := state.Encode(cmd)
	if err != nil {
		return err
	}
	if c.raft.State() == raft.Leader {
		return c.applyHere(ctx, b)
	}
	leader := c.leaderID()
	if leader == "" {
		return errors.New("no cluster leader (no quorum?)")
	}
	cl, err := c.client(string(leader))
	if err != nil {
		return fmt.Errorf("forward to leader %s: %w", leader, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cl.Apply(ctx, b); err != nil {
		return fmt.Errorf("forwarded to leader %s: %w", leader, err)
	}
	return nil
}

// applyHere commits an encoded command through this node's Raft (the
// leader's), and is the handler of forwarded commands.
func (c *Cluster) applyHere(ctx context.Context, b []byte) error {
	if c.raft.State() != raft.Leader {
		return fmt.Errorf("%s is not the leader (leader: %s)", c.o.Node, c.leaderID())
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

// proposer sends queued proposals one by one, so that callers that must
// not block (the agent's hooks) can propose.
func (c *Cluster) proposer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-c.proposals:
			err := c.apply(ctx, p.cmd)
			if err != nil && !errors.Is(err, state.ErrStale) {
				c.log.Warn("cluster update failed", "what", p.what, "err", err)
			}
			if p.then != nil {
				p.then(err)
			}
		}
	}
}

func (c *Cluster) propose(what string, cmd state.Command, then func(error)) {
	select {
	case c.proposals <- proposal{what: what, cmd: cmd, then: then}:
	default:
		c.log.Error("cluster update queue full; dropping", "what", what)
	}
}

func (c *Cluster) event(e Event) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	c.mu.Lock()
	c.lastEvents = append(c.lastEvents, e)
	if len(c.lastEvents) > 200 {
		c.lastEvents = c.lastEvents[len(c.lastEvents)-200:]
	}
	c.mu.Unlock()
	if c.o.OnEvent != nil {
		c.o.OnEvent(e)
	}
}

func (c *Cluster) aliveNodes() []string {
	var out []string
	for _, m := range c.ml.Members() {
		if m.Status == "alive" {
			out = append(out, m.Name)
		}
	}
	return out
}
