package seal

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

// The benchmarks compare sealing and opening with a plain io.Copy of the
// same bytes through the same buffer size, in the same run: the ratio
// between them is the cost of encryption at rest.

const benchSize = 64 << 20

func benchData(b *testing.B) []byte {
	b.Helper()
	p := make([]byte, benchSize)
	rand.Read(p)
	return p
}

func BenchmarkCopy(b *testing.B) {
	p := benchData(b)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := io.CopyBuffer(io.Discard, bytes.NewReader(p), buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncrypt(b *testing.B) {
	k := newKey(b)
	p := benchData(b)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		w, err := k.Encrypt(io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(w, bytes.NewReader(p), buf); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	k := newKey(b)
	sealed := seal(b, k, benchData(b))
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	for b.Loop() {
		r, err := k.Decrypt(bytes.NewReader(sealed))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptAt(b *testing.B) {
	k := newKey(b)
	sealed := seal(b, k, benchData(b))
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	for b.Loop() {
		sr, err := k.DecryptAt(bytes.NewReader(sealed), int64(len(sealed)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, sr, buf); err != nil {
			b.Fatal(err)
		}
	}
}
