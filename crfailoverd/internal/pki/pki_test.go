package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
)

func mustCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := WriteCA(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestWriteCA(t *testing.T) {
	dir := mustCA(t)
	cert, key, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("not a CA: IsCA=%v basic=%v usage=%b", cert.IsCA, cert.BasicConstraintsValid, cert.KeyUsage)
	}
	if key.Curve != elliptic.P256() {
		t.Errorf("curve %s, want P-256", key.Curve.Params().Name)
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got < CAValidity || got > CAValidity+time.Hour {
		t.Errorf("CA valid for %s, want 10 years", got)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if len(cert.SubjectKeyId) == 0 {
		t.Error("CA has no subject key identifier")
	}
	checkModes(t, dir, CACertFile, CAKeyFile)
}

func TestWriteCARefusesOverwrite(t *testing.T) {
	dir := mustCA(t)
	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	err := WriteCA(dir)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second WriteCA: %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.Equal(before, after) {
		t.Fatal("refused WriteCA changed the key")
	}
	// Only one of the two files present is refused too.
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := WriteCA(dir); !errors.Is(err, ErrExists) {
		t.Fatalf("WriteCA with ca.key present: %v, want ErrExists", err)
	}
	if err := WriteCA(dir, Force()); err != nil {
		t.Fatalf("WriteCA with Force: %v", err)
	}
	after, _ = os.ReadFile(filepath.Join(dir, CAKeyFile))
	if bytes.Equal(before, after) {
		t.Fatal("WriteCA with Force kept the old key")
	}
	if _, _, err := LoadCA(dir); err != nil {
		t.Fatal(err)
	}
}

func TestWriteNodeCert(t *testing.T) {
	caDir := mustCA(t)
	dir := filepath.Join(t.TempDir(), "n1", "tls")
	ips := []net.IP{net.ParseIP("10.78.0.11"), net.ParseIP("fd00::11")}
	if err := WriteNodeCert(dir, caDir, "worker-1", ips, []string{"worker-1.example.org", "worker-1"}); err != nil {
		t.Fatal(err)
	}
	checkModes(t, dir, NodeCertFile, NodeKeyFile)
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
	caCert, _, err := LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile))
	if err != nil {
		t.Fatalf("certificate and key do not load as a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "worker-1" {
		t.Errorf("CN %q, want the node name", leaf.Subject.CommonName)
	}
	if want := []string{"worker-1", "worker-1.example.org"}; !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS SANs %v, want %v (node name first, no duplicates)", leaf.DNSNames, want)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(ips[0]) || !leaf.IPAddresses[1].Equal(ips[1]) {
		t.Errorf("IP SANs %v, want %v", leaf.IPAddresses, ips)
	}
	if leaf.IsCA {
		t.Error("node certificate is a CA")
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("node key is %T, want ECDSA", leaf.PublicKey)
	}
	if leaf.NotAfter.After(caCert.NotAfter) {
		t.Error("node certificate outlives its CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		for _, name := range []string{"worker-1", "worker-1.example.org", "10.78.0.11", "fd00::11"} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
				t.Errorf("verify for %s, usage %v: %v", name, u, err)
			}
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "worker-2"}); err == nil {
		t.Error("certificate verifies for another node's name")
	}
	// A different CA does not verify it.
	other := mustCA(t)
	oc, _, _ := LoadCA(other)
	op := x509.NewCertPool()
	op.AddCert(oc)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: op}); err == nil {
		t.Error("certificate verifies against an unrelated CA")
	}
}

