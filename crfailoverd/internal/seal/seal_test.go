package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t testing.TB) *Key {
	t.Helper()
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	k, err := Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func seal(t testing.TB, k *Key, plain []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := k.Encrypt(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	k := newKey(t)
	plain := make([]byte, 200<<10+17) // several 64 KiB chunks and a partial one
	rand.Read(plain)
	copy(plain[100<<10:], "MARKER-PLAINTEXT")
	sealed := seal(t, k, plain)
	if !Encrypted(sealed) {
		t.Errorf("Encrypted(sealed) = false")
	}
	if bytes.Contains(sealed, []byte("MARKER-PLAINTEXT")) {
		t.Errorf("the sealed bytes contain the plaintext marker")
	}
	r, err := k.Decrypt(bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Decrypt: %d bytes, %v; want the %d plaintext bytes", len(got), err, len(plain))
	}
	sr, err := k.DecryptAt(bytes.NewReader(sealed), int64(len(sealed)))
	if err != nil {
		t.Fatal(err)
	}
	if sr.Size() != int64(len(plain)) {
		t.Errorf("DecryptAt size %d, want %d", sr.Size(), len(plain))
	}
	part := make([]byte, 1000)
	if _, err := sr.ReadAt(part, 100<<10-500); err != nil || !bytes.Equal(part, plain[100<<10-500:100<<10+500]) {
		t.Errorf("ReadAt across a chunk boundary: %v, bytes differ: %v", err, !bytes.Equal(part, plain[100<<10-500:100<<10+500]))
	}
}

func TestTamperedFails(t *testing.T) {
	k := newKey(t)
	plain := bytes.Repeat([]byte("x"), 300<<10)
	sealed := seal(t, k, plain)
	bad := bytes.Clone(sealed)
	bad[len(bad)/2] ^= 1
	r, err := k.Decrypt(bytes.NewReader(bad))
	if err == nil {
		_, err = io.ReadAll(r)
	}
	if err == nil {
		t.Errorf("Decrypt of a tampered stream: no error")
	}
	sr, err := k.DecryptAt(bytes.NewReader(bad), int64(len(bad)))
	if err == nil {
		_, err = io.ReadAll(sr)
	}
	if err == nil {
		t.Errorf("DecryptAt of a tampered stream: no error")
	}
	// Truncated at a chunk boundary: the last chunk's mark is missing.
	trunc := sealed[:len(sealed)-(len(sealed)%(64<<10))]
	r, err = k.Decrypt(bytes.NewReader(trunc))
	if err == nil {
		_, err = io.ReadAll(r)
	}
	if err == nil {
		t.Errorf("Decrypt of a truncated stream: no error")
	}
}

func TestWrongKey(t *testing.T) {
	sealed := seal(t, newKey(t), []byte("secret"))
	other := newKey(t)
	if _, err := other.Decrypt(bytes.NewReader(sealed)); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Decrypt with another key: %v, want ErrWrongKey", err)
	}
	if _, err := other.DecryptAt(bytes.NewReader(sealed), int64(len(sealed))); !errors.Is(err, ErrWrongKey) {
		t.Errorf("DecryptAt with another key: %v, want ErrWrongKey", err)
	}
}

func TestEncrypted(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"age-encryption.org/v1\n-> X25519 abc\n", true},
		{"age-encryption.org/v1", false}, // too short to be sure
		{"checkpoint/\x00\x00", false},
		{"", false},
		{"-----BEGIN AGE ENCRYPTED FILE-----", false}, // armored: never written by seal
	} {
		if got := Encrypted([]byte(tt.in)); got != tt.want {
			t.Errorf("Encrypted(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	file, err := KeyFile(id)
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "data.key")
	if err := os.WriteFile(good, file, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := Load(good)
	if err != nil {
		t.Fatalf("Load of a key file from KeyFile: %v", err)
	}
	// It is the same key: what one seals the other opens.
	k2, _ := Parse(id)
	if _, err := k.Decrypt(bytes.NewReader(seal(t, k2, []byte("x")))); err != nil {
		t.Errorf("the loaded key does not open what the parsed one sealed: %v", err)
	}

	for _, tt := range []struct {
		name, content string
		mode          os.FileMode
		want          string // in the error
	}{
		{"readable by group", string(file), 0o640, "mode 0640"},
		{"readable by others", string(file), 0o604, "mode 0604"},
		{"empty", "# nothing\n\n", 0o600, "no identity"},
		{"two keys", id + "\n" + id + "\n", 0o600, "2 identity lines"},
		{"not a key", "AGE-SECRET-KEY-1NOTAKEY\n", 0o600, "not an age X25519 identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("Load: %v; want an error naming %s and %q", err, p, tt.want)
			}
			if strings.Contains(err.Error(), id) || strings.Contains(err.Error(), "NOTAKEY") {
				t.Errorf("the error shows key material: %v", err)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestLoadRefusesAnotherOwner: a 0600 key file owned by another user (who
// could read or replace it) is refused, naming the owner and the fix.
func TestLoadRefusesAnotherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	file, err := KeyFile(id)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "data.key")
	if err := os.WriteFile(p, file, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatalf("own key: %v", err)
	}
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") || !strings.Contains(err.Error(), "chown") {
		t.Errorf("Load of a key owned by nobody: %v; want a refusal naming the owner and the fix", err)
	}
}
