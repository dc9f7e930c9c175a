package ociserve

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
)

// SecretBytes is the size of the node's endpoint secret (random bytes; the
// file and the password hold them as hex).
const SecretBytes = 32

// NodeCredentials returns the endpoint's credentials, user Username and the
// node's secret kept in the file at path (normally <data_dir>/images/secret).
// The first call makes the secret (SecretBytes random bytes) and the file,
// mode 0600, in a directory created 0700 if missing; later calls, across
// restarts, read it, so that credentials cached by the node's image pulls
// stay valid. It refuses a file that is a symbolic link or not a regular
// file, that group or others may access, or that holds anything but the
// secret, naming the file.
func NodeCredentials(path string) (Credentials, error) {
	for range 2 {
		pass, err := readSecret(path)
		if err == nil {
			return Credentials{Username: Username, Password: pass}, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return Credentials{}, err
		}
		if err := createSecret(path); err != nil && !errors.Is(err, fs.ErrExist) {
			return Credentials{}, err
		}
		// Made here, or by a concurrent caller: read it back.
	}
	return Credentials{}, fmt.Errorf("image endpoint secret %s: created but not readable", path)
}

func readSecret(path string) (string, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return "", err
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return "", fmt.Errorf("image endpoint secret %s is a symbolic link: refused (remove it; the daemon makes the file)", path)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("image endpoint secret %s (mode %s) is not a regular file: refused", path, st.Mode())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("image endpoint secret %s has mode %04o: its group or others may read it; fix: chmod 600 %s", path, perm, path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("image endpoint secret: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4*SecretBytes))
	if err != nil {
		return "", fmt.Errorf("image endpoint secret %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	if raw, err := hex.DecodeString(s); err != nil || len(raw) != SecretBytes {
		return "", fmt.Errorf("image endpoint secret %s does not hold %d bytes as hex (%d characters read): refused; remove it to make a new secret (the daemon rewrites the pull secret files at start)",
			path, SecretBytes, len(b))
	}
	return s, nil
}

// createSecret makes the secret file; it never replaces one (fs.ErrExist
// if there is one).
func createSecret(path string) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("image endpoint secret: create %s: %w", dir, err)
	}
	raw := make([]byte, SecretBytes)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	tmp, err := os.CreateTemp(dir, atomicfile.TempPrefix+"secret-*")
	if err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer func() {
		if err != nil {
			tmp.Close()
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	if _, err := tmp.WriteString(hex.EncodeToString(raw) + "\n"); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	// A hard link, unlike a rename, never replaces an existing file.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	return atomicfile.SyncDir(dir)
}
