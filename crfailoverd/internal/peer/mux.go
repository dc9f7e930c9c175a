// Package peer carries everything that crosses the network between
// crfailoverd daemons: one TCP port (config cluster.rpc_addr) with mutual
// TLS, split by ALPN between a gRPC service (archive pushes and fetches,
// forwarded Raft commands, migrations) and the hashicorp/raft transport.
//
// Every node has a certificate signed by the cluster CA whose CommonName is
// the node name. The same certificate serves both sides: it must carry the
// node name in its DNS SANs (gRPC clients verify a peer by node name), the
// node's IP addresses in its IP SANs (Raft knows peers only by address and
// verifies the host of the address), and both the server and client
// extended key usages.
package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/credentials"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/secfile"
)

// ALPN protocol names the Mux dispatches on.
const (
	alpnGRPC = "h2"
	alpnRaft = "crfailoverd-raft"
)

// handshakeTimeout bounds a TLS handshake on the Mux, and a Raft dial when
// Raft passes no timeout.
const handshakeTimeout = 10 * time.Second

// TLS holds this node's certificate and the cluster CA, and makes the
// tls.Configs for both sides of a connection.
type TLS struct {
	cert tls.Certificate
	pool *x509.CertPool
	name string
}

// LoadTLS loads this node's certificate and key and the cluster CA (PEM
// files). It checks that the certificate chains to the CA for both server
// and client use and that its DNS SANs include its CommonName, the node
// name peers verify it by.
func LoadTLS(certFile, keyFile, caFile string) (*TLS, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("peer: load certificate %s and key %s: %w", certFile, keyFile, err)
	}
	if err := secfile.CheckPrivate(keyFile); err != nil {
		return nil, fmt.Errorf("peer: TLS key: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("peer: load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("peer: load CA: no PEM certificate in %s", caFile)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("peer: parse certificate %s: %w", certFile, err)
		}
	}
	name := leaf.Subject.CommonName
	if name == "" {
		return nil, fmt.Errorf("peer: certificate %s has no CommonName; it must be the node name", certFile)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("peer: parse intermediate certificate in %s: %w", certFile, err)
		}
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}
		if _, err := leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("peer: certificate %s (CN %q) does not verify against CA %s for %s: %w",
				certFile, name, caFile, usageName(usage), err)
		}
	}
	if err := leaf.VerifyHostname(name); err != nil {
		return nil, fmt.Errorf("peer: certificate %s: its DNS SANs must include its CommonName %q: %w", certFile, name, err)
	}
	return &TLS{cert: cert, pool: pool, name: name}, nil
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "server use"
	}
	return "client use"
}

// Name returns this node's name, the CommonName of its certificate.
func (t *TLS) Name() string { return t.name }

// ServerConfig returns the configuration of the accepting side: it
// requires a client certificate signed by the cluster CA and offers the
// gRPC and Raft protocols.
func (t *TLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    t.pool,
		NextProtos:   []string{alpnGRPC, alpnRaft},
	}
}

// ClientConfig returns the configuration of the dialing side: it presents
// this node's certificate and accepts a server certificate signed by the
// cluster CA and valid for serverName (a node name, or an IP address).
func (t *TLS) ClientConfig(serverName string, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.cert},
		RootCAs:      t.pool,
		ServerName:   serverName,
		NextProtos:   nextProtos,
	}
}

// Mux accepts mutual-TLS connections on one TCP port and hands them to the
// gRPC server or the Raft transport by the protocol negotiated with ALPN.
// Connections it has handed out belong to their consumer; Close does not
// close them.
type Mux struct {
	ln     net.Listener
	nw     Network
	tls    *TLS
	config *tls.Config
	grpc   *subListener
	raft   *subListener

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loop and handshakes

	// raftAuth decides which node names may speak Raft with this node
	// (nil: any node of the CA).
	raftAuth atomic.Pointer[func(name string) error]
}

// AuthorizeRaft makes the Mux accept Raft connections, and the Raft
// stream dial peers, only when f admits the node name of the peer's
// certificate; others are closed (and logged to log).
func (m *Mux) AuthorizeRaft(f func(name string) error) { m.raftAuth.Store(&f) }

func (m *Mux) raftAllowed(c *tls.Conn) error {
	certs := c.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return errors.New("no certificate")
	}
	name, err := NodeName(certs[0])
	if err != nil {
		return err
	}
	if f := m.raftAuth.Load(); f != nil {
		return (*f)(name)
	}
	return nil
}

