// Package pki makes the TLS material a crfailoverd cluster needs for its
// mutual TLS (gRPC replication and Raft) and the gossip encryption key,
// with nothing but the standard library:
//
//   - WriteCA: a cluster certificate authority, ca.crt and ca.key (ECDSA
//     P-256, valid 10 years).
//   - WriteNodeCert: a node's node.crt and node.key signed by that CA. The
//     common name is the node name (crfailoverd takes a peer's node name
//     from it), the node name is also a DNS SAN (peers verify it), the
//     node's addresses are IP SANs (Raft dials peers by IP address), and
//     the certificate is valid for both server and client use, because
//     every node is both.
//   - NewGossipKey: a memberlist encryption key, base64 of 32 random bytes.
//
// Keys and certificates are written with mode 0600 into directories created
// with mode 0700, each file through a temporary file renamed into place, so
// that a crash never leaves half a key. Existing material is never
// overwritten unless Force is given.
package pki

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside the directories.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// Default validity periods.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 5 * 365 * 24 * time.Hour
)

// ErrExists is returned (wrapped) when the files to write exist already and
// Force was not given.
var ErrExists = errors.New("already exists")

// Option changes how WriteCA and WriteNodeCert work.
type Option func(*options)

type options struct {
	force    bool
	validity time.Duration
	cn       string
	now      func() time.Time
}

// Force overwrites existing files instead of refusing to.
func Force() Option { return func(o *options) { o.force = true } }

// Validity sets how long the certificate is valid (default CAValidity for a
// CA, NodeValidity for a node certificate).
func Validity(d time.Duration) Option { return func(o *options) { o.validity = d } }

// CommonName sets the CA's common name (default "crfailoverd cluster CA").
// WriteNodeCert ignores it: a node certificate's common name is the node
// name.
func CommonName(cn string) Option { return func(o *options) { o.cn = cn } }

func apply(opts []Option, validity time.Duration) options {
	o := options{validity: validity, cn: "crfailoverd cluster CA", now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WriteCA creates a certificate authority in dir: ca.crt (the certificate,
// to be distributed to every node as cluster.tls_ca) and ca.key (its
// private key, to be kept off the nodes). It refuses, with an error
// wrapping ErrExists, when either file exists, unless Force is given:
// replacing a CA invalidates every node certificate it signed.
func WriteCA(dir string, opts ...Option) error {
	o := apply(opts, CAValidity)
	if o.validity <= 0 {
		return fmt.Errorf("pki: CA validity %s: must be positive", o.validity)
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(o.force, certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := o.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.cn, Organization: []string{"crfailoverd"}},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate clocks a little behind
		NotAfter:              now.Add(o.validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs node certificates only, no intermediate CAs
		// x509.CreateCertificate derives the subject key identifier of a CA.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("pki: create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create directory %s: %w", dir, err)
	}
	// Key first: a certificate without its key is useless, a key without a
	// certificate is simply regenerated with Force.
	if err := writeFile(keyPath, keyPEM); err != nil {
		return err
	}
	return writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// WriteNodeCert creates node.crt and node.key in dir, signed by the CA in
// caDir (ca.crt and ca.key, as written by WriteCA). The certificate's
// common name is node; its DNS SANs are node followed by dns; its IP SANs
// are ips; it is valid for server and client authentication. A copy of
// ca.crt is not written: callers that want it next to the node's files
// copy it themselves. It refuses, with an error wrapping ErrExists, when
// node.crt or node.key exists, unless Force is given.
func WriteNodeCert(dir, caDir, node string, ips []net.IP, dns []string, opts ...Option) error {
	o := apply(opts, NodeValidity)
	if err := checkNodeName(node); err != nil {
		return err
	}
	if o.validity <= 0 {
		return fmt.Errorf("pki: certificate validity %s: must be positive", o.validity)
	}
	for _, ip := range ips {
		if ip == nil || (ip.To4() == nil && len(ip) != net.IPv6len) {
			return fmt.Errorf("pki: invalid IP address %v", ip)
		}
	}
	names := []string{node}
	for _, d := range dns {
		if err := checkDNSName(d); err != nil {
			return err
		}
		if !contains(names, d) {
			names = append(names, d)
		}
	}
	certPath, keyPath := filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile)
	if err := refuseExisting(o.force, certPath, keyPath); err != nil {
		return err
	}
	caCert, caKey, err := LoadCA(caDir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: generate key for %s: %w", node, err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := o.now()
	notAfter := now.Add(o.validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter // a certificate cannot outlive its CA
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"crfailoverd"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     names,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("pki: sign certificate for %s: %w", node, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create directory %s: %w", dir, err)
	}
	if err := writeFile(keyPath, keyPEM); err != nil {
		return err
	}
	return writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// NewGossipKey returns a new gossip encryption key: 32 random bytes
// (AES-256), base64-encoded, as cluster.gossip_key_file expects.
func NewGossipKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("pki: random gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// WriteGossipKey writes a new gossip key (and a newline) to path with mode
// 0600, creating its directory with mode 0700. It refuses, with an error
// wrapping ErrExists, when path exists, unless Force is given: every node
// of a cluster must have the same key.
func WriteGossipKey(path string, opts ...Option) error {
	o := apply(opts, 0)
	if err := refuseExisting(o.force, path); err != nil {
		return err
	}
	k, err := NewGossipKey()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("pki: create directory %s: %w", filepath.Dir(path), err)
	}
	return writeFile(path, []byte(k+"\n"))
}

// LoadCA reads ca.crt and ca.key from dir and checks that they belong
// together and that the certificate is a CA.
func LoadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	cert, err := readCert(certPath)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, nil, fmt.Errorf("pki: %s holds no PEM block", keyPath)
	}
	var key *ecdsa.PrivateKey
	switch blk.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("pki: parse %s: %w", keyPath, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("pki: %s is a %T key; want ECDSA", keyPath, k)
		}
		key = ek
	case "EC PRIVATE KEY":
		if key, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
			return nil, nil, fmt.Errorf("pki: parse %s: %w", keyPath, err)
		}
	default:
		return nil, nil, fmt.Errorf("pki: %s holds a %q block; want a private key", keyPath, blk.Type)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, fmt.Errorf("pki: %s does not belong to %s", keyPath, certPath)
	}
	return cert, key, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse %s: %w", path, err)
	}
	return c, nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: random serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("pki: %s %w (use force to replace it)", p, ErrExists)
		} else if !os.IsNotExist(err) {
			return fmt.Errorf("pki: %w", err)
		}
	}
	return nil
}

// writeFile writes b to path with mode 0600, atomically.
func writeFile(path string, b []byte) error {
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// checkNodeName accepts what crfailoverd accepts as node.name and what a
// certificate can carry as a DNS name: letters, digits, '-', '_' and '.',
// not starting or ending with '.' or '-'.
func checkNodeName(n string) error {
	if n == "" {
		return errors.New("pki: node name is empty")
	}
	if err := checkDNSName(n); err != nil {
		return fmt.Errorf("pki: node name %q: %w", n, errors.Unwrap(err))
	}
	return nil
}

var errBadName = errors.New("want letters, digits, '-', '_' and '.', at most 253 characters, not starting or ending with '.' or '-'")

func checkDNSName(n string) error {
	if n == "" || len(n) > 253 || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") ||
		strings.HasPrefix(n, "-") || strings.HasSuffix(n, "-") || strings.Contains(n, "..") {
		return fmt.Errorf("pki: DNS name %q: %w", n, errBadName)
	}
	for _, r := range n {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("pki: DNS name %q: %w", n, errBadName)
		}
	}
	return nil
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
