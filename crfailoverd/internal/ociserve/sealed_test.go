package ociserve

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func newKey(t testing.TB) *seal.Key {
	t.Helper()
	id, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	k, err := seal.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newSealedBed is newBed with a store and a cache sealed with one data key.
func newSealedBed(t *testing.T, retention int, key *seal.Key) *bed {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenWith(filepath.Join(dir, "checkpoints"), store.Options{Retention: retention, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{dataDir: dir, st: st, logs: &logBuffer{}}
	b.srv = NewServer(st, slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	b.srv.Credentials = testCreds
	b.srv.CacheKey = key
	b.http = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.http.Close)
	b.host = strings.TrimPrefix(b.http.URL, "http://")
	return b
}

// TestSealedCache: with a CacheKey, the cached layer is encrypted at rest
// (the file is an age stream, not the gzip layer), nothing else of the
// checkpoint is left in the cache (a compressed archive's spool included),
// the client pulls the very image a plaintext server serves, ranges of the
// layer are served decrypted, and a cache sealed with another key is
// rebuilt rather than served.
func TestSealedCache(t *testing.T) {
	key := newKey(t)
	b := newSealedBed(t, 3, key)
	plainBed := newBed(t, 3)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz) // compressed: built through a spool
	plainBed.add(t, wl, gz)

	img, err := remote.Image(b.ref(t, ImageName(wl, 1)), testAuth)
	if err == nil {
		err = verifyImage(t, img)
	}
	if err != nil {
		t.Fatalf("pull from the sealed cache: %v", err)
	}
	im, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	plainIm, err := plainBed.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if im.LayerDigest != plainIm.LayerDigest || im.DiffID != plainIm.DiffID || im.LayerSize != plainIm.LayerSize {
		t.Errorf("sealed server's layer %s (%d bytes), plaintext server's %s (%d bytes)", im.LayerDigest, im.LayerSize, plainIm.LayerDigest, plainIm.LayerSize)
	}

	cacheDir := filepath.Join(b.dataDir, "images", wlDirName(wl))
	if got := dirNames(t, cacheDir); !slices.Equal(got, []string{seqName(1, metaExt), seqName(1, layerExt)}) {
		t.Errorf("cache holds %v", got)
	}
	onDisk, err := os.ReadFile(im.LayerPath)
	if err != nil {
		t.Fatal(err)
	}
	plainLayer, err := os.ReadFile(plainIm.LayerPath)
	if err != nil {
		t.Fatal(err)
	}
	if !seal.Encrypted(onDisk) || bytes.HasPrefix(onDisk, []byte{0x1f, 0x8b}) || bytes.Contains(onDisk, plainLayer[len(plainLayer)/2:len(plainLayer)/2+64]) {
		t.Errorf("cached layer is not sealed: starts %q", onDisk[:min(len(onDisk), 32)])
	}
	var m cacheMeta
	if b, err := os.ReadFile(filepath.Join(cacheDir, seqName(1, metaExt))); err != nil || json.Unmarshal(b, &m) != nil || !m.Sealed {
		t.Errorf("sidecar: %v, sealed %v", err, m.Sealed)
	}

	blob := b.http.URL + "/v2/crfailoverd/default/counter/counter/blobs/" + im.LayerDigest
	resp, body := get(t, "GET", blob)
	if resp.StatusCode != 200 || !bytes.Equal(body, plainLayer) {
		t.Fatalf("layer blob: %s, %d bytes, equal to the plaintext layer %v", resp.Status, len(body), bytes.Equal(body, plainLayer))
	}
	lo := int64(len(plainLayer) / 8)
	hi := min(lo+70000, int64(len(plainLayer)-1)) // across a 64 KiB chunk of the age stream
	resp, part := get(t, "GET", blob, "Range", "bytes="+itoa(lo)+"-"+itoa(hi))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, plainLayer[lo:hi+1]) {
		t.Errorf("range %d-%d: %s, %d bytes, equal %v", lo, hi, resp.Status, len(part), bytes.Equal(part, plainLayer[lo:hi+1]))
	}

	// Another key (the data key was replaced): the cached layer cannot be
	// read, so the image is built again, sealed with the new key.
	logs := &logBuffer{}
	s2 := NewServer(b.st, slog.New(slog.NewTextHandler(logs, nil)))
	s2.CacheKey = newKey(t)
	im2, err := s2.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if logs.count("built checkpoint image") != 1 || im2.LayerDigest != im.LayerDigest {
		t.Errorf("another key: logs %q", logs.b.String())
	}
	if _, err := b.srv.openLayer(im); err == nil {
		t.Errorf("the layer sealed with the new key opens with the old one")
	}
}

// TestPlaintextCacheDroppedWhenSealed: layers cached in plaintext before
// the data key was set are removed by the first prune of a sealing server
// (ServeListener prunes when it starts), and rebuilt sealed.
func TestPlaintextCacheDroppedWhenSealed(t *testing.T) {
	b := newBed(t, 3)
	_, plain := fixtureBytes(t)
	b.add(t, wl, plain)
	im, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Dir(im.LayerPath)
	sealing := NewServer(b.st, nil)
	sealing.CacheKey = newKey(t)
	if err := sealing.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, cacheDir); len(got) != 0 {
		t.Errorf("plaintext cache left after a sealing server's prune: %v", got)
	}
	im2, err := sealing.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(im2.LayerPath); err != nil || !seal.Encrypted(b) || im2.LayerDigest != im.LayerDigest {
		t.Errorf("rebuilt layer: %v, sealed %v, digest %s want %s", err, seal.Encrypted(b), im2.LayerDigest, im.LayerDigest)
	}
	// And the other way round: a plaintext server does not serve a
	// sealed layer it cannot read; its prune drops it.
	if err := b.srv.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, cacheDir); len(got) != 0 {
		t.Errorf("sealed cache left after a plaintext server's prune: %v", got)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
