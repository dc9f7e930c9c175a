package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// PKI holds the paths of the bed's certificate authority and of the client
// certificate that crfailoverd (and tests) present to the kubelet emulator.
type PKI struct {
	Dir        string
	CACert     string
	CAKey      string
	ClientCert string
	ClientKey  string
}

func pkiAt(dir string) PKI {
	return PKI{
		Dir:        dir,
		CACert:     filepath.Join(dir, "ca.crt"),
		CAKey:      filepath.Join(dir, "ca.key"),
		ClientCert: filepath.Join(dir, "client.crt"),
		ClientKey:  filepath.Join(dir, "client.key"),
	}
}

// PeerCert and PeerKey are a node's crfailoverd cluster certificate
// (client and server; node name in the common name and DNS names, node
// address in the IP addresses).
func (p PKI) PeerCert(node string) string { return filepath.Join(p.Dir, "peer-"+node+".crt") }
func (p PKI) PeerKey(node string) string  { return filepath.Join(p.Dir, "peer-"+node+".key") }

// DataKey is the cluster's data key file, which encrypts archives at rest.
func (p PKI) DataKey() string { return filepath.Join(p.Dir, "data.key") }

// GossipKey is the cluster's gossip encryption key file.
func (p PKI) GossipKey() string { return filepath.Join(p.Dir, "gossip.key") }

// ServerCert and ServerKey are the kubelet serving certificate of a node.
func (p PKI) ServerCert(node string) string { return filepath.Join(p.Dir, "kubelet-"+node+".crt") }
func (p PKI) ServerKey(node string) string  { return filepath.Join(p.Dir, "kubelet-"+node+".key") }

// CA is a certificate authority in memory.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a self-signed certificate authority named cn.
func NewCA(cn string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issue signs a certificate for cn, for client use, server use (with the
// given IP addresses and DNS names), or both. It returns certificate and
// key as PEM.
func (ca *CA) Issue(cn string, client, server bool, ips []net.IP, dns []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %s: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  ips,
		DNSNames:     dns,
	}
	if client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %s: %w", cn, err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

func randSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// writePKI creates the bed's CA, a client certificate, and a kubelet
// serving certificate for every node.
func writePKI(p PKI, nodes map[string]net.IP) error {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("create PKI directory: %w", err)
	}
	ca, err := NewCA("crfailoverd test bed CA")
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		p.CACert: ca.PEM,
		p.CAKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}
	c, k, err := ca.Issue("system:crfailoverd", true, false, nil, nil)
	if err != nil {
		return err
	}
	files[p.ClientCert], files[p.ClientKey] = c, k
	for node, addr := range nodes {
		c, k, err := ca.Issue("kubelet-"+node, false, true, []net.IP{addr}, []string{node})
		if err != nil {
			return err
		}
		files[p.ServerCert(node)], files[p.ServerKey(node)] = c, k
		c, k, err = ca.Issue(node, true, true, []net.IP{addr}, []string{node})
		if err != nil {
			return err
		}
		files[p.PeerCert(node)], files[p.PeerKey(node)] = c, k
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	files[p.GossipKey()] = []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	// One data key for the whole bed, as the ansible role gives every node
	// of a cluster the same one: a replica sealed on one node is read on
	// another.
	id, err := seal.Generate()
	if err != nil {
		return err
	}
	if files[p.DataKey()], err = seal.KeyFile(id); err != nil {
		return err
	}
	// Every file 0600, also one left by an earlier bed (os.WriteFile keeps
	// the mode of an existing file): crfailoverd refuses keys that group or
	// others may read.
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ClientTLS is the TLS configuration of a client of the kubelet emulators:
// it trusts the bed's CA and presents the bed's client certificate.
func (p PKI) ClientTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("load client certificate: %w", err)
	}
	pool, err := loadPool(p.CACert)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		// Always present the certificate: Go's default sends none when the
		// server names other CAs, which turns a CA mix-up into a puzzling 401
		// instead of a TLS error that says what is wrong.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		RootCAs:              pool,
		MinVersion:           tls.VersionTLS12,
	}, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA %s holds no PEM certificate", path)
	}
	return pool, nil
}
