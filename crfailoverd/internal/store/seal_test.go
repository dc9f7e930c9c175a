package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

const marker = "PLAINTEXT-MARKER-0123456789"

// archiveBytes is an archive-like payload of n bytes (random, so it does not
// compress) with the marker string at several places, spanning several of
// age's 64 KiB chunks.
func archiveBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	for off := 0; off+len(marker) <= n; off += 50 << 10 {
		copy(b[off:], marker)
	}
	return b
}

func TestSealedRoundTrip(t *testing.T) {
	key := newKey(t)
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 3, Key: key})
	data := archiveBytes(300 << 10)

	// From TempPath, as the CRI path does.
	tmp, err := s.TempPath(testWL)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e1, err := s.Commit(testWL, tmp, Entry{Method: "cri", Source: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the runtime's plaintext %s is still there after Commit: %v", tmp, err)
	}
	// From elsewhere (another file system, as kubelet's checkpoint
	// directory may be).
	src := filepath.Join(t.TempDir(), "checkpoint.tar")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e2, err := s.Commit(testWL, src, Entry{Method: "kubelet", Source: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the kubelet's plaintext %s is still there after Commit: %v", src, err)
	}
	e3, err := s.Import(context.Background(), testWL, bytes.NewReader(data), Entry{Seq: 10, SHA256: sum(data), Size: int64(len(data)), Method: "kubelet", Source: "n2"})
	if err != nil {
		t.Fatal(err)
	}

	for _, e := range []Entry{e1, e2, e3} {
		if !e.Sealed || e.SHA256 != sum(data) || e.Size != int64(len(data)) {
			t.Errorf("entry %d: sealed %v, sha256 %s, size %d; want sealed with the plaintext's sha256 %s and size %d", e.Seq, e.Sealed, e.SHA256, e.Size, sum(data), len(data))
		}
		raw, err := os.ReadFile(e.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !seal.Encrypted(raw) || bytes.Contains(raw, []byte(marker)) {
			t.Errorf("entry %d on disk: age header %v, contains the plaintext marker %v", e.Seq, seal.Encrypted(raw), bytes.Contains(raw, []byte(marker)))
		}
		var side Entry
		b, err := os.ReadFile(strings.TrimSuffix(e.Path, ".tar") + ".json")
		if err != nil || json.Unmarshal(b, &side) != nil || !side.Sealed {
			t.Errorf("sidecar of %d: %s, %v: want sealed recorded", e.Seq, b, err)
		}
		if got := readArchive(t, s, e); !bytes.Equal(got, data) {
			t.Errorf("entry %d: OpenArchive read %d bytes that differ from the %d committed", e.Seq, len(got), len(data))
		}
		if err := s.Verify(e); err != nil {
			t.Errorf("Verify(%d): %v", e.Seq, err)
		}
	}
	// Seekable: Size, ReadAt and Seek are the plaintext's.
	a, err := s.OpenArchive(e1)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Size() != int64(len(data)) {
		t.Errorf("Archive.Size = %d, want %d", a.Size(), len(data))
	}
	buf := make([]byte, 4096)
	if _, err := a.ReadAt(buf, 130<<10); err != nil || !bytes.Equal(buf, data[130<<10:130<<10+4096]) {
		t.Errorf("ReadAt(130 KiB): %v or wrong bytes", err)
	}
	if _, err := a.Seek(-100, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if tail, err := io.ReadAll(a); err != nil || !bytes.Equal(tail, data[len(data)-100:]) {
		t.Errorf("Seek(-100, end) then read: %v or wrong bytes", err)
	}
	checkConsistent(t, s, root)
}

func TestPlaintextEntriesStayReadable(t *testing.T) {
	root := t.TempDir()
	old := []byte("written before the data key " + marker)
	e1 := commitBytes(t, openStore(t, root, 3), testWL, old)
	s := openWith(t, root, Options{Retention: 3, Key: newKey(t)})
	e1, err := s.Get(testWL, e1.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if e1.Sealed {
		t.Errorf("an entry written without a key is recorded sealed")
	}
	if got := readArchive(t, s, e1); !bytes.Equal(got, old) {
		t.Errorf("OpenArchive of the plaintext entry: %q", got)
	}
	if err := s.Verify(e1); err != nil {
		t.Errorf("Verify of the plaintext entry: %v", err)
	}
	p, remove, err := s.PlaintextFile(context.Background(), e1)
	if err != nil || p != e1.Path {
		t.Errorf("PlaintextFile of a plaintext entry = %s, %v; want its own path %s", p, err, e1.Path)
	}
	remove()
	if _, err := os.Stat(e1.Path); err != nil {
		t.Errorf("remove of a plaintext entry's PlaintextFile deleted the archive: %v", err)
	}
	e2 := commitBytes(t, s, testWL, []byte("new"))
	if !e2.Sealed {
		t.Errorf("a commit with the key is not sealed")
	}
}

func TestSealedTampered(t *testing.T) {
	key := newKey(t)
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 3, Key: key})
	e := commitBytes(t, s, testWL, archiveBytes(400<<10))
	f, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := []byte{0}
	if _, err := f.ReadAt(one, 200<<10); err != nil {
		t.Fatal(err)
	}
	one[0] ^= 0x40
	if _, err := f.WriteAt(one, 200<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()

	name := testWL.String() + " seq 1"
	err = s.Verify(e)
	if err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("Verify of a tampered archive: %v; want an error naming %s", err, name)
	}
	a, err := s.OpenArchive(e)
	if err == nil {
		_, err = io.ReadAll(a)
		a.Close()
	}
	if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "authenticate") {
		t.Errorf("reading a tampered archive: %v; want an authentication failure naming %s", err, name)
	}
	p, _, err := s.PlaintextFile(context.Background(), e)
	if err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("PlaintextFile of a tampered archive = %s, %v; want an error naming %s", p, err, name)
	}
	assertEmptyDir(t, filepath.Join(root, plainDir))
}

