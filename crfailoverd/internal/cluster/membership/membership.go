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

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/secfile"
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

// Meta is what a node tells the others about itself, in memberlist's node
// metadata (at most memberlist.MetaMaxSize, 512 bytes, as JSON).
type Meta struct {
	RPCAddr string `json:"rpc"`            // host:port of its gRPC/Raft listener
	Caps    *Caps  `json:"caps,omitempty"` // its runtime capabilities; nil until SetCaps
}

// updateTimeout bounds how long SetCaps waits for memberlist to broadcast
// new metadata when its context has no deadline.
const updateTimeout = 5 * time.Second

// Status is a member's state as this node sees it: alive, dead or left.
// There is no "suspect": memberlist's event delegate reports a node only
// when it joins (or rejoins), is updated, or is declared dead or gone, so a
// suspected node stays alive here until memberlist confirms its death.
type Status string

// The member statuses.
const (
	StatusAlive Status = "alive" // joined, or refuted its death
	StatusDead  Status = "dead"  // failure detection declared it dead
	StatusLeft  Status = "left"  // said goodbye (Leave)
)

// Alive reports whether s is StatusAlive, the one meaning of alive: dead
// and left members, and any unknown status, are not alive.
func (s Status) Alive() bool { return s == StatusAlive }

// Member is a node as this node sees it.
type Member struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"` // gossip address
	RPCAddr   string    `json:"rpc_addr"`
	Status    Status    `json:"status"`
	DeadSince time.Time `json:"dead_since"` // when it was seen dead or left; zero while alive
	// Caps are the capabilities it gossips; nil when it gossips none (not
	// detected yet, or a daemon from before capabilities).
	Caps *Caps `json:"caps,omitempty"`
}

// Options configure the membership.
type Options struct {
	Name string
	// BindAddr is the gossip host:port (UDP and TCP). Port 0 picks a free
	// port, which is then the advertised port too (GossipAddr).
	BindAddr string
	// AdvertiseAddr is the host:port the others reach this node at, or ""
	// for memberlist's choice (the bind IP, or a private IP when bound to
	// a wildcard). Port 0 means the bound port.
	AdvertiseAddr string
	RPCPort       int // port of the RPC listener; its host is the gossip advertise address
	Join          []string
	Key           []byte // gossip encryption key (16, 24 or 32 bytes), nil for none
	Profile       string
	Log           *slog.Logger // nil: discarded
	// WrapTransport, if not nil, wraps the UDP/TCP transport memberlist
	// uses (already bound), for instance to inject network faults in tests
	// (faultnet.Switch.WrapTransport). The wrapper must pass
	// FinalAdvertiseAddr through unless it means to change what is
	// advertised, and its Shutdown must shut the wrapped transport down.
	// nil: memberlist uses the transport as is.
	WrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// Membership is the running gossip member.
type Membership struct {
	ml   *memberlist.Memberlist
	log  *slog.Logger
	join []string

	name       string
	rpcAddr    string
	gossipAddr string

	// metaMu guards meta, this node's encoded Meta: SetCaps replaces it,
	// memberlist reads it (delegate.NodeMeta) from its own goroutines.
	// setMu serializes SetCaps calls.
	metaMu sync.Mutex
	meta   []byte
	setMu  sync.Mutex
	caps   *Caps

	mu       sync.Mutex
	members  map[string]*Member
	deadAddr map[string]string // gossip address of members that died (not those that left)
	leaving  map[string]bool   // members that announced they are leaving (see Leave)
	changes  chan struct{}
}

// Start creates the member and begins to gossip. Joining happens in the
// background (JoinLoop), with retries.
func Start(o Options) (*Membership, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c, err := profile(o.Profile)
	if err != nil {
		return nil, err
	}
	host, port, err := splitHostPort(o.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address: %w", err)
	}
	c.Name, c.BindAddr, c.BindPort = o.Name, host, port
	advertisePort := -1 // the bound port
	if o.AdvertiseAddr != "" {
		if c.AdvertiseAddr, advertisePort, err = splitHostPort(o.AdvertiseAddr); err != nil {
			return nil, fmt.Errorf("gossip advertise address: %w", err)
		}
	}
	if len(o.Key) > 0 {
		c.SecretKey = o.Key
	}
	c.Logger = log.New(&logWriter{o.Log}, "", 0)

	// The transport is made here rather than by memberlist so that it can
	// be wrapped, and so that a port picked by the kernel (bind port 0) is
	// known before memberlist advertises it.
	nt, err := newNetTransport(c)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", o.BindAddr, err)
	}
	c.BindPort = nt.GetAutoBindPort()
	c.AdvertisePort = c.BindPort
	if advertisePort > 0 {
		c.AdvertisePort = advertisePort
	}
	var tr memberlist.NodeAwareTransport = nt
	if o.WrapTransport != nil {
		tr = o.WrapTransport(nt)
	}
	c.Transport = tr

	// The RPC address is the address memberlist advertises (chosen when
	// the bind address is a wildcard) with the RPC port; it is in the
	// metadata from the first alive message on.
	ip, aport, err := tr.FinalAdvertiseAddr(c.AdvertiseAddr, c.AdvertisePort)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("gossip advertise address: %w", err)
	}
	m := &Membership{log: o.Log, join: o.Join, name: o.Name, members: map[string]*Member{}, deadAddr: map[string]string{}, leaving: map[string]bool{}, changes: make(chan struct{}, 1)}
	m.gossipAddr = net.JoinHostPort(ip.String(), strconv.Itoa(aport))
	m.rpcAddr = net.JoinHostPort(ip.String(), strconv.Itoa(o.RPCPort))
	if m.meta, err = encodeMeta(Meta{RPCAddr: m.rpcAddr}); err != nil {
		_ = tr.Shutdown()
		return nil, err
	}
	c.Delegate = &delegate{m: m}
	c.Events = events{m}
	ml, err := memberlist.Create(c)
	if err != nil {
		_ = tr.Shutdown() // memberlist shuts it down on some errors only; twice is harmless
		return nil, fmt.Errorf("start gossip on %s: %w", o.BindAddr, err)
	}
	m.ml = ml
	return m, nil
}

