package peer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial atomic.Int64

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM certificate and key for node name, as the daemon needs
// them: CN and DNS SAN = name, IP SANs = loopback, server and client use.
func (ca *testCA) issue(t *testing.T, name string, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if dnsNames == nil {
		dnsNames = []string{name}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dnsNames,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeFiles writes cert, key and CA PEM files and returns their paths.
func writeFiles(t *testing.T, certPEM, keyPEM, caPEM []byte) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, caFile = filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), filepath.Join(dir, "ca.crt")
	for path, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, caFile: caPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}

// nodeTLS issues a certificate for name and loads it with LoadTLS.
func (ca *testCA) nodeTLS(t *testing.T, name string) *TLS {
	t.Helper()
	c, k := ca.issue(t, name)
	tl, err := LoadTLS(writeFiles(t, c, k, ca.pem))
	if err != nil {
		t.Fatalf("LoadTLS: %v", err)
	}
	return tl
}

// testPeer is a node serving the Peer service on a Mux on loopback.
type testPeer struct {
	name  string
	tls   *TLS
	mux   *Mux
	srv   *grpc.Server
	store *store.Store
	root  string // of the store ("" if the caller supplied it)
	addr  string
}

// startPeer starts a node with its own store; h.Store is filled in if nil.
func startPeer(t *testing.T, ca *testCA, name string, h Handlers, opts ...grpc.ServerOption) *testPeer {
	t.Helper()
	return startPeerOn(t, nil, ca, name, h, opts...)
}

// startPeerOn is startPeer with the Mux on network nw (nil: the host's).
func startPeerOn(t *testing.T, nw Network, ca *testCA, name string, h Handlers, opts ...grpc.ServerOption) *testPeer {
	t.Helper()
	st, root := h.Store, ""
	if st == nil {
		st, root = openStore(t)
		h.Store = st
	}
	tl := ca.nodeTLS(t, name)
	m, err := Listen("127.0.0.1:0", tl, WithNetwork(nw))
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(h, opts...)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(m.GRPCListener())
	}()
	t.Cleanup(func() {
		srv.Stop()
		m.Close()
		<-served
	})
	return &testPeer{name: name, tls: tl, mux: m, srv: srv, store: st, root: root, addr: m.Addr().String()}
}

// client returns a client from a node with a certificate for from to p.
func (p *testPeer) client(t *testing.T, from *TLS) *Client {
	t.Helper()
	c, err := Dial(p.name, p.addr, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openStore opens a store (retention 10) in a new temporary directory.
func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	root := t.TempDir()
	st, err := store.Open(root, 10)
	if err != nil {
		t.Fatal(err)
	}
	return st, root
}

// tarOf returns a valid archive of about size bytes (at least 2 KiB): a
// checkpoint/ directory and one file of random data.
func tarOf(t testing.TB, size int) []byte {
	t.Helper()
	data := make([]byte, max(size-4*512, 1))
	rand.Read(data)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "checkpoint/", Typeflag: tar.TypeDir, Mode: 0o700},
		{Name: "checkpoint/pages-1.img", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(data))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// addEntry imports a valid archive of about size bytes (tarOf) into st as
// a new entry of workload w.
func addEntry(t *testing.T, st *store.Store, w string, size int) store.Entry {
	t.Helper()
	data := tarOf(t, size)
	e, err := st.Import(context.Background(), mustWorkload(t, w), bytes.NewReader(data), store.Entry{Method: "cri", Source: "origin", Duration: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustWorkload(t *testing.T, s string) store.Workload {
	t.Helper()
	w, err := store.ParseWorkload(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// assertNothingVisible checks that st has no entry of w and no leftover
// temporary files.
func assertNothingVisible(t *testing.T, st *store.Store, w store.Workload, root string) {
	t.Helper()
	es, err := st.List(w)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 0 {
		t.Errorf("receiver has %d entries of %s, want none", len(es), w)
	}
	if root == "" {
		return
	}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("leftover temporary file %s", path)
		}
		return nil
	})
}

// streamDone is a server option that reports what every stream handler
// returned on ch (it runs inside the service's own interceptor).
func streamDone(ch chan<- error) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		ch <- err
		return err
	})
}

// recvTimeout receives from ch or fails the test after a generous timeout.
func recvTimeout[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}
