package peer

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestLoadTLSChecks(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	other := newCA(t, "other-ca")

	if tl := ca.nodeTLS(t, "node-a"); tl.Name() != "node-a" {
		t.Errorf("Name = %q, want node-a", tl.Name())
	}
	c, k := other.issue(t, "node-a")
	if _, err := LoadTLS(writeFiles(t, c, k, ca.pem)); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("certificate of another CA: %v", err)
	}
	c, k = ca.issue(t, "node-a", "elsewhere")
	if _, err := LoadTLS(writeFiles(t, c, k, ca.pem)); err == nil || !strings.Contains(err.Error(), "DNS SANs") {
		t.Errorf("CN missing from the DNS SANs: %v", err)
	}
}

// TestRaftAndGRPCShareThePort dials the Raft side of a Mux and calls its
// gRPC side on the same port, then runs a real raft NetworkTransport RPC.
func TestRaftAndGRPCShareThePort(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	applied := make(chan string, 10)
	b := startPeer(t, ca, "node-b", Handlers{Apply: func(ctx context.Context, cmd []byte) error {
		applied <- string(cmd)
		return nil
	}})
	a := startPeer(t, ca, "node-a", Handlers{})
	streamA, streamB := a.mux.RaftStream(nil), b.mux.RaftStream(nil)
	if streamB.Addr().String() != b.addr {
		t.Errorf("raft stream Addr = %v, want %v", streamB.Addr(), b.addr)
	}

	accepted := make(chan error, 1)
	go func() {
		c, err := streamB.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			accepted <- err
			return
		}
		_, err = c.Write([]byte("pong"))
		accepted <- err
	}()
	c, err := streamA.Dial(raft.ServerAddress(b.addr), 5*time.Second)
	if err != nil {
		t.Fatalf("raft Dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	// gRPC on the same port while the raft connection is open.
	if err := b.client(t, a.tls).Apply(context.Background(), []byte("hello")); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := recvTimeout(t, applied, "Apply"); got != "hello" {
		t.Errorf("applied %q", got)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read pong: %q, %v", buf, err)
	}
	if err := recvTimeout(t, accepted, "raft accept"); err != nil {
		t.Fatalf("raft side: %v", err)
	}

	// A real raft transport over the stream layers.
	ta := raft.NewNetworkTransport(streamA, 2, 5*time.Second, io.Discard)
	tb := raft.NewNetworkTransport(streamB, 2, 5*time.Second, io.Discard)
	go func() {
		rpc := <-tb.Consumer()
		rpc.Respond(&raft.AppendEntriesResponse{Term: 7, Success: true}, nil)
	}()
	var resp raft.AppendEntriesResponse
	if err := ta.AppendEntries("node-b", raft.ServerAddress(b.addr), &raft.AppendEntriesRequest{Term: 7}, &resp); err != nil {
		t.Fatalf("AppendEntries: %v", err)
	}
	if !resp.Success || resp.Term != 7 {
		t.Errorf("AppendEntries response %+v", resp)
	}
	ta.Close()
	tb.Close()

	// Closing the raft side leaves gRPC working.
	if err := b.client(t, a.tls).Apply(context.Background(), []byte("after")); err != nil {
		t.Fatalf("Apply after closing raft: %v", err)
	}
}

func TestForeignClientCertRejected(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	other := newCA(t, "other-ca")
	b := startPeer(t, ca, "node-b", Handlers{Apply: func(context.Context, []byte) error { return nil }})

	// Trusts the cluster CA but presents a certificate from another CA.
	c, k := other.issue(t, "node-a")
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	good := ca.nodeTLS(t, "node-x")
	mallory := &TLS{cert: cert, pool: good.pool, name: "node-a"}

	// Present it even though the server asks for certificates of its CA.
	cfg := mallory.ClientConfig("node-b", alpnRaft)
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	conn, err := tls.Dial("tcp", b.addr, cfg)
	if err == nil {
		// With TLS 1.3 the server's verdict arrives after the client's
		// handshake has completed.
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Errorf("raw TLS with a foreign certificate: %v, want the server to reject its authority", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.client(t, mallory).Apply(ctx, nil); err == nil {
		t.Error("gRPC with a foreign certificate succeeded")
	} else {
		t.Logf("gRPC: %v", err)
	}
	// A client of another cluster does not accept the server either.
	if err := b.client(t, other.nodeTLS(t, "node-a")).Apply(ctx, nil); err == nil {
		t.Error("client trusting another CA accepted the server")
	}
}

// TestStalledHandshakeDoesNotBlock opens connections that never finish
// (or never negotiate a known protocol) and checks that others get through.
func TestStalledHandshakeDoesNotBlock(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	b := startPeer(t, ca, "node-b", Handlers{Apply: func(context.Context, []byte) error { return nil }})
	a := ca.nodeTLS(t, "node-a")

	for range 3 {
		idle, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.client(t, a).Apply(ctx, nil); err != nil {
		t.Fatalf("Apply with stalled handshakes around: %v", err)
	}

	// No ALPN protocol: the handshake completes, then the Mux hangs up.
	conn, err := tls.Dial("tcp", b.addr, a.ClientConfig("node-b"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on a connection without protocol: %v, want EOF", err)
	}
}

func TestMuxClose(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	m, err := Listen("127.0.0.1:0", ca.nodeTLS(t, "node-a"))
	if err != nil {
		t.Fatal(err)
	}
	idle, err := net.Dial("tcp", m.Addr().String()) // a handshake in progress
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	accepted := make(chan error, 2)
	for _, l := range []net.Listener{m.GRPCListener(), m.RaftStream(nil)} {
		go func() {
			_, err := l.Accept()
			accepted <- err
		}()
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := recvTimeout(t, accepted, "Accept to fail"); err == nil {
			t.Error("Accept succeeded after Close")
		}
	}
}
