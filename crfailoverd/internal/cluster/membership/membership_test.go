package membership

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/faultnet"
)

// node is one member of a test cluster, behind its own network switch.
type node struct {
	*Membership
	name string
	sw   *faultnet.Switch
	stop chan struct{}
}

// startNode starts a member on 127.0.0.1 with a kernel-picked port that
// joins the given gossip addresses and runs JoinLoop and a fast
// ReconnectLoop until the test ends.
func startNode(t *testing.T, name string, rpcPort int, key []byte, join ...string) *node {
	t.Helper()
	sw := faultnet.New()
	m, err := Start(Options{
		Name: name, BindAddr: "127.0.0.1:0", RPCPort: rpcPort, Join: join, Key: key,
		Profile: ProfileLAN, WrapTransport: sw.WrapTransport,
	})
	if err != nil {
		t.Fatalf("Start %s: %v", name, err)
	}
	n := &node{Membership: m, name: name, sw: sw, stop: make(chan struct{})}
	done := make(chan struct{}, 2)
	go func() { m.JoinLoop(n.stop); done <- struct{}{} }()
	go func() { m.ReconnectLoop(n.stop, 100*time.Millisecond); done <- struct{}{} }()
	t.Cleanup(func() {
		close(n.stop)
		<-done
		<-done
		_ = m.Shutdown()
	})
	return n
}

// statuses returns how n sees every member: name -> status.
func (n *node) statuses() map[string]Status {
	out := map[string]Status{}
	for _, m := range n.Members() {
		out[m.Name] = m.Status
	}
	return out
}

// eventually polls cond every 20 ms until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("after %v: still not %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// sees reports whether every node in from sees every member of want with
// that status.
func sees(from []*node, want map[string]Status) func() bool {
	return func() bool {
		for _, n := range from {
			got := n.statuses()
			for name, st := range want {
				if got[name] != st {
					return false
				}
			}
		}
		return true
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func changed(t *testing.T, n *node, what string) {
	t.Helper()
	select {
	case <-n.Changes():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no change signalled on %s", what, n.name)
	}
}

// TestPartitionAndHeal runs three members in this process, cuts one off
// with faultnet, heals it and makes one leave.
func TestPartitionAndHeal(t *testing.T) {
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := DecodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, "a", 7001, k)
	b := startNode(t, "b", 7002, k, a.GossipAddr())
	c := startNode(t, "c", 7003, k, a.GossipAddr(), b.GossipAddr())
	all := []*node{a, b, c}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range all {
				t.Logf("%s sees %+v", n.name, n.Members())
			}
		}
	})
	for _, n := range all {
		host, port, err := net.SplitHostPort(n.GossipAddr())
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("%s: GossipAddr %q, want 127.0.0.1 and the picked port", n.name, n.GossipAddr())
		}
	}

	allAlive := map[string]Status{"a": StatusAlive, "b": StatusAlive, "c": StatusAlive}
	eventually(t, 10*time.Second, "all alive everywhere", sees(all, allAlive))
	for _, n := range all {
		ms := n.Members()
		if len(ms) != 3 {
			t.Fatalf("%s sees %d members: %+v", n.name, len(ms), ms)
		}
		for i, m := range ms {
			o := all[i] // Members is sorted by name, as all is
			if m.Name != o.name || m.Addr != o.GossipAddr() || m.RPCAddr != o.RPCAddr() || !m.DeadSince.IsZero() {
				t.Errorf("%s sees %+v; %s is at %s, RPC %s", n.name, m, o.name, o.GossipAddr(), o.RPCAddr())
			}
		}
		if got := n.Alive(); len(got) != 3 || !got["a"] || !got["b"] || !got["c"] {
			t.Errorf("%s: Alive() = %v", n.name, got)
		}
	}
	if want := "127.0.0.1:7003"; c.RPCAddr() != want {
		t.Errorf("RPCAddr = %s, want %s", c.RPCAddr(), want)
	}

	// Cut c: a and b see it dead, c sees both dead.
	drain(a.Changes())
	cutAt := time.Now()
	c.sw.Cut()
	took := eventually(t, 10*time.Second, "c dead on a and b", sees([]*node{a, b}, map[string]Status{"a": StatusAlive, "b": StatusAlive, "c": StatusDead}))
	t.Logf("a and b declared c dead after %v", took.Round(10*time.Millisecond))
	changed(t, a, "c's death")
	for _, n := range []*node{a, b} {
		for _, m := range n.Members() {
			if m.Name == "c" && (m.DeadSince.Before(cutAt) || m.DeadSince.After(time.Now())) {
				t.Errorf("%s: c dead since %v, cut at %v", n.name, m.DeadSince, cutAt)
			}
		}
		if n.Alive()["c"] {
			t.Errorf("%s: Alive() still has c", n.name)
		}
	}
	// Without confirmations from others, c's suspicion of a and b runs
	// its full course (memberlist's SuspicionMaxTimeoutMult).
	eventually(t, 30*time.Second, "a and b dead on c", sees([]*node{c}, map[string]Status{"a": StatusDead, "b": StatusDead, "c": StatusAlive}))
	t.Logf("c declared a and b dead after %v", time.Since(cutAt).Round(10*time.Millisecond))

	// Heal: the ReconnectLoops merge the views again.
	c.sw.Heal()
	took = eventually(t, 15*time.Second, "all alive again after the heal", sees(all, allAlive))
	t.Logf("healed in %v", took.Round(10*time.Millisecond))

	// c leaves: a and b see it left, not dead.
	drain(a.Changes())
	if err := c.Leave(time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	eventually(t, 10*time.Second, "c left on a and b", sees([]*node{a, b}, map[string]Status{"a": StatusAlive, "b": StatusAlive, "c": StatusLeft}))
	if st := c.statuses()["c"]; st != StatusLeft {
		t.Errorf("c sees itself %s after leaving, want left", st)
	}
	changed(t, a, "c's leaving")
	a.mu.Lock()
	_, reconnecting := a.deadAddr["c"]
	a.mu.Unlock()
	if reconnecting {
		t.Error("a would keep trying to rejoin c, which left")
	}
}

