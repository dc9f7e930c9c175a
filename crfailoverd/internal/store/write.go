package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// stage brings the complete archive at src (written by the runtime, in
// plaintext) into dir as a temporary file, hashed and fsynced: with a data
// key it is sealed into a new temporary file and the plaintext removed;
// without one it is moved (or copied across file systems). An archive over
// max_archive_bytes is refused.
func (s *Store) stage(dir, src string, w Workload) (path, sum string, size int64, err error) {
	fi, err := os.Stat(src)
	if err != nil {
		return "", "", 0, fmt.Errorf("stat archive: %w", err)
	}
	if m := s.limits.MaxArchiveBytes; m > 0 && fi.Size() > m {
		return "", "", 0, &QuotaError{Workload: w, Limit: "max_archive_bytes", Size: fi.Size(), Max: m}
	}
	inDir := filepath.Dir(src) == dir && strings.HasPrefix(filepath.Base(src), tmpPrefix)
	if s.key == nil && inDir {
		sum, size, err = hashFile(src, true)
		return src, sum, size, err
	}
	plain := src
	if !inDir {
		// Move it in first, so that a crash leaves it where Open cleans up.
		moved := tempName(dir)
		switch err := os.Rename(src, moved); {
		case err == nil:
			plain = moved
		case errors.Is(err, syscall.EXDEV):
			// Another file system: read it from where it is.
		default:
			return "", "", 0, fmt.Errorf("move archive into store: %w", err)
		}
	}
	if s.key == nil && plain != src {
		sum, size, err = hashFile(plain, true)
		return plain, sum, size, err
	}
	if plain != src {
		// The moved plaintext never outlives a failed seal (Commit only
		// knows the runtime's path, which is gone).
		defer func() {
			if err != nil {
				os.Remove(plain)
			}
		}()
	}
	f, err := os.Open(plain)
	if err != nil {
		return "", "", 0, fmt.Errorf("read archive: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if m := s.limits.MaxArchiveBytes; m > 0 {
		r = &maxReader{r: f, w: w, max: m}
	}
	path, sum, size, err = s.writeTemp(dir, r)
	if err != nil {
		return "", "", 0, err
	}
	// The plaintext is sealed (or copied in): remove it.
	if err := os.Remove(plain); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.Remove(path)
		return "", "", 0, fmt.Errorf("remove the plaintext archive %s after sealing it: %w", plain, err)
	}
	return path, sum, size, nil
}

// writeTemp streams r into a new temporary file in dir, sealed with the
// store's key if it has one, hashing the plaintext as it goes, and fsyncs
// it. size is the plaintext's. On error the file is removed.
func (s *Store) writeTemp(dir string, r io.Reader) (path, sum string, size int64, err error) {
	f, err := createTemp(dir)
	if err != nil {
		return "", "", 0, err
	}
	path = f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	var dst io.Writer = f
	var enc io.WriteCloser
	if s.key != nil {
		if enc, err = s.key.Encrypt(f); err != nil {
			return "", "", 0, err
		}
		dst = enc
	}
	h := sha256.New()
	size, err = io.CopyBuffer(io.MultiWriter(dst, h), r, make([]byte, 1<<20))
	if err == nil && enc != nil {
		err = enc.Close()
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return "", "", 0, fmt.Errorf("write archive %s: %w", path, pe.Err)
	} else if err != nil {
		return "", "", 0, fmt.Errorf("stream archive into %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", "", 0, fmt.Errorf("fsync archive %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", "", 0, fmt.Errorf("close archive %s: %w", path, err)
	}
	return path, hex.EncodeToString(h.Sum(nil)), size, nil
}

// maxReader fails once more than max bytes were read (a file that grew
// after it was measured).
type maxReader struct {
	r   io.Reader
	w   Workload
	max int64
	n   int64
}

func (m *maxReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.n > m.max {
		return n, &QuotaError{Workload: m.w, Limit: "max_archive_bytes", Size: m.n, Max: m.max}
	}
	return n, err
}
