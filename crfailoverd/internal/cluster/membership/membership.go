// Package membership is crfailoverd's gossip membership and failure
// detection, built on hashicorp/memberlist: who is in the cluster, who is
// alive, when a node was declared dead, and each node's RPC address (in the
// gossiped node metadata).
package membership

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Profiles are failure-detection presets. "lan" declares a dead node in
// about 2 s on a LAN: probes every 400 ms with a 200 ms timeout, and
// suspicion confirmed after 3 probe intervals (memberlist's own LAN
// default takes about 5 s).
const (
	ProfileLAN   = "lan"
	ProfileWAN   = "wan"
	ProfileLocal = "local"
)

// profile returns memberlist's configuration for a profile.
func profile(name string) (*memberlist.Config, error) {
	switch name {
	case ProfileLAN, "":
		c := memberlist.DefaultLANConfig()
		c.ProbeInterval = 400 * time.Millisecond
		c.ProbeTimeout = 200 * time.Millisecond
		c.SuspicionMult = 3
		c.GossipInterval = 100 * time.Millisecond
		c.TCPTimeout = 2 * time.Second
		return c, nil
	case ProfileWAN:
		return memberlist.DefaultWANConfig(), nil
	case ProfileLocal:
		return memberlist.DefaultLocalConfig(), nil
	}
	return nil, fmt.Errorf("unknown failure profile %q (want lan, wan or local)", name)
}

// Meta is what a node tells the others about itself.
type Meta struct {
	RPCAddr string `json:"rpc"` // host:port of its gRPC/Raft listener
}

// Member is a node as this node sees it.
type Member struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"` // gossip address
	RPCAddr   string    `json:"rpc_addr"`
	Status    string    `json:"status"` // alive, suspect, dead, left
	DeadSince time.Time `json:"dead_since"`
}

// Options configure the membership.
type Options struct {
	Name          string
	BindAddr      string // host:port
	AdvertiseAddr string // host:port, or "" for memberlist's choice
	RPCPort       int    // port of the RPC listener; its host is the gossip advertise address
	Join          []string
	Key           []byte // gossip encryption key (16, 24 or 32 bytes), nil for none
	Profile       string
	Log           *slog.Logger
}

// Membership is the running gossip member.
type Membership struct {
	ml   *memberlist.Memberlist
	log  *slog.Logger
	join []string

	rpcAddr string

	mu        sync.Mutex
	members   map[string]*Member
	deadSince map[string]time.Time
	deadAddr  map[string]string // gossip address of members that died (not those that left)
	changes   chan struct{}
}

// Start creates the member and begins to gossip. Joining happens in the
// background (Run), with retries.
func Start(o Options) (*Membership, error) {
	c, err := profile(o.Profile)
	if err != nil {
		return nil, err
	}
	host, port, err := splitHostPort(o.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address: %w", err)
	}
	c.Name, c.BindAddr, c.BindPort = o.Name, host, port
	c.AdvertisePort = port
	if o.AdvertiseAddr != "" {
		if c.AdvertiseAddr, c.AdvertisePort, err = splitHostPort(o.AdvertiseAddr); err != nil {
			return nil, fmt.Errorf("gossip advertise address: %w", err)
		}
	}
	if len(o.Key) > 0 {
		c.SecretKey = o.Key
	}
	m := &Membership{log: o.Log, join: o.Join, members: map[string]*Member{}, deadSince: map[string]time.Time{}, deadAddr: map[string]string{}, changes: make(chan struct{}, 1)}
	d := &delegate{}
	c.Delegate = d
	c.Events = events{m}
	c.Logger = log.New(&logWriter{o.Log}, "", 0)
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", o.BindAddr, err)
	}
	m.ml = ml
	// The RPC address is the address memberlist advertises (chosen when
	// the bind address is a wildcard) with the RPC port.
	m.rpcAddr = net.JoinHostPort(ml.LocalNode().Addr.String(), strconv.Itoa(o.RPCPort))
	meta, err := json.Marshal(Meta{RPCAddr: m.rpcAddr})
	if err != nil {
		return nil, err
	}
	d.set(meta)
	if err := ml.UpdateNode(time.Second); err != nil {
		o.Log.Debug("announce RPC address", "err", err)
	}
	return m, nil
}