// newNetTransport binds memberlist's UDP and TCP transport as memberlist
// itself would: with bind port 0 the kernel picks the TCP port and the UDP
// socket must get the same one, which can collide, so it retries.
func newNetTransport(c *memberlist.Config) (*memberlist.NetTransport, error) {
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{c.BindAddr}, BindPort: c.BindPort, Logger: c.Logger}
	tries := 1
	if c.BindPort == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(nc); err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// encodeMeta encodes a node's metadata, refusing what memberlist could not
// carry.
func encodeMeta(meta Meta) ([]byte, error) {
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode gossip metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip metadata of %d bytes refused: memberlist carries at most %d", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// SetCaps puts this node's capabilities in its gossiped metadata and
// broadcasts the change, waiting for memberlist to send it at most until
// ctx's deadline (5 s without one). Caps the metadata cannot carry are
// refused and the metadata is left as it was. A broadcast that times out
// has still changed the metadata, which gossip and the periodic state
// exchange carry on; the error says so. Setting the same caps again does
// nothing.
func (m *Membership) SetCaps(ctx context.Context, c Caps) error {
	m.setMu.Lock()
	defer m.setMu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gossip capabilities %q: %w", c.String(), err)
	}
	if m.caps != nil && *m.caps == c {
		return nil
	}
	b, err := encodeMeta(Meta{RPCAddr: m.rpcAddr, Caps: &c})
	if err != nil {
		return fmt.Errorf("gossip capabilities %q: %w", c.String(), err)
	}
	m.metaMu.Lock()
	m.meta = b
	m.metaMu.Unlock()
	m.caps = &c
	timeout := updateTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	// Not under metaMu: UpdateNode reads the metadata through NodeMeta.
	if err := m.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip capabilities %q (set; gossip carries them on): %w", c.String(), err)
	}
	return nil
}

