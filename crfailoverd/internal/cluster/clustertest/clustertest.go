// Package clustertest runs several crfailoverd cluster members in one
// test process, as Nomad's and Consul's test servers do: each node has its
// own temporary data directory, real gossip (memberlist), real Raft and
// the real mutual-TLS peer port on 127.0.0.1 with ports the kernel picks,
// a certificate from a test CA, a network switch (faultnet) that cuts it
// off, and a FakeNode in place of the agent and the container runtime.
// Tests poll with deadlines (Eventually) instead of sleeping.
package clustertest

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/faultnet"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/pki"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Lease is the fencing lease of test clusters: the daemon's default. (The
// smallest the configuration allows, 2 s, fences every node when a leader
// election takes longer than a second, which it can.)
const Lease = 3 * time.Second

// Options tune a test cluster.
type Options struct {
	Nodes             int    // default 3
	ReplicationFactor int    // default 1
	Policy            string // default "peer"
	MaxAttempts       int    // default 3
	// Verbose logs the nodes' debug lines through t.Log.
	Verbose bool
	// Capabilities, when set, is what each node's runtime can do (asked
	// on every look, so a test may change it); nil: nothing is reported.
	Capabilities func(node string) capability.Node
}

// Cluster is a running test cluster.
type Cluster struct {
	t     testing.TB
	o     Options
	dir   string
	caDir string
	key   *seal.Key // the cluster's data key: every node's store seals its archives with it
	// Nodes is changed only by New and AddNode, on the test's goroutine;
	// nodesMu guards it against the copy sampler's reads.
	nodesMu sync.Mutex
	Nodes   []*Node
}

// capabilities is node's Options.Capabilities, or nil.
func (c *Cluster) capabilities(node string) func() capability.Node {
	if c.o.Capabilities == nil {
		return nil
	}
	return func() capability.Node { return c.o.Capabilities(node) }
}

// Node is one member.
type Node struct {
	Name   string
	Fake   *FakeNode
	Board  *ownership.Board
	Store  *store.Store
	Switch *faultnet.Switch

	c       *Cluster
	dir     string
	tls     *peer.TLS
	gossip  string // gossip host:port, fixed after the first start
	rpc     string // RPC host:port, fixed after the first start
	mu      sync.Mutex
	cl      *cluster.Cluster
	cancel  context.CancelFunc
	done    chan error    // the member's Run returned
	fake    chan struct{} // the fake's loop returned
	running bool
}

// New starts a cluster and waits until it has a leader and every node
// sees every other alive. It stops the cluster when the test ends.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.ReplicationFactor == 0 {
		o.ReplicationFactor = 1
	}
	if o.Policy == "" {
		o.Policy = cluster.PolicyPeer
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 3
	}
	c := &Cluster{t: t, o: o, dir: t.TempDir()}
	id, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if c.key, err = seal.Parse(id); err != nil {
		t.Fatal(err)
	}
	c.caDir = filepath.Join(c.dir, "ca")
	if err := os.MkdirAll(c.caDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCA(c.caDir); err != nil {
		t.Fatal(err)
	}
	for i := range o.Nodes {
		c.Nodes = append(c.Nodes, c.newNode(fmt.Sprintf("n%d", i+1)))
	}
	for _, n := range c.Nodes {
		n.Start()
	}
	t.Cleanup(c.Stop)
	c.watchCopies()
	c.Eventually(30*time.Second, "a leader and every member alive on every node", func() (bool, string) {
		if c.Leader() == nil {
			return false, "no leader"
		}
		for _, n := range c.Nodes {
			alive := 0
			for _, m := range n.Cluster().Members() {
				if m.Status == "alive" {
					alive++
				}
			}
			if alive != len(c.Nodes) {
				return false, fmt.Sprintf("%s sees %d alive", n.Name, alive)
			}
		}
		return true, ""
	})
	return c
}

