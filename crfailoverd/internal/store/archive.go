package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// plainDir is the directory, under the store's root, that holds the
// decrypted copies PlaintextFile hands to the runtime. It is on the data
// directory's file system rather than a tmpfs: an archive may be as large as
// store.max_archive_bytes, and a failover, when the node may be short of
// memory, must not fail (or push out the page cache the restore needs) for
// lack of RAM. Its name cannot be a workload's (it has no '_'); Open empties
// it.
const plainDir = ".plain"

// Archive is an open archive of the store, read as its plaintext whether it
// is sealed or not: Read, ReadAt, Seek and Size are those of the
// *io.SectionReader over the plaintext. Close it when done.
type Archive struct {
	*io.SectionReader
	f    *os.File
	name string // "W seq N", for errors
}

// Read reads plaintext; an error (such as a chunk that fails
// authentication) names the entry.
func (a *Archive) Read(p []byte) (int, error) {
	n, err := a.SectionReader.Read(p)
	return n, a.wrap(err)
}

// ReadAt reads plaintext at off; errors name the entry.
func (a *Archive) ReadAt(p []byte, off int64) (int, error) {
	n, err := a.SectionReader.ReadAt(p, off)
	return n, a.wrap(err)
}

func (a *Archive) wrap(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err // io.EOF unwrapped, as readers must return it
	}
	return fmt.Errorf("read archive of %s (%s): %w", a.name, a.f.Name(), err)
}

// Close closes the archive's file.
func (a *Archive) Close() error { return a.f.Close() }

// OpenArchive opens entry e's archive for reading its plaintext, decrypting
// as it reads (seekable) if it is sealed. Every reader of an archive in the
// store goes through it: nothing outside this package opens e.Path.
//
// A sealed archive is refused when the store has no data key, or when it
// was sealed with another key; its header and its last chunk are
// authenticated here, every other chunk when it is read, so a tampered
// archive fails a Read with an error naming the entry.
func (s *Store) OpenArchive(e Entry) (*Archive, error) {
	f, size, sealed, err := s.openFile(e)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s seq %d", e.Workload, e.Seq)
	if !sealed {
		return &Archive{SectionReader: io.NewSectionReader(f, 0, size), f: f, name: name}, nil
	}
	sr, err := s.key.DecryptAt(f, size)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("store: open archive of %s (%s): %w", name, f.Name(), err)
	}
	return &Archive{SectionReader: sr, f: f, name: name}, nil
}

// openFile opens e's archive file and reports its size and whether it is
// to be decrypted: the sidecar says so, the file must agree, and the store
// must have a key.
func (s *Store) openFile(e Entry) (_ *os.File, size int64, sealed bool, err error) {
	p := s.archivePath(e)
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, false, fmt.Errorf("store: open archive of %s seq %d: %w", e.Workload, e.Seq, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			err = fmt.Errorf("store: open archive of %s seq %d (%s): %w", e.Workload, e.Seq, p, err)
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, false, err
	}
	if !e.Sealed {
		// Written in plaintext (before encryption, or with
		// store.plaintext): read as is, whatever its first bytes are.
		return f, fi.Size(), false, nil
	}
	prefix := make([]byte, seal.HeaderLen)
	n, err := f.ReadAt(prefix, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, false, err
	}
	switch {
	case !seal.Encrypted(prefix[:n]):
		return nil, 0, false, errors.New("its record says sealed, but the file does not start with an age header")
	case s.key == nil:
		return nil, 0, false, fmt.Errorf("%w: the archive is sealed, but store.plaintext is set or store.data_key_file is empty", ErrNoKey)
	}
	return f, fi.Size(), true, nil
}

// PlaintextFile decrypts e's archive into a new 0600 file in a 0700
// directory under the store's root, for the runtime to restore from, and
// returns its path and a function that deletes it: call remove right after
// the runtime is done with the file. For an archive kept in plaintext it
// returns the archive's own path and a remove that does nothing (the file
// must not be modified). Cancelling ctx stops the copy (and removes the
// file).
func (s *Store) PlaintextFile(ctx context.Context, e Entry) (path string, remove func(), err error) {
	if !e.Sealed {
		return s.archivePath(e), func() {}, nil
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: decrypt %s seq %d for the runtime: %w", e.Workload, e.Seq, err)
		}
	}()
	src, _, _, err := s.openFile(e)
	if err != nil {
		return "", nil, err
	}
	defer src.Close()
	// Streaming decryption (each chunk authenticated before it is
	// written), faster than the seekable reader for one pass.
	plain, err := s.key.Decrypt(src)
	if err != nil {
		return "", nil, fmt.Errorf("open archive %s: %w", src.Name(), err)
	}
	dir, err := s.ensurePlainDir()
	if err != nil {
		return "", nil, err
	}
	f, err := createTemp(dir)
	if err != nil {
		return "", nil, fmt.Errorf("create plaintext file in %s: %w", dir, err)
	}
	path = f.Name() + ".tar"
	remove = func() { os.Remove(path) }
	if err := os.Rename(f.Name(), path); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", nil, fmt.Errorf("name plaintext file: %w", err)
	}
	// writerOnly: not f's ReadFrom, which would copy through its own
	// small buffer.
	_, err = io.CopyBuffer(writerOnly{f}, ctxReader{ctx, plain}, make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		remove()
		return "", nil, fmt.Errorf("write plaintext file %s from %s: %w", path, src.Name(), err)
	}
	return path, remove, nil
}

type writerOnly struct{ io.Writer }

// ensurePlainDir creates the plaintext directory (0700) if needed and
// makes sure it is 0700 and a real directory.
func (s *Store) ensurePlainDir() (string, error) {
	dir := filepath.Join(s.root, plainDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create plaintext directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("plaintext directory: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("plaintext directory %s is not a directory (%s)", dir, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("plaintext directory %s: mode %04o: %w", dir, fi.Mode().Perm(), err)
		}
	}
	return dir, nil
}

// cleanPlainDir removes the plaintext files a previous run left behind
// (a crash between PlaintextFile and its remove).
func (s *Store) cleanPlainDir() error {
	dir := filepath.Join(s.root, plainDir)
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("clean plaintext directory: %w", err)
	}
	for _, de := range des { // everything in it is a leftover: the directory is the store's
		// RemoveAll: a pod-level restore unpacks into a directory here.
		if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
			return fmt.Errorf("clean plaintext directory: %w", err)
		}
	}
	return nil
}

// archivePath is e's archive file.
func (s *Store) archivePath(e Entry) string {
	if e.Path != "" {
		return e.Path
	}
	return filepath.Join(s.dir(e.Workload), seqName(e.Seq, ".tar"))
}
