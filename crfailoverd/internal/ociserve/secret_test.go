package ociserve

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNodeCredentials: the first call makes a 0600 secret of SecretBytes
// random bytes in a new 0700 directory; later calls (a restarted daemon)
// return the same credentials; another node's secret differs.
func TestNodeCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "images")
	p := filepath.Join(dir, "secret")
	c1, err := NodeCredentials(p)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Username != Username {
		t.Errorf("user %q, want %q", c1.Username, Username)
	}
	if raw, err := hex.DecodeString(c1.Password); err != nil || len(raw) != SecretBytes {
		t.Errorf("password %d characters (%v), want %d bytes as hex", len(c1.Password), err, SecretBytes)
	}
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %s, want a regular file 0600", st.Mode())
	}
	if dst, err := os.Stat(dir); err != nil || dst.Mode().Perm() != 0o700 {
		t.Errorf("secret directory: %v, mode %v, want 0700", err, dst.Mode())
	}
	b, _ := os.ReadFile(p)
	if strings.TrimSpace(string(b)) != c1.Password {
		t.Errorf("file holds %q, password %q", b, c1.Password)
	}
	c2, err := NodeCredentials(p)
	if err != nil || c2 != c1 {
		t.Errorf("second call: %v, same credentials %v", err, c2 == c1)
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v, want the secret only", names)
	}
	other, err := NodeCredentials(filepath.Join(t.TempDir(), "secret"))
	if err != nil || other.Password == c1.Password {
		t.Errorf("another node's secret: %v, equal %v", err, other.Password == c1.Password)
	}
}

// TestNodeCredentialsRefusals: a secret file others may read, a link, a
// directory or a file holding something else is refused, naming the file,
// and the error never shows the secret.
func TestNodeCredentialsRefusals(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	c, err := NodeCredentials(good)
	if err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(dir, "readable")
	secret, _ := os.ReadFile(good)
	if err := os.WriteFile(readable, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{readable, "has mode 0644: its group or others may read it; fix: chmod 600 " + readable},
		{link, link + " is a symbolic link: refused"},
		{short, short + " does not hold 32 bytes as hex"},
		{sub, sub + " (mode d"},
	} {
		_, err := NodeCredentials(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NodeCredentials(%s) = %v, want an error containing %q", tc.path, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), c.Password) {
			t.Errorf("error shows the secret: %v", err)
		}
	}
	if b, _ := os.ReadFile(short); string(b) != "abcd\n" {
		t.Errorf("a refused secret file was rewritten: %q", b)
	}
}
