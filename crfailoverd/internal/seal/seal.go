// Package seal encrypts checkpoint archives at rest with the cluster's data
// key, an age X25519 identity (filippo.io/age).
//
// age was chosen over a home-made AEAD stream because it is audited, its
// payload is the STREAM construction (64 KiB chunks, each authenticated,
// the last one marked, so truncation, reordering and tampering are all
// detected), it can be read at any offset without decrypting what comes
// before (DecryptAt), and its key files are a format operators already know
// (age-keygen writes the same). Every node holds the same identity; archives
// are encrypted to its recipient, so any node can read any replica.
package seal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
)

// header is how every binary age file begins.
const header = "age-encryption.org/v1\n"

// maxKeyFile bounds what Load reads: a key file is a few lines.
const maxKeyFile = 64 << 10

// Key encrypts archives at rest: an age X25519 identity.
type Key struct {
	id *age.X25519Identity
}

// Generate returns a new identity line "AGE-SECRET-KEY-1...".
func Generate() (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", fmt.Errorf("seal: generate data key: %w", err)
	}
	return id.String(), nil
}

// KeyFile returns the contents of a key file for identity (a line from
// Generate): comment lines with the creation time and the public key, as
// age-keygen writes them, then the identity.
func KeyFile(identity string) ([]byte, error) {
	k, err := Parse(identity)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# crfailoverd data key: encrypts checkpoint archives at rest; the same on every node of the cluster\n")
	fmt.Fprintf(&b, "# created: %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "# public key: %s\n", k.id.Recipient())
	fmt.Fprintf(&b, "%s\n", k.id)
	return b.Bytes(), nil
}

// Load reads the key file at path: one identity line, optionally with
// blank and "#" comment lines. It refuses a file that group or others may
// read or write, naming the file and its mode.
func Load(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("seal: load data key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: load data key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("seal: load data key %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("seal: load data key %s: mode %04o lets group or others access it; must be 0600 or stricter", path, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("seal: load data key %s: owned by uid %d, not by this daemon's uid %d, who could replace or read it; fix: chown %d %s", path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("seal: load data key %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("seal: load data key %s: larger than %d bytes, not a key file", path, maxKeyFile)
	}
	k, err := parseFile(b)
	if err != nil {
		return nil, fmt.Errorf("seal: load data key %s: %w", path, err)
	}
	return k, nil
}

// Parse parses an identity line "AGE-SECRET-KEY-1...".
func Parse(s string) (*Key, error) {
	id, err := age.ParseX25519Identity(strings.TrimSpace(s))
	if err != nil {
		// age's error does not echo the key; keep it that way.
		return nil, fmt.Errorf("seal: parse data key: %w", err)
	}
	return &Key{id: id}, nil
}

func parseFile(b []byte) (*Key, error) {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	switch len(lines) {
	case 0:
		return nil, errors.New("no identity (a line AGE-SECRET-KEY-1...)")
	case 1:
		k, err := Parse(lines[0])
		if err != nil {
			return nil, errors.New("the identity line is not an age X25519 identity (AGE-SECRET-KEY-1...)")
		}
		return k, nil
	default:
		return nil, fmt.Errorf("%d identity lines, want exactly one", len(lines))
	}
}

// Recipient returns the key's public half ("age1..."), safe to log.
func (k *Key) Recipient() string { return k.id.Recipient().String() }

// Encrypt returns a writer that encrypts what is written to it into dst.
// Close finishes the stream (it writes the last, marked chunk) but does
// not close dst.
func (k *Key) Encrypt(dst io.Writer) (io.WriteCloser, error) {
	w, err := age.Encrypt(dst, k.id.Recipient())
	if err != nil {
		return nil, fmt.Errorf("seal: encrypt: %w", err)
	}
	return w, nil
}

// Decrypt returns a reader of src's plaintext. Every chunk is authenticated
// before it is returned; a tampered or truncated stream fails the Read that
// reaches it. A stream sealed with another key fails here.
func (k *Key) Decrypt(src io.Reader) (io.Reader, error) {
	r, err := age.Decrypt(src, k.id)
	if err != nil {
		return nil, decryptErr(err)
	}
	return r, nil
}

// DecryptAt returns a seekable reader of the plaintext of the sealed file
// src of size bytes. It authenticates the header and the last chunk (so the
// plaintext size) at once; other chunks as they are read.
func (k *Key) DecryptAt(src io.ReaderAt, size int64) (*io.SectionReader, error) {
	ra, n, err := age.DecryptReaderAt(src, size, k.id)
	if err != nil {
		return nil, decryptErr(err)
	}
	return io.NewSectionReader(ra, 0, n), nil
}

// ErrWrongKey is returned (wrapped) when a sealed stream was not encrypted
// to this key.
var ErrWrongKey = errors.New("sealed with another data key")

func decryptErr(err error) error {
	var nm *age.NoIdentityMatchError
	if errors.As(err, &nm) {
		return fmt.Errorf("seal: decrypt: %w", ErrWrongKey)
	}
	return fmt.Errorf("seal: decrypt: %w", err)
}

// Encrypted reports whether prefix (the first bytes of a file, at least
// len("age-encryption.org/v1\n") of them to be sure) starts with the age
// header. A tar archive never does: its first bytes are a member name.
func Encrypted(prefix []byte) bool {
	return bytes.HasPrefix(prefix, []byte(header))
}

// HeaderLen is how many leading bytes Encrypted needs.
const HeaderLen = len(header)