// RPCAddr is this node's advertised RPC address.
func (m *Membership) RPCAddr() string { return m.rpcAddr }

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, n, nil
}

// ReadKey reads a gossip key file: base64 (as crfailoverd keygen writes it)
// of 16, 24 or 32 bytes.
func ReadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip key: %w", err)
	}
	return DecodeKey(strings.TrimSpace(string(b)))
}

// JoinLoop joins the configured peers until at least one answers, retrying
// every second until stop is closed. It returns at once without peers.
func (m *Membership) JoinLoop(stop <-chan struct{}) {
	if len(m.join) == 0 {
		return
	}
	for attempt := 1; ; attempt++ {
		n, err := m.ml.Join(m.join)
		if n > 0 {
			m.log.Info("joined the cluster", "contacted", n, "peers", m.join)
			return
		}
		if attempt == 1 || attempt%30 == 0 {
			m.log.Warn("cannot join the cluster yet; retrying every second", "peers", m.join, "err", err)
		}
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// ReconnectLoop tries, every interval until stop is closed, to rejoin
// members it sees as dead: after a partition heals, both sides think the
// other dead and memberlist alone stops talking to dead nodes after a
// while. A successful join merges the views, and each node refutes its
// own death.
func (m *Membership) ReconnectLoop(stop <-chan struct{}, interval time.Duration) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
		m.mu.Lock()
		var addrs []string
		for _, a := range m.deadAddr {
			addrs = append(addrs, a)
		}
		m.mu.Unlock()
		if len(addrs) == 0 {
			continue
		}
		if n, err := m.ml.Join(addrs); n > 0 {
			m.log.Info("reconnected to members seen as dead", "contacted", n, "addrs", addrs)
		} else {
			m.log.Debug("dead members still unreachable", "addrs", addrs, "err", err)
		}
	}
}

// Members lists the known nodes, sorted by name. It reads this package's
// own record, kept by memberlist's event callbacks: the *Node values
// memberlist hands out are changed under its lock, so reading them later
// would race.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, x := range m.members {
		out = append(out, *x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// record copies a node into the member record; memberlist calls the event
// delegate with its lock held, so reading n here is safe.
func (m *Membership) record(n *memberlist.Node, status string) {
	x := &Member{Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Status: status}
	var meta Meta
	if json.Unmarshal(n.Meta, &meta) == nil {
		x.RPCAddr = meta.RPCAddr
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if status != "alive" {
		x.DeadSince = time.Now()
		m.deadSince[n.Name] = x.DeadSince
		if status == "dead" {
			m.deadAddr[n.Name] = x.Addr
		}
	} else {
		delete(m.deadSince, n.Name)
		delete(m.deadAddr, n.Name)
	}
	m.members[n.Name] = x
}

// Alive returns the names of the members memberlist has not declared dead
// or gone.
func (m *Membership) Alive() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]bool{}
	for name, x := range m.members {
		if x.Status == "alive" {
			out[name] = true
		}
	}
	return out
}

// Changes signals (without blocking the gossip) that membership changed.
func (m *Membership) Changes() <-chan struct{} { return m.changes }

// Leave tells the others this node is going, then stops gossiping.
func (m *Membership) Leave(timeout time.Duration) error {
	err := m.ml.Leave(timeout)
	if serr := m.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown stops gossiping without a goodbye (as a crash would).
func (m *Membership) Shutdown() error { return m.ml.Shutdown() }

func (m *Membership) notify() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

type events struct{ m *Membership }

func (e events) NotifyJoin(n *memberlist.Node) {
	e.m.record(n, "alive")
	e.m.log.Info("member joined", "member", n.Name, "addr", n.Address())
	e.m.notify()
}

func (e events) NotifyLeave(n *memberlist.Node) {
	how := "dead"
	if n.State == memberlist.StateLeft {
		how = "left"
	}
	e.m.record(n, how)
	e.m.log.Warn("member "+how, "member", n.Name, "addr", n.Address())
	e.m.notify()
}

func (e events) NotifyUpdate(n *memberlist.Node) {
	e.m.record(n, "alive")
	e.m.notify()
}

type delegate struct {
	mu   sync.Mutex
	meta []byte
}

func (d *delegate) set(meta []byte) {
	d.mu.Lock()
	d.meta = meta
	d.mu.Unlock()
}

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	switch {
	case strings.Contains(line, "[ERR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)
