package faultnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still not %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// echoServer accepts on ln and echoes until the listener is closed.
func echoServer(t *testing.T, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

func roundTrip(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("bad echo " + string(buf))
	}
	return nil
}

func TestStreams(t *testing.T) {
	ctx := context.Background()
	server, client := New(), New()
	ln, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	addr := ln.Addr().String()

	c, err := client.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	within(t, 5*time.Second, "both ends tracked", func() bool { return client.open() == 1 && server.open() == 1 })
	c.Close()
	if client.open() != 0 {
		t.Errorf("closed connection still tracked")
	}

	for _, sw := range []*Switch{client, server} {
		name := map[*Switch]string{client: "client", server: "server"}[sw]
		c, err := client.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := roundTrip(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sw.Cut()
		sw.Cut() // again: nothing more happens
		if !sw.IsCut() || sw.open() != 0 {
			t.Fatalf("%s: IsCut %v with %d open connections", name, sw.IsCut(), sw.open())
		}
		if err := roundTrip(c); err == nil {
			t.Errorf("cut %s: the established connection still works", name)
		}
		c.Close()
		c, err = client.DialContext(ctx, "tcp", addr)
		if name == "client" {
			var oe *net.OpError
			if !errors.Is(err, ErrCut) || !errors.As(err, &oe) || oe.Op != "dial" || oe.Addr.String() != addr || oe.Addr.Network() != "tcp" {
				t.Errorf("dial from a cut client: %v, want an OpError wrapping ErrCut", err)
			}
		} else {
			// Connects, but the cut server hangs up instead of accepting.
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(c); err == nil {
				t.Error("a connection to a cut server works")
			}
			c.Close()
		}
		sw.Heal()
		if sw.IsCut() {
			t.Fatalf("%s: IsCut after Heal", name)
		}
		c, err = client.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("%s healed: %v", name, err)
		}
		if err := roundTrip(c); err != nil {
			t.Fatalf("%s healed: %v", name, err)
		}
		c.Close()
	}

	if _, err := client.DialContext(ctx, "tcp", "127.0.0.1:1"); err == nil || errors.Is(err, ErrCut) {
		t.Errorf("dial to a closed port: %v", err)
	}
	if _, err := server.Listen("tcp", "127.0.0.1:x"); err == nil {
		t.Error("Listen on a bad address works")
	}
}

// TestCutDuringDials cuts while connections are being made: none of them
// may survive the cut.
func TestCutDuringDials(t *testing.T) {
	host, sw := New(), New()
	ln, err := host.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	var wg sync.WaitGroup
	conns := make(chan net.Conn, 1000)
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := sw.DialContext(context.Background(), "tcp", ln.Addr().String()); err == nil {
					select {
					case conns <- c:
					case <-stop:
						c.Close()
						return
					}
				}
			}
		}()
	}
	within(t, 5*time.Second, "some connections", func() bool { return len(conns) > 10 })
	sw.Cut()
	close(stop)
	wg.Wait()
	close(conns)
	for c := range conns {
		if err := roundTrip(c); err == nil {
			t.Fatal("a connection survived the cut")
		}
		c.Close()
	}
}

// newTransport binds a memberlist NetTransport on loopback, wrapped by sw.
func newTransport(t *testing.T, sw *Switch) (memberlist.NodeAwareTransport, string) {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"}, Logger: log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := sw.WrapTransport(nt)
	t.Cleanup(func() { tr.Shutdown() })
	ip, port, err := tr.FinalAdvertiseAddr("", 0)
	if err != nil {
		t.Fatal(err)
	}
	return tr, net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// receives reports whether tr gets the packet b within d.
func receives(tr memberlist.Transport, b []byte, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case p := <-tr.PacketCh():
			if bytes.Equal(p.Buf, b) {
				return true
			}
		case <-timer.C:
			return false
		}
	}
}

// acceptor collects the streams tr hands memberlist.
func acceptor(tr memberlist.Transport) <-chan net.Conn {
	ch := make(chan net.Conn, 4)
	go func() {
		for c := range tr.StreamCh() {
			ch <- c
		}
	}()
	return ch
}