func TestSealedWrongOrNoKey(t *testing.T) {
	root := t.TempDir()
	e := commitBytes(t, openWith(t, root, Options{Retention: 3, Key: newKey(t)}), testWL, []byte("secret"))
	name := testWL.String() + " seq 1"

	other := openWith(t, root, Options{Retention: 3, Key: newKey(t)})
	_, err := other.OpenArchive(e)
	if !errors.Is(err, seal.ErrWrongKey) || !strings.Contains(err.Error(), name) {
		t.Errorf("OpenArchive with another key: %v; want ErrWrongKey naming %s", err, name)
	}
	if err := other.Verify(e); !errors.Is(err, seal.ErrWrongKey) {
		t.Errorf("Verify with another key: %v; want ErrWrongKey", err)
	}
	if _, _, err := other.PlaintextFile(context.Background(), e); !errors.Is(err, seal.ErrWrongKey) || !strings.Contains(err.Error(), name) {
		t.Errorf("PlaintextFile with another key: %v; want ErrWrongKey naming %s", err, name)
	}

	none := openStore(t, root, 3)
	_, err = none.OpenArchive(e)
	if err == nil || !strings.Contains(err.Error(), "no data key") || !strings.Contains(err.Error(), name) {
		t.Errorf("OpenArchive without a key: %v; want an error naming %s and the missing key", err, name)
	}
	// The record says sealed but the file is not: refused, not read as a tar.
	if err := os.WriteFile(e.Path, []byte("not sealed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := other.OpenArchive(e); err == nil || !strings.Contains(err.Error(), "age header") {
		t.Errorf("OpenArchive of a sealed entry whose file is plaintext: %v", err)
	}
}

func TestPlaintextFile(t *testing.T) {
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 3, Key: newKey(t)})
	data := archiveBytes(200 << 10)
	e := commitBytes(t, s, testWL, data)

	p, remove, err := s.PlaintextFile(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, plainDir)
	if filepath.Dir(p) != dir {
		t.Errorf("plaintext file %s not in %s", p, dir)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("plaintext file mode %04o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("plaintext directory mode %04o, want 0700", di.Mode().Perm())
	}
	if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, data) {
		t.Errorf("plaintext file content differs from the archive (%v)", err)
	}
	p2, remove2, err := s.PlaintextFile(context.Background(), e)
	if err != nil || p2 == p {
		t.Errorf("second PlaintextFile = %s, %v; want a fresh path other than %s", p2, err, p)
	}
	remove()
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plaintext file %s still there after remove: %v", p, err)
	}
	remove2()
	assertEmptyDir(t, dir)

	// Cancelled: no file, an error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if p, _, err := s.PlaintextFile(ctx, e); !errors.Is(err, context.Canceled) {
		t.Errorf("PlaintextFile with a cancelled context = %s, %v", p, err)
	}
	assertEmptyDir(t, dir)
	// The directory is made 0700 again if someone loosened it.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, remove, err = s.PlaintextFile(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("plaintext file %s after the directory was loosened: %v, %v; want mode 0600", p, fi, err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("plaintext directory mode %04o after PlaintextFile, want 0700", di.Mode().Perm())
	}
}

func TestOpenRemovesPlaintextLeftovers(t *testing.T) {
	root := t.TempDir()
	key := newKey(t)
	s := openWith(t, root, Options{Retention: 3, Key: key})
	e := commitBytes(t, s, testWL, []byte("secret "+marker))
	p, _, err := s.PlaintextFile(context.Background(), e) // never removed: a crash
	if err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(root, plainDir, "other")
	if err := os.WriteFile(stray, []byte(marker), 0o600); err != nil {
		t.Fatal(err)
	}
	unpacked := filepath.Join(root, plainDir, ".restore-1", "checkpoint")
	if err := os.MkdirAll(unpacked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unpacked, "pages-1.img"), []byte(marker), 0o600); err != nil {
		t.Fatal(err)
	}
	openWith(t, root, Options{Retention: 3, Key: key})
	for _, f := range []string{p, stray, filepath.Dir(unpacked)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open left the plaintext file %s: %v", f, err)
		}
	}
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, de := range des {
		t.Errorf("left in %s: %s", dir, de.Name())
	}
}