// GossipAddr is this node's advertised gossip address (host:port), the
// address others join it at; with bind port 0 it carries the port picked.
func (m *Membership) GossipAddr() string { return m.gossipAddr }

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
	if err := secfile.CheckPrivate(path); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
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
// delegate with its lock held, so reading n here is safe. A node that
// memberlist reports gone is left if it announced its leaving, else dead.
func (m *Membership) record(n *memberlist.Node, alive bool) Status {
	x := &Member{Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Status: StatusAlive}
	var meta Meta
	if json.Unmarshal(n.Meta, &meta) == nil {
		x.RPCAddr, x.Caps = meta.RPCAddr, meta.Caps
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if alive {
		if old := m.members[n.Name]; old == nil || !old.Status.Alive() {
			delete(m.leaving, n.Name) // back (restarted): a later death is a death
		}
		delete(m.deadAddr, n.Name)
	} else {
		x.Status, x.DeadSince = StatusDead, time.Now()
		if m.leaving[n.Name] {
			x.Status = StatusLeft
		} else {
			m.deadAddr[n.Name] = x.Addr
		}
	}
	m.members[n.Name] = x
	return x.Status
}

// leaveMsg is the user message by which a node announces it is leaving.
type leaveMsg struct {
	Leaving string `json:"leaving"`
}

// markLeaving notes that name announced its leaving; if memberlist has
// already reported it gone, it is now left rather than dead.
func (m *Membership) markLeaving(name string) {
	m.mu.Lock()
	m.leaving[name] = true
	x := m.members[name]
	upgraded := x != nil && x.Status == StatusDead
	if upgraded {
		x.Status = StatusLeft
		delete(m.deadAddr, name)
	}
	m.mu.Unlock()
	if upgraded {
		m.log.Warn("member left", "member", name)
		m.notify()
	}
}

// Alive returns the names of the members memberlist has not declared dead
// or gone.
func (m *Membership) Alive() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]bool{}
	for name, x := range m.members {
		if x.Status.Alive() {
			out[name] = true
		}
	}
	return out
}

// Changes signals (without blocking the gossip) that membership changed.
func (m *Membership) Changes() <-chan struct{} { return m.changes }

// Leave tells the others this node is going, so that they see it left
// rather than dead, then stops gossiping. It takes at most about timeout
// (which must be positive).
//
// memberlist marks a node that says goodbye as left internally, but its
// event delegate cannot tell (hashicorp/memberlist issue 293: the Node it
// passes to NotifyLeave always says alive). So Leave first sends each
// member it sees alive a "leaving" message directly, in half the timeout,
// then leaves memberlist's way in the rest. A member that misses the
// message sees this node dead.
func (m *Membership) Leave(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	m.announceLeave(timeout / 2)
	err := m.ml.Leave(max(time.Until(deadline), timeout/2))
	if serr := m.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// announceLeave sends the leaving message to every member seen alive, in
// parallel, waiting at most timeout.
func (m *Membership) announceLeave(timeout time.Duration) {
	msg, _ := json.Marshal(leaveMsg{Leaving: m.name})
	m.mu.Lock()
	m.leaving[m.name] = true
	var to []*memberlist.Node
	for _, x := range m.members {
		if x.Name == m.name || !x.Status.Alive() {
			continue
		}
		host, port, err := splitHostPort(x.Addr)
		if ip := net.ParseIP(host); err == nil && ip != nil {
			to = append(to, &memberlist.Node{Name: x.Name, Addr: ip, Port: uint16(port)})
		}
	}
	m.mu.Unlock()
	done := make(chan struct{}, len(to))
	for _, n := range to {
		go func() {
			if err := m.ml.SendReliable(n, msg); err != nil {
				m.log.Debug("announce leaving", "member", n.Name, "err", err)
			}
			done <- struct{}{}
		}()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for range to {
		select {
		case <-done:
		case <-timer.C:
			return // the stragglers end within memberlist's TCP timeout
		}
	}
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
	e.m.record(n, true)
	e.m.log.Info("member joined", "member", n.Name, "addr", n.Address())
	e.m.notify()
}

func (e events) NotifyLeave(n *memberlist.Node) {
	how := e.m.record(n, false)
	e.m.log.Warn("member "+string(how), "member", n.Name, "addr", n.Address())
	e.m.notify()
}

func (e events) NotifyUpdate(n *memberlist.Node) {
	e.m.record(n, true)
	e.m.notify()
}

// delegate hands memberlist the node metadata (set at Start and by
// SetCaps) and receives the leaving messages.
type delegate struct {
	m *Membership
}

// NodeMeta returns the current metadata. encodeMeta keeps it within
// memberlist's MetaMaxSize; a smaller limit (memberlist passes that one)
// gets the RPC address alone rather than a cut JSON document.
func (d *delegate) NodeMeta(limit int) []byte {
	d.m.metaMu.Lock()
	b := d.m.meta
	d.m.metaMu.Unlock()
	if len(b) > limit {
		b, _ = json.Marshal(Meta{RPCAddr: d.m.rpcAddr})
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) {
	var msg leaveMsg
	if json.Unmarshal(b, &msg) == nil && msg.Leaving != "" {
		d.m.markLeaving(msg.Leaving)
	}
}

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