// TestLeavingMessage checks the bookkeeping of leaving announcements in
// both orders: before memberlist reports the node gone, and after.
func TestLeavingMessage(t *testing.T) {
	m := &Membership{log: slog.New(slog.DiscardHandler), members: map[string]*Member{}, deadAddr: map[string]string{}, leaving: map[string]bool{}, changes: make(chan struct{}, 1)}
	d := &delegate{m: m}
	x := &memberlist.Node{Name: "x", Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Meta: []byte(`{"rpc":"127.0.0.1:7000"}`)}
	status := func() Status { return m.Members()[0].Status }

	// Announced, then gone: left.
	m.record(x, true)
	d.NotifyMsg([]byte(`{"leaving":"x"}`))
	if status() != StatusAlive {
		t.Fatalf("after the announcement: %s, want still alive", status())
	}
	if got := m.record(x, false); got != StatusLeft || len(m.deadAddr) != 0 {
		t.Fatalf("gone after announcing: %s (reconnect to %v)", got, m.deadAddr)
	}
	// Back (restarted), gone without announcing: dead.
	m.record(x, true)
	if got := m.record(x, false); got != StatusDead || m.deadAddr["x"] != "127.0.0.1:7946" {
		t.Fatalf("gone without announcing: %s (reconnect to %v)", got, m.deadAddr)
	}
	// A late announcement turns the death into a leave, and says so.
	drain(m.changes)
	d.NotifyMsg([]byte(`{"leaving":"x"}`))
	if ms := m.Members(); ms[0].Status != StatusLeft || ms[0].DeadSince.IsZero() || len(m.deadAddr) != 0 || ms[0].RPCAddr != "127.0.0.1:7000" {
		t.Fatalf("after a late announcement: %+v (reconnect to %v)", ms[0], m.deadAddr)
	}
	select {
	case <-m.changes:
	default:
		t.Error("no change signalled for the late announcement")
	}
	// Other messages are ignored; so is an update of a live member.
	d.NotifyMsg([]byte("junk"))
	d.NotifyMsg([]byte(`{}`))
	m.record(x, true)
	m.record(x, true)
	if got := m.record(x, false); got != StatusDead {
		t.Errorf("restarted and gone: %s, want dead", got)
	}
	if d.LocalState(false) != nil || d.GetBroadcasts(0, 100) != nil {
		t.Error("the delegate has state or broadcasts")
	}
	d.MergeRemoteState(nil, false)
}

func TestStatusAlive(t *testing.T) {
	for st, want := range map[Status]bool{StatusAlive: true, StatusDead: false, StatusLeft: false, "suspect": false, "": false} {
		if st.Alive() != want {
			t.Errorf("%q.Alive() = %v", st, !want)
		}
	}
}

func TestStartPorts(t *testing.T) {
	free := freePort(t)
	for _, tc := range []struct {
		name, bind, advertise string
		wantHost              string
		wantPort              func(bound int) int
	}{
		{"picked port", "127.0.0.1:0", "", "127.0.0.1", func(bound int) int { return bound }},
		{"fixed port", "127.0.0.1:" + strconv.Itoa(free), "", "127.0.0.1", func(int) int { return free }},
		{"advertised host, picked port", "127.0.0.1:0", "127.0.0.2:0", "127.0.0.2", func(bound int) int { return bound }},
		{"advertised host and port", "127.0.0.1:0", "127.0.0.2:17946", "127.0.0.2", func(int) int { return 17946 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Start(Options{Name: "n", BindAddr: tc.bind, AdvertiseAddr: tc.advertise, RPCPort: 7100, Profile: ProfileLocal})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Shutdown()
			host, port := splitAddr(t, m.GossipAddr())
			if host != tc.wantHost || port != tc.wantPort(port) || port == 0 {
				t.Errorf("GossipAddr = %s", m.GossipAddr())
			}
			if want := net.JoinHostPort(tc.wantHost, "7100"); m.RPCAddr() != want {
				t.Errorf("RPCAddr = %s, want %s", m.RPCAddr(), want)
			}
			self := m.Members()
			if len(self) != 1 || self[0].Name != "n" || self[0].Addr != m.GossipAddr() || self[0].RPCAddr != m.RPCAddr() || self[0].Status != StatusAlive {
				t.Errorf("Members = %+v", self)
			}
		})
	}
}

