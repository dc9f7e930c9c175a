package ociserve

import (
	"archive/tar"
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// bigArchive returns the fixture's members plus checkpoint/pages-2.img of
// n bytes that look like process memory: alternating runs of zero pages
// and pseudo-random (incompressible) pages, half of each.
func bigArchive(b testing.TB, n int64) []byte {
	b.Helper()
	gz, _ := fixtureBytes(b)
	files, dirs := archiveFiles(b, gz)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			b.Fatal(err)
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[name]))}); err != nil {
			b.Fatal(err)
		}
		tw.Write(files[name])
	}
	if err := tw.WriteHeader(&tar.Header{Name: "checkpoint/pages-2.img", Typeflag: tar.TypeReg, Mode: 0o600, Size: n}); err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	page, zero := make([]byte, 4096), make([]byte, 4096)
	for off := int64(0); off < n; off += 4096 {
		p := page[:min(4096, n-off)]
		if (off/(16*4096))%2 == 0 {
			rng.Read(p)
		} else {
			p = zero[:len(p)]
		}
		tw.Write(p)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// discard is a ResponseWriter that counts and drops the body.
type discard struct {
	h    http.Header
	code int
	n    int64
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.code = code }
func (d *discard) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }

// BenchmarkImage measures what sealing costs the image endpoint: building
// a checkpoint's image (reading the archive through the store, writing the
// layer to the cache) and serving its layer, with the store and the cache
// in plaintext and sealed with a data key, for the counter's checkpoint
// and for one of about 100 MB. Bytes per second are of the archive
// (build) and of the layer (serve).
func BenchmarkImage(b *testing.B) {
	gz, _ := fixtureBytes(b)
	for _, size := range []struct {
		name string
		data []byte
	}{{"counter", gz}, {"100MB", bigArchive(b, 100<<20)}} {
		for _, sealed := range []bool{false, true} {
			mode := "plain"
			var key *seal.Key
			if sealed {
				mode, key = "sealed", newKey(b)
			}
			dir := b.TempDir()
			st, err := store.OpenWith(filepath.Join(dir, "checkpoints"), store.Options{Retention: 2, Key: key})
			if err != nil {
				b.Fatal(err)
			}
			e, err := st.Import(context.Background(), wl, bytes.NewReader(size.data), store.Entry{Method: "test", Source: "n1"})
			if err != nil {
				b.Fatal(err)
			}
			newSrv := func() *Server {
				s := NewServer(st, nil)
				s.Credentials, s.CacheKey = testCreds, key
				return s
			}
			b.Run(size.name+"/"+mode+"/build", func(b *testing.B) {
				b.SetBytes(int64(len(size.data)))
				for b.Loop() {
					b.StopTimer()
					if err := os.RemoveAll(filepath.Join(dir, "images")); err != nil {
						b.Fatal(err)
					}
					s := newSrv()
					b.StartTimer()
					if _, err := s.Prepare(context.Background(), wl, e.Seq); err != nil {
						b.Fatal(err)
					}
				}
			})
			s := newSrv()
			im, err := s.Prepare(context.Background(), wl, e.Seq)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(size.name+"/"+mode+"/serve", func(b *testing.B) {
				b.SetBytes(im.LayerSize)
				h := s.Handler()
				for b.Loop() {
					r := httptest.NewRequest("GET", "/v2/"+Repository(wl)+"/blobs/"+im.LayerDigest, nil)
					r.SetBasicAuth(testCreds.Username, testCreds.Password)
					w := &discard{h: http.Header{}, code: 200}
					h.ServeHTTP(w, r)
					if w.code != 200 || w.n != im.LayerSize {
						b.Fatalf("served %d: %d bytes, want %d", w.code, w.n, im.LayerSize)
					}
				}
			})
		}
	}
}
