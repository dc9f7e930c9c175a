// Package faultnet cuts one node off the network in tests that run several
// cluster nodes in one process, without root: no firewall rules, no network
// namespaces, just a switch in front of the node's sockets.
//
// Each node gets its own Switch (New). The node listens and dials through
// it: the Switch is a peer.Network (Listen, DialContext) for the gRPC/Raft
// port, and WrapTransport wraps memberlist's gossip transport (pass it as
// membership.Options.WrapTransport). Cut then isolates that node from every
// other node in both directions, while the others keep talking to each
// other; Heal reconnects it.
//
// While a Switch is cut:
//
//   - every connection it tracks (dialed through it, accepted by its
//     listeners, or a gossip stream in either direction) has been closed;
//   - new dials fail with an error wrapping ErrCut, and connections its
//     listeners accept are closed at once (the peer sees them reset or
//     closed right after connecting; Accept does not return them);
//   - outgoing gossip packets are dropped silently, as a partitioned
//     network would, and incoming ones are discarded.
//
// Cut affects nothing that does not go through the Switch: the sockets
// stay bound, so the node keeps its addresses and Heal needs no
// rebinding. Connections are not re-established by the Switch; after Heal
// the node's own reconnect logic (gRPC's, Raft's, membership's
// ReconnectLoop) does that.
package faultnet

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrCut is the error (wrapped in a *net.OpError) of a dial through a cut
// Switch.
var ErrCut = errors.New("faultnet: node is cut off the network")

// Switch is one node's connection to the network. Its methods are safe for
// concurrent use; the zero value is not usable, call New.
type Switch struct {
	mu    sync.Mutex
	cut   bool
	conns map[*conn]struct{}
}

// New returns a Switch that is connected (not cut).
func New() *Switch { return &Switch{conns: map[*conn]struct{}{}} }

// Cut disconnects the node: it closes every open connection tracked by the
// Switch, and until Heal fails new dials, closes newly accepted connections
// and drops gossip packets both ways. Cutting a cut Switch does nothing.
func (s *Switch) Cut() {
	s.mu.Lock()
	s.cut = true
	open := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	clear(s.conns)
	s.mu.Unlock()
	for _, c := range open {
		_ = c.Conn.Close()
	}
}

// Heal reconnects the node: dials, accepts and packets go through again.
func (s *Switch) Heal() {
	s.mu.Lock()
	s.cut = false
	s.mu.Unlock()
}

// IsCut reports whether the node is cut off.
func (s *Switch) IsCut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cut
}

// open returns the number of connections the Switch tracks.
func (s *Switch) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// track adopts c: it returns c wrapped so that Cut can close it, or closes
// c and returns false if the Switch is cut.
func (s *Switch) track(c net.Conn) (net.Conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		_ = c.Close()
		return nil, false
	}
	tc := &conn{Conn: c, s: s}
	s.conns[tc] = struct{}{}
	return tc, true
}

func (s *Switch) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func cutError(op, network, addr string) error {
	return &net.OpError{Op: op, Net: network, Addr: stringAddr{network, addr}, Err: ErrCut}
}

// Listen listens on the host network (net.Listen) and returns a listener
// whose accepted connections are tracked; while the Switch is cut it
// closes them instead of returning them. Closing the listener is not
// affected by Cut.
func (s *Switch) Listen(network, addr string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return &listener{Listener: ln, s: s}, nil
}

// DialContext dials on the host network and returns a tracked connection,
// or fails with ErrCut while the Switch is cut (also if it is cut while the
// dial is in progress).
func (s *Switch) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if s.IsCut() {
		return nil, cutError("dial", network, addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc, ok := s.track(c)
	if !ok {
		return nil, cutError("dial", network, addr)
	}
	return tc, nil
}

// conn is a tracked connection.
type conn struct {
	net.Conn
	s *Switch
}

// Close closes the connection and stops tracking it.
func (c *conn) Close() error {
	c.s.forget(c)
	return c.Conn.Close()
}

type listener struct {
	net.Listener
	s *Switch
}

// Accept returns the next connection accepted while the Switch is not cut.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, ok := l.s.track(c); ok {
			return tc, nil
		}
	}
}

type stringAddr struct{ network, addr string }

func (a stringAddr) Network() string { return a.network }
func (a stringAddr) String() string  { return a.addr }

// WrapTransport wraps memberlist's transport t (for
// membership.Options.WrapTransport, or memberlist.Config.Transport) so that
// the Switch controls it: while cut, outgoing packets are dropped (WriteTo
// reports success, as UDP would), stream dials fail with ErrCut, incoming
// packets are discarded and incoming streams closed. Streams in either
// direction are tracked and closed by Cut. Shutdown shuts t down and stops
// the wrapper's goroutines.
func (s *Switch) WrapTransport(t memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
	w := &transport{
		NodeAwareTransport: t, s: s,
		packets: make(chan *memberlist.Packet), streams: make(chan net.Conn),
		done: make(chan struct{}),
	}
	w.wg.Add(2)
	go w.forwardPackets()
	go w.forwardStreams()
	return w
}

// transport is a memberlist transport behind a Switch. FinalAdvertiseAddr
// goes to the wrapped transport unchanged.
type transport struct {
	memberlist.NodeAwareTransport
	s       *Switch
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.s.IsCut() {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *transport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	if t.s.IsCut() {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, addr)
}

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.s.IsCut() {
		return nil, cutError("dial", "tcp", addr.Addr)
	}
	c, err := t.NodeAwareTransport.DialAddressTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	tc, ok := t.s.track(c)
	if !ok {
		return nil, cutError("dial", "tcp", addr.Addr)
	}
	return tc, nil
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown shuts the wrapped transport down first (memberlist still reads
// the channels then, so its listeners can finish), then the forwarders.
func (t *transport) Shutdown() error {
	err := t.NodeAwareTransport.Shutdown()
	t.once.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}

func (t *transport) forwardPackets() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.PacketCh()
	for {
		select {
		case p, ok := <-in:
			if !ok {
				return
			}
			if t.s.IsCut() {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		case <-t.done:
			return
		}
	}
}

func (t *transport) forwardStreams() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.StreamCh()
	for {
		select {
		case c, ok := <-in:
			if !ok {
				return
			}
			tc, ok := t.s.track(c)
			if !ok {
				continue
			}
			select {
			case t.streams <- tc:
			case <-t.done:
				_ = tc.Close()
				return
			}
		case <-t.done:
			return
		}
	}
}