// openStream dials with dial, writes a byte and returns both ends.
func openStream(dial func() (net.Conn, error), accepted <-chan net.Conn) (net.Conn, net.Conn, error) {
	c, err := dial()
	if err != nil {
		return nil, nil, err
	}
	if _, err := c.Write([]byte("x")); err != nil {
		c.Close()
		return nil, nil, err
	}
	select {
	case s := <-accepted:
		return c, s, nil
	case <-time.After(5 * time.Second):
		c.Close()
		return nil, nil, errors.New("not accepted")
	}
}

func TestTransport(t *testing.T) {
	swA, swB := New(), New()
	a, addrA := newTransport(t, swA)
	b, addrB := newTransport(t, swB)
	acceptedA, acceptedB := acceptor(a), acceptor(b)
	dialB := func() (net.Conn, error) {
		return a.DialAddressTimeout(memberlist.Address{Addr: addrB, Name: "b"}, time.Second)
	}
	dialA := func() (net.Conn, error) { return b.DialTimeout(addrA, time.Second) }

	send := func(msg string) {
		t.Helper()
		if _, err := a.WriteToAddress([]byte(msg), memberlist.Address{Addr: addrB, Name: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	send("one")
	if !receives(b, []byte("one"), 5*time.Second) {
		t.Fatal("packet not delivered")
	}
	if _, err := a.WriteTo([]byte("two"), addrB); err != nil {
		t.Fatal(err)
	}
	if !receives(b, []byte("two"), 5*time.Second) {
		t.Fatal("packet not delivered (WriteTo)")
	}

	// A stream from a to b, tracked on both sides.
	c, s, err := openStream(dialB, acceptedB)
	if err != nil {
		t.Fatal(err)
	}
	if swA.open() != 1 || swB.open() != 1 {
		t.Fatalf("tracked streams: a %d, b %d", swA.open(), swB.open())
	}

	// Cut b: its stream is closed, packets to it are dropped, streams to
	// it are closed on arrival, and it sends nothing.
	swB.Cut()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 2)); err == nil || isTimeout(err) {
		t.Errorf("read on b's stream after the cut: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("read on a's end of the stream after b's cut: %v, want it closed", err)
	}
	c.Close()
	send("dropped")
	if receives(b, []byte("dropped"), 200*time.Millisecond) {
		t.Error("a cut node received a packet")
	}
	c, err = dialB() // the TCP connection is made, then b hangs up
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("read on a stream to a cut node: %v, want it closed", err)
	}
	c.Close()
	if _, err := b.WriteTo([]byte("from b"), addrA); err != nil {
		t.Errorf("a cut node's WriteTo reports %v; packets are dropped silently", err)
	}
	if _, err := b.WriteToAddress([]byte("from b"), memberlist.Address{Addr: addrA}); err != nil {
		t.Errorf("a cut node's WriteToAddress reports %v", err)
	}
	if receives(a, []byte("from b"), 200*time.Millisecond) {
		t.Error("a packet left a cut node")
	}
	if _, err := dialA(); !errors.Is(err, ErrCut) {
		t.Errorf("stream dial from a cut node: %v, want ErrCut", err)
	}
	if len(acceptedB) != 0 {
		t.Error("a cut node handed memberlist a stream")
	}

	// Heal: everything flows again, both ways.
	swB.Heal()
	send("three")
	if !receives(b, []byte("three"), 5*time.Second) {
		t.Fatal("packet not delivered after Heal")
	}
	for _, dir := range []struct {
		name     string
		dial     func() (net.Conn, error)
		accepted <-chan net.Conn
	}{{"a to b", dialB, acceptedB}, {"b to a", dialA, acceptedA}} {
		c, s, err := openStream(dir.dial, dir.accepted)
		if err != nil {
			t.Fatalf("stream %s after Heal: %v", dir.name, err)
		}
		c.Close()
		s.Close()
	}
	if _, err := a.DialTimeout("127.0.0.1:1", time.Second); err == nil || errors.Is(err, ErrCut) {
		t.Errorf("dial to a closed port: %v", err)
	}

	// Shutdown is idempotent and stops the forwarders.
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