// TestPickedPortIsJoinable joins a member whose bound port the kernel
// picked at the address it advertises, without a faultnet switch.
func TestPickedPortIsJoinable(t *testing.T) {
	a, err := Start(Options{Name: "a", BindAddr: "127.0.0.1:0", Profile: ProfileLocal})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := Start(Options{Name: "b", BindAddr: "127.0.0.1:0", Profile: ProfileLocal, Join: []string{a.GossipAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	stop := make(chan struct{})
	defer close(stop)
	b.JoinLoop(stop) // returns once joined
	eventually(t, 10*time.Second, "a sees b", func() bool { return a.Alive()["b"] })
	a.JoinLoop(stop) // nothing to join: returns at once
}

func TestJoinLoopRetriesUntilStopped(t *testing.T) {
	logs := &syncBuffer{}
	m, err := Start(Options{Name: "a", BindAddr: "127.0.0.1:0", Profile: ProfileLocal,
		Join: []string{"127.0.0.1:" + strconv.Itoa(freePort(t))},
		Log:  slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { m.JoinLoop(stop); close(done) }()
	eventually(t, 10*time.Second, "a warning that joining fails", func() bool {
		return strings.Contains(logs.String(), "cannot join the cluster yet")
	})
	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("JoinLoop did not stop")
	}
}

func TestStartErrors(t *testing.T) {
	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Name: "n", BindAddr: "127.0.0.1:0", Profile: "moon"}, "unknown failure profile"},
		{Options{Name: "n", BindAddr: "127.0.0.1"}, "gossip bind address"},
		{Options{Name: "n", BindAddr: "127.0.0.1:x"}, "gossip bind address"},
		{Options{Name: "n", BindAddr: "127.0.0.1:0", AdvertiseAddr: "nowhere"}, "gossip advertise address"},
		{Options{Name: "n", BindAddr: "127.0.0.1:0", AdvertiseAddr: "not-an-ip:1"}, "gossip advertise address"},
		{Options{Name: "n", BindAddr: taken.LocalAddr().String()}, "start gossip"},
		{Options{Name: "n", BindAddr: "127.0.0.1:0", Key: []byte("short")}, "start gossip"},
	} {
		m, err := Start(tc.o)
		if err == nil {
			m.Shutdown()
			t.Errorf("Start(%+v) works, want %q", tc.o, tc.want)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%+v): %v, want %q", tc.o, err, tc.want)
		}
	}
}

func TestProfiles(t *testing.T) {
	for _, name := range []string{"", ProfileLAN, ProfileWAN, ProfileLocal} {
		if _, err := profile(name); err != nil {
			t.Errorf("profile %q: %v", name, err)
		}
	}
	c, _ := profile(ProfileLAN)
	if c.ProbeInterval != 400*time.Millisecond || c.SuspicionMult != 3 {
		t.Errorf("lan profile: probe %v, suspicion mult %d", c.ProbeInterval, c.SuspicionMult)
	}
}

func TestKeys(t *testing.T) {
	s, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := ReadKey(path)
	if err != nil || len(k) != 32 {
		t.Fatalf("ReadKey: %d bytes, %v", len(k), err)
	}
	if _, err := ReadKey(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "read gossip key") {
		t.Errorf("missing key file: %v", err)
	}
	if _, err := DecodeKey("!!"); err == nil || !strings.Contains(err.Error(), "not base64") {
		t.Errorf("not base64: %v", err)
	}
	if _, err := DecodeKey("AAAA"); err == nil || !strings.Contains(err.Error(), "want 16, 24 or 32") {
		t.Errorf("3 bytes: %v", err)
	}
}

func TestLogWriterLevels(t *testing.T) {
	var buf bytes.Buffer
	w := &logWriter{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, line := range []string{"[ERR] memberlist: boom", "[WARN] memberlist: hmm", "[DEBUG] memberlist: fine"} {
		if n, err := fmt.Fprintln(w, line); err != nil || n != len(line)+1 {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	got := buf.String()
	for _, want := range []string{"level=ERROR msg=\"[ERR] memberlist: boom\" component=memberlist", "level=WARN", "level=DEBUG"} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q:\n%s", want, got)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func splitAddr(t *testing.T, hp string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}