func (c *Cluster) newNode(name string) *Node {
	dir := filepath.Join(c.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := pki.WriteNodeCert(dir, c.caDir, name, []net.IP{net.IPv4(127, 0, 0, 1)}, nil); err != nil {
		c.t.Fatal(err)
	}
	tlsCfg, err := peer.LoadTLS(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), filepath.Join(c.caDir, "ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	st, err := store.OpenWith(filepath.Join(dir, "checkpoints"), store.Options{Retention: 3, Key: c.key, Node: name})
	if err != nil {
		c.t.Fatal(err)
	}
	n := &Node{Name: name, Store: st, Switch: faultnet.New(), c: c, dir: dir, tls: tlsCfg,
		gossip: "127.0.0.1:0", rpc: "127.0.0.1:0"}
	n.Board = ownership.NewBoard(name)
	n.Fake = newFakeNode(name, st, n.Board)
	return n
}

// Start starts (or restarts, with its Raft state and addresses) a node.
func (n *Node) Start() {
	c := n.c
	c.t.Helper()
	var join []string
	for _, o := range c.Nodes {
		if o != n && o.gossip != "127.0.0.1:0" {
			join = append(join, o.gossip)
		}
	}
	log := slog.New(slog.DiscardHandler)
	if c.o.Verbose {
		log = slog.New(slog.NewTextHandler(testWriter{c.t, n.Name}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	n.Board = ownership.NewBoard(n.Name)
	n.Fake.powerOn(n.Board)
	expect := c.o.Nodes
	cl, err := cluster.New(cluster.Options{
		Node: n.Name, DataDir: n.dir, BindAddr: n.gossip, RPCAddr: n.rpc, Join: join, BootstrapExpect: expect,
		TLS: n.tls, ReplicationFactor: c.o.ReplicationFactor, Profile: "lan", Lease: Lease, DeadServerGrace: time.Hour,
		MaxVoters: 5, Policy: c.o.Policy, MaxAttempts: c.o.MaxAttempts, Store: n.Store, Local: n.Fake, Board: n.Board,
		Log: log, Network: n.Switch, WrapTransport: n.Switch.WrapTransport, Tick: 50 * time.Millisecond, LostGrace: time.Second,
		Stabilization: 300 * time.Millisecond, Capabilities: c.capabilities(n.Name),
	})
	if err != nil {
		c.t.Fatalf("start %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.cl, n.cancel, n.done, n.fake, n.running = cl, cancel, make(chan error, 1), make(chan struct{}), true
	done, fake, board := n.done, n.fake, n.Board
	n.mu.Unlock()
	n.gossip = cl.GossipAddr()
	n.rpc = cl.RPCAddr()
	go func() { done <- cl.Run(ctx) }()
	go func() { defer close(fake); n.Fake.run(ctx, board) }()
}

// AddNode starts one more node, configured as the first ones were (the
// same bootstrap_expect), and returns it.
func (c *Cluster) AddNode(name string) *Node {
	c.t.Helper()
	n := c.newNode(name)
	c.nodesMu.Lock()
	c.Nodes = append(c.Nodes, n)
	c.nodesMu.Unlock()
	n.Start()
	return n
}

// Cluster returns the node's running cluster member.
func (n *Node) Cluster() *cluster.Cluster {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cl
}

// Running reports whether the node is up.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running
}

// PowerCut stops the node as a power cut would: its copies die, it says
// no goodbye (its network is cut first), and its Raft state stays on disk.
func (n *Node) PowerCut() {
	n.Switch.Cut()
	n.Fake.powerOff()
	n.stop()
	n.Switch.Heal()
}

// stop stops the node gracefully (it leaves the gossip, unless its network
// is cut).
func (n *Node) stop() {
	n.mu.Lock()
	cancel, done, fake, running := n.cancel, n.done, n.fake, n.running
	n.running = false
	n.mu.Unlock()
	if !running {
		return
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			n.c.t.Errorf("%s stopped with: %v", n.Name, err)
		}
	case <-time.After(20 * time.Second):
		n.c.t.Errorf("%s did not stop within 20s", n.Name)
	}
	<-fake
}

// View is the node's current ownership view.
func (n *Node) View() *ownership.View { return n.Board.View() }

// watchCopies checks, every 10 ms until the test ends, that no workload
// has two live copies at once, and fails the test when one has.
func (c *Cluster) watchCopies() {
	stop := make(chan struct{})
	done := make(chan struct{})
	c.t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			seen := map[store.Workload][]string{}
			c.nodesMu.Lock()
			nodes := append([]*Node(nil), c.Nodes...)
			c.nodesMu.Unlock()
			for _, n := range nodes {
				for id, cp := range n.Fake.Copies() {
					seen[id] = append(seen[id], fmt.Sprintf("%s@%d", n.Name, max(cp.Epoch, 1)))
				}
			}
			for id, where := range seen {
				if len(where) > 1 {
					c.t.Errorf("two live copies of %s at once: %v", id, where)
				}
			}
		}
	}()
}

// Stop stops every node.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.stop() }()
	}
	wg.Wait()
}

// Node returns the node called name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// Leader returns the node that is Raft leader, as a running node sees it
// itself, or nil.
func (c *Cluster) Leader() *Node {
	for _, n := range c.Nodes {
		if n.Running() && n.Cluster().RaftPeers().State == "Leader" {
			return n
		}
	}
	return nil
}

// Running returns the running nodes.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Eventually polls cond until it holds, and fails the test with what and
// the last reason cond gave after timeout.
func (c *Cluster) Eventually(timeout time.Duration, what string, cond func() (bool, string)) {
	c.t.Helper()
	poll.Until(c.t, timeout, what, cond)
}

// LiveCopies lists "node@epoch" for every live copy of id (a powered-off
// node has none).
func (c *Cluster) LiveCopies(id store.Workload) []string {
	var out []string
	for _, n := range c.Nodes {
		if cp, ok := n.Fake.Copies()[id]; ok {
			out = append(out, fmt.Sprintf("%s@%d", n.Name, max(cp.Epoch, 1)))
		}
	}
	return out
}

// AgreeOn waits until every running node's view shows id owned by owner
// at epoch with status, and owner runs exactly one copy of it, at that
// epoch, and no other node runs one.
func (c *Cluster) AgreeOn(timeout time.Duration, id store.Workload, owner string, epoch uint64, status string) {
	c.t.Helper()
	c.Eventually(timeout, fmt.Sprintf("every node sees %s on %s at epoch %d %s, with one copy", id, owner, epoch, status), func() (bool, string) {
		for _, n := range c.Running() {
			e, ok := n.View().Workloads[id.String()]
			if !ok {
				return false, n.Name + " does not know it"
			}
			if e.Owner != owner || (epoch != 0 && e.Epoch != epoch) || e.Status != status {
				return false, fmt.Sprintf("%s sees it on %q at epoch %d %s (%s)", n.Name, e.Owner, e.Epoch, e.Status, e.Why)
			}
		}
		copies := c.LiveCopies(id)
		if want := fmt.Sprintf("%s@%d", owner, epoch); len(copies) != 1 || (epoch != 0 && copies[0] != want) {
			return false, fmt.Sprintf("live copies %v, want [%s]", copies, want)
		}
		return true, ""
	})
}

type testWriter struct {
	t    testing.TB
	node string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(w.node + ": " + strings.TrimSpace(string(p)))
	return len(p), nil
}

// ClientAs dials node to with a certificate of the cluster's CA for name
// (a member's name, or one that is no member): the client a hostile holder
// of a valid certificate would have.
func (c *Cluster) ClientAs(name string, to *Node) *peer.Client {
	c.t.Helper()
	return c.clientWith(c.caDir, name, to)
}

// ClientOfOtherCA dials node to with a certificate for name signed by a
// CA that is not the cluster's (and trusting that CA only).
func (c *Cluster) ClientOfOtherCA(name string, to *Node) *peer.Client {
	c.t.Helper()
	other := filepath.Join(c.t.TempDir(), "other-ca")
	if err := os.MkdirAll(other, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := pki.WriteCA(other); err != nil {
		c.t.Fatal(err)
	}
	return c.clientWith(other, name, to)
}

// TLSAs returns TLS material for name signed by the cluster's CA.
func (c *Cluster) TLSAs(name string) *peer.TLS {
	c.t.Helper()
	return c.tlsWith(c.caDir, name)
}

func (c *Cluster) tlsWith(caDir, name string) *peer.TLS {
	dir := filepath.Join(c.t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := pki.WriteNodeCert(dir, caDir, name, []net.IP{net.IPv4(127, 0, 0, 1)}, nil); err != nil {
		c.t.Fatal(err)
	}
	t, err := peer.LoadTLS(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), filepath.Join(caDir, "ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	return t
}

func (c *Cluster) clientWith(caDir, name string, to *Node) *peer.Client {
	cl, err := peer.Dial(to.Name, to.rpc, c.tlsWith(caDir, name))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// RPCAddr is the node's RPC (gRPC and Raft) address.
func (n *Node) RPCAddr() string { return n.rpc }