// TestMutualTLS runs a real TLS 1.3 handshake between two node certificates
// with client certificates required, as the cluster's gRPC and Raft do.
func TestMutualTLS(t *testing.T) {
	caDir := mustCA(t)
	base := t.TempDir()
	for i, n := range []string{"n1", "n2"} {
		if err := WriteNodeCert(filepath.Join(base, n), caDir, n, []net.IP{net.IPv4(127, 0, 0, byte(1+i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	caPEM, _ := os.ReadFile(filepath.Join(caDir, CACertFile))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	load := func(n string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(base, n, NodeCertFile), filepath.Join(base, n, NodeKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srvConf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{load("n1")},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	cliConf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{load("n2")}, RootCAs: pool}
	for _, serverName := range []string{"n1", "127.0.0.1"} {
		c1, c2 := net.Pipe()
		srv := tls.Server(c1, srvConf)
		cc := cliConf.Clone()
		cc.ServerName = serverName
		cli := tls.Client(c2, cc)
		errc := make(chan error, 1)
		go func() {
			err := srv.Handshake()
			if err == nil {
				if peers := srv.ConnectionState().PeerCertificates; len(peers) == 0 || peers[0].Subject.CommonName != "n2" {
					err = errors.New("server did not see client n2")
				}
			}
			errc <- err
			_, _ = io.Copy(io.Discard, srv)
		}()
		if err := cli.Handshake(); err != nil {
			t.Fatalf("client handshake (server name %s): %v", serverName, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		cli.Close()
		srv.Close()
	}
}

func TestWriteNodeCertRefusesOverwrite(t *testing.T) {
	caDir := mustCA(t)
	dir := t.TempDir()
	if err := WriteNodeCert(dir, caDir, "n1", nil, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, NodeCertFile))
	if err := WriteNodeCert(dir, caDir, "n1", nil, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("second WriteNodeCert: %v, want ErrExists", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, NodeCertFile)); !bytes.Equal(before, after) {
		t.Fatal("refused WriteNodeCert changed the certificate")
	}
	if err := WriteNodeCert(dir, caDir, "n1", []net.IP{net.ParseIP("10.0.0.1")}, nil, Force()); err != nil {
		t.Fatalf("WriteNodeCert with Force: %v", err)
	}
}

func TestWriteNodeCertErrors(t *testing.T) {
	caDir := mustCA(t)
	for name, f := range map[string]func(dir string) error{
		"empty node":     func(d string) error { return WriteNodeCert(d, caDir, "", nil, nil) },
		"space in node":  func(d string) error { return WriteNodeCert(d, caDir, "a b", nil, nil) },
		"bad DNS name":   func(d string) error { return WriteNodeCert(d, caDir, "n1", nil, []string{"-x"}) },
		"bad IP":         func(d string) error { return WriteNodeCert(d, caDir, "n1", []net.IP{{1, 2, 3}}, nil) },
		"no CA":          func(d string) error { return WriteNodeCert(d, filepath.Join(d, "none"), "n1", nil, nil) },
		"zero validity":  func(d string) error { return WriteNodeCert(d, caDir, "n1", nil, nil, Validity(0)) },
		"CA dir is node": func(d string) error { return WriteNodeCert(d, d, "n1", nil, nil) },
	} {
		dir := t.TempDir()
		if err := f(dir); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := os.Stat(filepath.Join(dir, NodeKeyFile)); err == nil {
			t.Errorf("%s: a key was written", name)
		}
	}
}

func TestLoadCAMismatch(t *testing.T) {
	a, b := mustCA(t), mustCA(t)
	kb, _ := os.ReadFile(filepath.Join(b, CAKeyFile))
	if err := os.WriteFile(filepath.Join(a, CAKeyFile), kb, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCA(a); err == nil {
		t.Fatal("LoadCA accepted a key of another CA")
	}
	if err := WriteNodeCert(t.TempDir(), a, "n1", nil, nil); err == nil {
		t.Fatal("WriteNodeCert signed with a mismatched CA key")
	}
}

func TestGossipKey(t *testing.T) {
	k1, err := NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := NewGossipKey()
	b, err := base64.StdEncoding.DecodeString(k1)
	if err != nil || len(b) != 32 {
		t.Fatalf("key %q: %d bytes (%v), want base64 of 32", k1, len(b), err)
	}
	if k1 == k2 {
		t.Fatal("two keys are equal")
	}
	p := filepath.Join(t.TempDir(), "etc", "gossip.key")
	if err := WriteGossipKey(p); err != nil {
		t.Fatal(err)
	}
	if err := WriteGossipKey(p); !errors.Is(err, ErrExists) {
		t.Fatalf("second WriteGossipKey: %v, want ErrExists", err)
	}
	checkModes(t, filepath.Dir(p), "gossip.key")
	raw, _ := os.ReadFile(p)
	if b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(raw))); err != nil || len(b) != 32 {
		t.Fatalf("written key %q does not decode to 32 bytes", raw)
	}
}

func checkModes(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", n, st.Mode().Perm())
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if bytes.HasPrefix([]byte(e.Name()), []byte(".")) {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

// TestAcceptedByPeer loads the material with the cluster's own loader,
// which checks both usages against the CA and the node name in the SANs.
func TestAcceptedByPeer(t *testing.T) {
	caDir := mustCA(t)
	dir := t.TempDir()
	if err := WriteNodeCert(dir, caDir, "worker-3", []net.IP{net.ParseIP("10.78.0.13")}, nil); err != nil {
		t.Fatal(err)
	}
	tl, err := peer.LoadTLS(filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile), filepath.Join(caDir, CACertFile))
	if err != nil {
		t.Fatalf("peer.LoadTLS refuses the material: %v", err)
	}
	if tl.Name() != "worker-3" {
		t.Errorf("peer name %q, want worker-3", tl.Name())
	}
	k, err := NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.DecodeKey(k); err != nil {
		t.Errorf("membership refuses the gossip key: %v", err)
	}
}

// TestLoadersRefuseLooseKeys: the cluster's loaders accept the material as
// written and readable certificates, and refuse a TLS key or gossip key
// that group or others may read, naming the file and the fix.
func TestLoadersRefuseLooseKeys(t *testing.T) {
	caDir := mustCA(t)
	dir := t.TempDir()
	if err := WriteNodeCert(dir, caDir, "worker-1", []net.IP{net.ParseIP("10.78.0.11")}, nil); err != nil {
		t.Fatal(err)
	}
	gossip := filepath.Join(dir, "gossip.key")
	if err := WriteGossipKey(gossip); err != nil {
		t.Fatal(err)
	}
	cert, key, ca := filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile), filepath.Join(caDir, CACertFile)
	chmod := func(p string, m os.FileMode) {
		t.Helper()
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	chmod(cert, 0o644)
	chmod(ca, 0o644)
	if _, err := peer.LoadTLS(cert, key, ca); err != nil {
		t.Fatalf("readable certificates, key 0600: %v", err)
	}
	if _, err := membership.ReadKey(gossip); err != nil {
		t.Fatalf("gossip key 0600: %v", err)
	}
	for _, m := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		chmod(key, m)
		_, err := peer.LoadTLS(cert, key, ca)
		if want := fmt.Sprintf("%s has mode %04o", key, m); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "chmod 600 "+key) {
			t.Errorf("peer.LoadTLS with the key %04o: %v, want an error with %q and the chmod fix", m, err, want)
		}
		chmod(gossip, m)
		_, err = membership.ReadKey(gossip)
		if want := fmt.Sprintf("%s has mode %04o", gossip, m); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "chmod 600 "+gossip) {
			t.Errorf("membership.ReadKey with the key %04o: %v, want an error with %q and the chmod fix", m, err, want)
		}
	}
}

// TestModesWhateverTheUmask: keys are 0600 and directories 0700 even with
// a permissive umask, and Force replaces a loose key with a 0600 one.
func TestModesWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	root := t.TempDir()
	caDir, dir := filepath.Join(root, "ca"), filepath.Join(root, "nodes", "n1")
	if err := WriteCA(caDir); err != nil {
		t.Fatal(err)
	}
	if err := WriteNodeCert(dir, caDir, "n1", []net.IP{net.ParseIP("10.0.0.1")}, nil); err != nil {
		t.Fatal(err)
	}
	gossip := filepath.Join(root, "g", "gossip.key")
	if err := WriteGossipKey(gossip); err != nil {
		t.Fatal(err)
	}
	checkModes(t, caDir, CACertFile, CAKeyFile)
	checkModes(t, dir, NodeCertFile, NodeKeyFile)
	checkModes(t, filepath.Dir(gossip), "gossip.key")
	for _, d := range []string{caDir, dir, filepath.Dir(gossip)} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("directory %s: mode %v (%v), want 0700", d, st.Mode().Perm(), err)
		}
	}
	for _, p := range []string{filepath.Join(dir, NodeKeyFile), gossip} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteNodeCert(dir, caDir, "n1", []net.IP{net.ParseIP("10.0.0.1")}, nil, Force()); err != nil {
		t.Fatal(err)
	}
	if err := WriteGossipKey(gossip, Force()); err != nil {
		t.Fatal(err)
	}
	checkModes(t, dir, NodeCertFile, NodeKeyFile)
	checkModes(t, filepath.Dir(gossip), "gossip.key")
}