// Listen opens addr and starts accepting. Each handshake runs in its own
// goroutine with a timeout, so a slow or hostile client never holds up
// others. Connections negotiating "h2" go to GRPCListener, those
// negotiating "crfailoverd-raft" to the RaftStream; others are closed.
//
// WithNetwork chooses the network it listens on, which its RaftStream
// also dials through; without it, the host's.
func Listen(addr string, t *TLS, opts ...Option) (*Mux, error) {
	nw := buildOptions(opts).network
	if nw == nil {
		nw = hostNetwork{}
	}
	ln, err := nw.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer: listen on %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mux{
		ln: ln, nw: nw, tls: t, config: t.ServerConfig(),
		grpc: newSubListener(ln.Addr()), raft: newSubListener(ln.Addr()),
		ctx: ctx, cancel: cancel,
	}
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

// Addr returns the address the Mux listens on.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// GRPCListener returns the listener to pass to grpc.Server.Serve. Its
// connections have completed the TLS handshake; the server must use the
// credentials NewServer sets. Closing it closes only the gRPC side.
func (m *Mux) GRPCListener() net.Listener { return m.grpc }

// RaftStream returns the hashicorp/raft stream layer on this port.
// advertise is the address Raft announces (nil: the listening address).
// Closing it (as NetworkTransport.Close does) closes only the Raft side,
// for good.
//
// Dial verifies the peer's certificate against the host part of the Raft
// address, so when Raft addresses are IPs the certificates need them as IP
// SANs. It dials through the Mux's network (WithNetwork).
func (m *Mux) RaftStream(advertise net.Addr) raft.StreamLayer {
	return &raftStream{subListener: m.raft, mux: m, nw: m.nw, tls: m.tls, advertise: advertise}
}

// Close stops accepting, closes both sides' listeners and waits for
// handshakes in progress to be abandoned.
func (m *Mux) Close() error {
	m.cancel()
	err := m.ln.Close()
	m.grpc.Close()
	m.raft.Close()
	m.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("peer: close listener: %w", err)
	}
	return nil
}

// serve accepts TCP connections until the Mux is closed.
func (m *Mux) serve() {
	defer m.wg.Done()
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient, such as running out of file descriptors.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-m.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		m.wg.Add(1)
		go m.handshake(c)
	}
}

// handshake secures raw and hands it to the side its ALPN protocol names.
func (m *Mux) handshake(raw net.Conn) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, handshakeTimeout)
	defer cancel()
	c := tls.Server(raw, m.config)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return
	}
	var side *subListener
	switch c.ConnectionState().NegotiatedProtocol {
	case alpnGRPC:
		side = m.grpc
	case alpnRaft:
		if err := m.raftAllowed(c); err != nil {
			c.Close()
			return
		}
		side = m.raft
	default:
		c.Close()
		return
	}
	select {
	case side.conns <- c:
	case <-side.done:
		c.Close()
	case <-m.ctx.Done():
		c.Close()
	}
}

// subListener is one side of the Mux: a net.Listener fed by handshakes.
type subListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newSubListener(addr net.Addr) *subListener {
	return &subListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept waits for the next connection of this side.
func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("peer: mux: %w", net.ErrClosed)
	}
}

// Close stops this side; connections negotiated for it are closed from now on.
func (l *subListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr returns the Mux's address.
func (l *subListener) Addr() net.Addr { return l.addr }

// raftStream implements raft.StreamLayer on the Mux.
type raftStream struct {
	*subListener
	mux       *Mux
	nw        Network
	tls       *TLS
	advertise net.Addr
}

// Addr returns the advertised address, if any.
func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.subListener.Addr()
}

// Dial opens a mutual-TLS connection to the Raft side of the peer at
// address, verifying the peer's certificate for the address's host.
func (s *raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("peer: raft dial %s: %w", address, err)
	}
	if timeout <= 0 {
		timeout = handshakeTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := s.nw.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("peer: raft dial %s: %w", address, err)
	}
	c := tls.Client(raw, s.tls.ClientConfig(host, alpnRaft))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("peer: raft dial %s: %w", address, err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != alpnRaft {
		c.Close()
		return nil, fmt.Errorf("peer: raft dial %s: peer negotiated protocol %q, want %q", address, p, alpnRaft)
	}
	if err := s.mux.raftAllowed(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("peer: raft dial %s: refused the peer: %w", address, err)
	}
	return c, nil
}

// muxCreds are the gRPC server credentials for connections the Mux has
// already secured: they expose the TLS state (so the peer's certificate is
// available to handlers) and refuse anything that is not a TLS connection.
type muxCreds struct{}

func (muxCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, fmt.Errorf("peer: connection from %s did not come through the TLS mux", c.RemoteAddr())
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (muxCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer: mux credentials are for servers only")
}

func (muxCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c muxCreds) Clone() credentials.TransportCredentials { return c }

func (muxCreds) OverrideServerName(string) error { return nil }
