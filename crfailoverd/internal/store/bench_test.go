package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The benchmarks measure the delay encryption at rest adds to a restore:
// PlaintextFile (decrypt a sealed archive into a file for the runtime) of a
// counter-sized (2 MB) and a 100 MB archive, against copying the same
// plaintext file, in the same run; and what sealing adds to a Commit.

var benchSizes = []struct {
	name string
	n    int
}{{"2MB", 2_000_000}, {"100MB", 100_000_000}}

func BenchmarkRestoreCopyPlaintext(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			dir := b.TempDir()
			src := filepath.Join(dir, "archive.tar")
			if err := os.WriteFile(src, archiveBytes(sz.n), 0o600); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(sz.n))
			i := 0
			for b.Loop() {
				i++
				dst := filepath.Join(dir, fmt.Sprintf("copy-%d", i))
				if err := copyFile(src, dst); err != nil {
					b.Fatal(err)
				}
				os.Remove(dst)
			}
		})
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(out, in, make([]byte, 1<<20)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func BenchmarkRestorePlaintextFile(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			s, err := OpenWith(b.TempDir(), Options{Retention: 3, Key: newKey(b)})
			if err != nil {
				b.Fatal(err)
			}
			e := benchCommit(b, s, sz.n)
			b.SetBytes(int64(sz.n))
			for b.Loop() {
				_, remove, err := s.PlaintextFile(context.Background(), e)
				if err != nil {
					b.Fatal(err)
				}
				remove()
			}
		})
	}
}

func BenchmarkCommit(b *testing.B) {
	for _, mode := range testModes(b) {
		for _, sz := range benchSizes {
			b.Run(mode.name+"/"+sz.name, func(b *testing.B) {
				s, err := OpenWith(b.TempDir(), Options{Retention: 1, Key: mode.key})
				if err != nil {
					b.Fatal(err)
				}
				data := archiveBytes(sz.n)
				b.SetBytes(int64(sz.n))
				for b.Loop() {
					b.StopTimer() // the runtime writing its file is not the store's cost
					tmp, err := s.TempPath(testWL)
					if err == nil {
						err = os.WriteFile(tmp, data, 0o600)
					}
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if _, err := s.Commit(testWL, tmp, Entry{Source: "n1"}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func benchCommit(b *testing.B, s *Store, n int) Entry {
	b.Helper()
	tmp, err := s.TempPath(testWL)
	if err == nil {
		err = os.WriteFile(tmp, archiveBytes(n), 0o600)
	}
	if err != nil {
		b.Fatal(err)
	}
	e, err := s.Commit(testWL, tmp, Entry{Source: "n1"})
	if err != nil {
		b.Fatal(err)
	}
	return e
}
