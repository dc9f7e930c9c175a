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

// sink copies what is written to it into memory, as writing a file into
// the page cache would, so that a plain copy does some work too (io.Discard
// would let io.Copy skip the bytes).
type sink struct{ buf []byte }

func (s *sink) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		rest = rest[copy(s.buf, rest):]
	}
	return len(p), nil
}

func newSink() *sink { return &sink{buf: make([]byte, 1<<20)} }

// onlyReader hides a reader's WriterTo, so io.CopyBuffer goes through the
// buffer as it does for a file.
type onlyReader struct{ io.Reader }

func benchData(b *testing.B) []byte {
	b.Helper()
	p := make([]byte, benchSize)
	rand.Read(p)
	return p
}

func BenchmarkCopy(b *testing.B) {
	p := benchData(b)
	buf := make([]byte, 1<<20)
	dst := newSink()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := io.CopyBuffer(dst, onlyReader{bytes.NewReader(p)}, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncrypt(b *testing.B) {
	k := newKey(b)
	p := benchData(b)
	buf := make([]byte, 1<<20)
	dst := newSink()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		w, err := k.Encrypt(dst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(w, onlyReader{bytes.NewReader(p)}, buf); err != nil {
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
	dst := newSink()
	b.SetBytes(benchSize)
	for b.Loop() {
		r, err := k.Decrypt(bytes.NewReader(sealed))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(dst, onlyReader{r}, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptAt(b *testing.B) {
	k := newKey(b)
	sealed := seal(b, k, benchData(b))
	buf := make([]byte, 1<<20)
	dst := newSink()
	b.SetBytes(benchSize)
	for b.Loop() {
		sr, err := k.DecryptAt(bytes.NewReader(sealed), int64(len(sealed)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(dst, onlyReader{sr}, buf); err != nil {
			b.Fatal(err)
		}
	}
}
