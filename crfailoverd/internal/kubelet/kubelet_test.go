package kubelet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clientPEM returns a self-signed client certificate and its key, as PEM.
func clientPEM(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "system:crfailoverd"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func writeMode(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// TestNewRefusesAKeyOthersCanRead: the file the client key is read from
// (client_key, or client_cert when it holds the key) must be private;
// certificates and the CA may be readable by everyone.
func TestNewRefusesAKeyOthersCanRead(t *testing.T) {
	certPEM, keyPEM := clientPEM(t)
	for _, tc := range []struct {
		name              string
		certMode, keyMode os.FileMode
		combined          bool // key in the certificate's file, Key empty
		want              string
	}{
		{"separate key 0600, certificate 0644", 0o644, 0o600, false, ""},
		{"separate key 0400", 0o644, 0o400, false, ""},
		{"separate key 0640", 0o644, 0o640, false, "key.pem has mode 0640"},
		{"separate key 0644", 0o600, 0o644, false, "key.pem has mode 0644"},
		{"combined file 0600", 0o600, 0, true, ""},
		{"combined file 0644", 0o644, 0, true, "client.pem has mode 0644"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{URL: "https://127.0.0.1:10250", Cert: filepath.Join(dir, "client.pem"), CA: filepath.Join(dir, "ca.crt")}
			writeMode(t, o.CA, certPEM, 0o644)
			if tc.combined {
				writeMode(t, o.Cert, append(append([]byte{}, certPEM...), keyPEM...), tc.certMode)
			} else {
				o.Key = filepath.Join(dir, "key.pem")
				writeMode(t, o.Cert, certPEM, tc.certMode)
				writeMode(t, o.Key, keyPEM, tc.keyMode)
			}
			_, err := New(o)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "chmod 600 ") ||
				!strings.HasPrefix(err.Error(), "kubelet client key: ") {
				t.Fatalf("New: %v, want a kubelet client key error with %q and the chmod fix", err, tc.want)
			}
		})
	}
}

func TestNewWithoutClientCertificate(t *testing.T) {
	if _, err := New(Options{URL: "https://127.0.0.1:10250"}); err != nil {
		t.Fatalf("New without certificate and CA: %v", err)
	}
}
