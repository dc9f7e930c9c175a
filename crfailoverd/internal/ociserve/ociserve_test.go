package ociserve

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

const fixture = "../archive/testdata/counter-checkpoint.tar.gz"

var wl = store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}

// fixtureBytes returns the real checkpoint archive (gzip-compressed) and
// its plain tar form.
func fixtureBytes(t testing.TB) (gz, plain []byte) {
	t.Helper()
	gz, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	plain, err = io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return gz, plain
}

// archiveFiles returns the regular files of a (plain or gzip) tar stream
// by cleaned name, and its directories.
func archiveFiles(t testing.TB, b []byte) (files map[string][]byte, dirs []string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	files = map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		switch hdr.Typeflag {
		case tar.TypeDir:
			dirs = append(dirs, name)
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[name] = data
		default:
			t.Fatalf("unexpected member %s of type %q", hdr.Name, hdr.Typeflag)
		}
	}
	slices.Sort(dirs)
	return files, dirs
}

// reordered rewrites a plain tar stream with its members in reverse order,
// different times, owners and a leading "./".
func reordered(t testing.TB, plain []byte) []byte {
	t.Helper()
	type m struct {
		hdr  *tar.Header
		data []byte
	}
	var ms []m
	tr := tar.NewReader(bytes.NewReader(plain))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		ms = append(ms, m{hdr, data})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, x := range slices.Backward(ms) {
		h := *x.hdr
		h.Name = "./" + h.Name
		h.ModTime = time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
		h.Uid, h.Gid, h.Uname, h.Gname = 1000, 1000, "someone", "users"
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(x.data)
	}
	tw.Close()
	return buf.Bytes()
}

// testCreds are the credentials of the test servers; get and testAuth
// send them.
var testCreds = Credentials{Username: Username, Password: "0123456789abcdef-test-secret"}

var testAuth = remote.WithAuth(&authn.Basic{Username: testCreds.Username, Password: testCreds.Password})

type bed struct {
	dataDir string
	st      *store.Store
	srv     *Server
	http    *httptest.Server
	host    string // host:port
	logs    *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func newBed(t *testing.T, retention int) *bed {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "checkpoints"), retention)
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{dataDir: dir, st: st, logs: &logBuffer{}}
	b.srv = NewServer(st, slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	b.srv.Credentials = testCreds
	b.http = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.http.Close)
	b.host = strings.TrimPrefix(b.http.URL, "http://")
	return b
}

func (b *bed) add(t *testing.T, w store.Workload, data []byte) store.Entry {
	t.Helper()
	e, err := b.st.Import(context.Background(), w, bytes.NewReader(data), store.Entry{Method: "test", Source: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (b *bed) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(b.host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestNames(t *testing.T) {
	if got := ImageName(wl, 7); got != "crfailoverd/default/counter/counter:7" {
		t.Errorf("ImageName = %q", got)
	}
	if got := ImageName(wl, 0); got != "crfailoverd/default/counter/counter:latest" {
		t.Errorf("ImageName(latest) = %q", got)
	}
	if got := Ref("localhost:5001", wl, 12); got != "localhost:5001/crfailoverd/default/counter/counter:12" {
		t.Errorf("Ref = %q", got)
	}
	if _, err := name.ParseReference(Ref("localhost:5001", store.Workload{Namespace: "kube-system", Pod: "a.b-c", Container: "x1"}, 3), name.StrictValidation); err != nil {
		t.Errorf("reference does not parse: %v", err)
	}
}

// TestPull pulls checkpoint images with go-containerregistry's client,
// which verifies every digest and size, and checks their layout.
func TestPull(t *testing.T) {
	b := newBed(t, 3)
	gz, plain := fixtureBytes(t)
	e1 := b.add(t, wl, gz)
	e2 := b.add(t, wl, plain)
	wantFiles, wantDirs := archiveFiles(t, gz)

	for _, tag := range []string{"1", "2", "latest"} {
		img, err := remote.Image(b.ref(t, "crfailoverd/default/counter/counter:"+tag), testAuth)
		if err != nil {
			t.Fatalf("pull :%s: %v", tag, err)
		}
		if err := verifyImage(t, img); err != nil {
			t.Fatalf("pull :%s: invalid image: %v", tag, err)
		}
		mt, _ := img.MediaType()
		if mt != types.OCIManifestSchema1 {
			t.Errorf(":%s: manifest media type %s", tag, mt)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
			t.Errorf(":%s: config %s, layers %v", tag, m.Config.MediaType, m.Layers)
		}
		ctr := "counter_counter_default_57d8ebed-e1a0-63a2-2b21-e98fccfce407_0" // config.dump "name"
		seq := map[string]string{"1": "1", "2": "2", "latest": "2"}[tag]
		for k, v := range map[string]string{
			AnnCheckpointName: ctr, AnnCRIOCheckpointName: ctr,
			AnnWorkload: "default/counter/counter", AnnSeq: seq,
		} {
			if m.Annotations[k] != v {
				t.Errorf(":%s: annotation %s = %q, want %q", tag, k, m.Annotations[k], v)
			}
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture == "" || len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.Type != "layers" {
			t.Errorf(":%s: config %+v", tag, cf)
		}
		layers, _ := img.Layers()
		rc, err := layers[0].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		lb, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		files, dirs := archiveFiles(t, lb)
		if !slices.Equal(dirs, wantDirs) {
			t.Errorf(":%s: layer directories %v, archive has %v", tag, dirs, wantDirs)
		}
		if len(files) != len(wantFiles) {
			t.Errorf(":%s: layer has %d files, archive %d", tag, len(files), len(wantFiles))
		}
		for n, data := range wantFiles {
			if !bytes.Equal(files[n], data) {
				t.Errorf(":%s: layer file %s differs from the archive's (%d vs %d bytes)", tag, n, len(files[n]), len(data))
			}
		}
		checkLayerNormalized(t, lb)
	}

	// The same files make the same layer, whether the archive was
	// compressed or not; only the annotations naming the entry differ.
	im1, err := b.srv.Prepare(context.Background(), wl, e1.Seq)
	if err != nil {
		t.Fatal(err)
	}
	im2, err := b.srv.Prepare(context.Background(), wl, e2.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if im1.LayerDigest != im2.LayerDigest || im1.DiffID != im2.DiffID {
		t.Errorf("layers of the gzip and the plain archive differ: %s vs %s", im1.LayerDigest, im2.LayerDigest)
	}
	if im1.ManifestDigest == im2.ManifestDigest {
		t.Errorf("two entries have the same manifest")
	}
	t.Logf("archive %d bytes (plain %d) -> layer %d bytes, image %d bytes", len(gz), len(plain), im1.LayerSize, im1.Size())

	// By digest, and HEAD.
	d, err := name.NewDigest(b.host+"/crfailoverd/default/counter/counter@"+im1.ManifestDigest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(d, testAuth)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyImage(t, img); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(b.ref(t, "crfailoverd/default/counter/counter:latest"), testAuth)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != im2.ManifestDigest || desc.Size != int64(len(im2.Manifest)) || desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("HEAD :latest = %+v, want %s (%d bytes)", desc, im2.ManifestDigest, len(im2.Manifest))
	}

	tags, err := remote.List(b.ref(t, "crfailoverd/default/counter/counter").Context(), testAuth)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tags, []string{"1", "2", "latest"}) {
		t.Errorf("tags %v", tags)
	}
	reg, _ := name.NewRegistry(b.host, name.Insecure)
	repos, err := remote.Catalog(context.Background(), reg, testAuth)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(repos, []string{"crfailoverd/default/counter/counter"}) {
		t.Errorf("catalog %v", repos)
	}
}

// checkLayerNormalized checks that the layer's members are sorted and carry
// no times, owners or user names of the archive.
func checkLayerNormalized(t *testing.T, layer []byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header has name %q, time %s", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	prev := ""
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n := strings.TrimSuffix(hdr.Name, "/")
		if n <= prev {
			t.Errorf("layer member %s after %s: not sorted", n, prev)
		}
		prev = n
		if !hdr.ModTime.Equal(layerMtime) || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || strings.HasPrefix(hdr.Name, "./") {
			t.Errorf("layer member %s: time %s, owner %d:%d %q:%q", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
	}
}

// TestDeterministic builds layers of the same files from archives in
// different orders, with different times and owners, and from scratch
// again after the cache is lost: every build gives the same bytes.
func TestDeterministic(t *testing.T) {
	b := newBed(t, 5)
	gz, plain := fixtureBytes(t)
	other := store.Workload{Namespace: "default", Pod: "counter", Container: "other"}
	b.add(t, wl, gz)
	b.add(t, other, reordered(t, plain))
	im1, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	im2, err := b.srv.Prepare(context.Background(), other, 1)
	if err != nil {
		t.Fatal(err)
	}
	if im1.LayerDigest != im2.LayerDigest {
		t.Errorf("reordered archive gave layer %s, want %s", im2.LayerDigest, im1.LayerDigest)
	}
	if err := os.RemoveAll(filepath.Join(b.dataDir, "images")); err != nil {
		t.Fatal(err)
	}
	fresh := NewServer(b.st, nil)
	im3, err := fresh.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if im3.LayerDigest != im1.LayerDigest || im3.ManifestDigest != im1.ManifestDigest || im3.ConfigDigest != im1.ConfigDigest {
		t.Errorf("rebuilt image differs: %+v vs %+v", im3, im1)
	}
}

// TestWriteLayer builds layers straight from archive files: a plain archive
// read in place and its gzip form, read through a spool file, give the same
// layer, and members that archive.Walker refuses fail the build with an
// error naming them.
func TestWriteLayer(t *testing.T) {
	gz, plain := fixtureBytes(t)
	dir := t.TempDir()
	sealSpool := false
	layer := func(data []byte) (layerResult, error) {
		return writeLayer(context.Background(), bytes.NewReader(data), dir, io.Discard, sealSpool)
	}
	fromPlain, err := layer(plain)
	if err != nil {
		t.Fatal(err)
	}
	fromGzip, err := layer(gz)
	if err != nil {
		t.Fatal(err)
	}
	if fromPlain != fromGzip {
		t.Errorf("plain archive gave %+v, gzip %+v", fromPlain, fromGzip)
	}
	sealSpool = true // the gzip archive's data spooled encrypted
	if fromSealedSpool, err := layer(gz); err != nil || fromSealedSpool != fromPlain {
		t.Errorf("gzip archive through a sealed spool gave %+v, %v; want %+v", fromSealedSpool, err, fromPlain)
	}
	sealSpool = false
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("spool file left behind: %v", got)
	}

	hostile := func(h *tar.Header) []byte {
		var buf bytes.Buffer
		buf.Write(plain[:len(plain)-1024]) // without the end-of-archive marker
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		return buf.Bytes()
	}
	for _, tc := range []struct {
		h    *tar.Header
		want string
	}{
		{&tar.Header{Name: "checkpoint/evil", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
			`member "checkpoint/evil": unsupported member type: symbolic link`},
		{&tar.Header{Name: "../evil", Typeflag: tar.TypeReg}, `member "../evil": unsafe member name`},
		{&tar.Header{Name: "./config.dump", Typeflag: tar.TypeReg}, `member "./config.dump": duplicate member`},
	} {
		for _, data := range [][]byte{hostile(tc.h), gzipBytes(hostile(tc.h))} {
			if _, err := layer(data); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		}
	}
}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// get sends a request, with the test credentials unless hdr names an
// Authorization header, and returns the response with its body read.
func get(t *testing.T, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	auth := true // the test credentials, unless hdr names an Authorization ("": none)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Authorization" {
			auth = false
			if hdr[i+1] == "" {
				continue
			}
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if auth {
		req.SetBasicAuth(testCreds.Username, testCreds.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// errorCode decodes the distribution specification's error body.
func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var v struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &v); err != nil || len(v.Errors) != 1 || v.Errors[0].Message == "" {
		t.Errorf("error body %s is not {\"errors\":[{code,message}]} (%v)", body, err)
		return ""
	}
	return v.Errors[0].Code
}

// TestConformance checks the registry API answers at the HTTP level.
func TestConformance(t *testing.T) {
	b := newBed(t, 3)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	im, err := b.srv.Prepare(context.Background(), wl, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := b.http.URL + "/v2/"
	repo := base + "crfailoverd/default/counter/counter"

	resp, body := get(t, "GET", base)
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET /v2/: %s %q", resp.Status, body)
	}
	if resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("GET /v2/: no API version header")
	}

	for _, ref := range []string{"1", "latest", im.ManifestDigest} {
		for _, method := range []string{"GET", "HEAD"} {
			resp, body := get(t, method, repo+"/manifests/"+ref, "Accept", MediaTypeManifest)
			if resp.StatusCode != 200 {
				t.Fatalf("%s manifest %s: %s %s", method, ref, resp.Status, body)
			}
			h := resp.Header
			if h.Get("Content-Type") != MediaTypeManifest || h.Get("Docker-Content-Digest") != im.ManifestDigest ||
				h.Get("Content-Length") != fmt.Sprint(len(im.Manifest)) {
				t.Errorf("%s manifest %s: headers %v", method, ref, h)
			}
			if method == "GET" && !bytes.Equal(body, im.Manifest) {
				t.Errorf("GET manifest %s: body differs", ref)
			}
			if method == "HEAD" && len(body) != 0 {
				t.Errorf("HEAD manifest %s: %d bytes of body", ref, len(body))
			}
		}
	}
	if sha256Digest(im.Manifest) != im.ManifestDigest || sha256Digest(im.Config) != im.ConfigDigest {
		t.Errorf("digests do not match the bytes")
	}

	for _, blob := range []struct {
		digest string
		size   int64
	}{{im.ConfigDigest, int64(len(im.Config))}, {im.LayerDigest, im.LayerSize}} {
		for _, method := range []string{"GET", "HEAD"} {
			resp, body := get(t, method, repo+"/blobs/"+blob.digest)
			if resp.StatusCode != 200 {
				t.Fatalf("%s blob %s: %s %s", method, blob.digest, resp.Status, body)
			}
			if resp.Header.Get("Docker-Content-Digest") != blob.digest || resp.Header.Get("Content-Length") != fmt.Sprint(blob.size) {
				t.Errorf("%s blob: headers %v", method, resp.Header)
			}
			if method == "GET" && sha256Digest(body) != blob.digest {
				t.Errorf("GET blob %s: body has digest %s", blob.digest, sha256Digest(body))
			}
		}
	}
	// A ranged read of the layer (resumed downloads).
	resp, body = get(t, "GET", repo+"/blobs/"+im.LayerDigest, "Range", "bytes=10-19")
	if resp.StatusCode != http.StatusPartialContent || len(body) != 10 {
		t.Errorf("ranged GET: %s, %d bytes", resp.Status, len(body))
	}

	unknownDigest := "sha256:" + strings.Repeat("0", 64)
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "crfailoverd/default/nope/counter/manifests/latest", 404, codeNameUnknown},
		{"GET", "crfailoverd/default/counter/manifests/latest", 404, codeNameUnknown},
		{"GET", "library/busybox/manifests/latest", 404, codeNameUnknown},
		{"GET", "crfailoverd/Default/counter/counter/manifests/latest", 404, codeNameUnknown},
		{"GET", "crfailoverd/default/nope/counter/blobs/" + im.LayerDigest, 404, codeNameUnknown},
		{"GET", "crfailoverd/default/counter/counter/manifests/2", 404, codeManifestUnknown},
		{"GET", "crfailoverd/default/counter/counter/manifests/01", 404, codeManifestUnknown},
		{"GET", "crfailoverd/default/counter/counter/manifests/v1", 404, codeManifestUnknown},
		{"GET", "crfailoverd/default/counter/counter/manifests/" + unknownDigest, 404, codeManifestUnknown},
		{"GET", "crfailoverd/default/counter/counter/manifests/" + im.LayerDigest, 404, codeManifestUnknown},
		{"GET", "crfailoverd/default/counter/counter/blobs/" + unknownDigest, 404, codeBlobUnknown},
		{"GET", "crfailoverd/default/counter/counter/blobs/" + im.ManifestDigest, 404, codeBlobUnknown},
		{"GET", "crfailoverd/default/counter/counter/blobs/sha512:" + strings.Repeat("0", 128), 404, codeBlobUnknown},
		{"GET", "crfailoverd/default/counter/counter/blobs/sha256:xyz", 400, codeDigestInvalid},
		{"GET", "crfailoverd/default/counter/counter/tags/list?n=x", 400, codePaginationBad},
		{"PUT", "crfailoverd/default/counter/counter/manifests/latest", 405, codeUnsupported},
		{"POST", "crfailoverd/default/counter/counter/blobs/uploads/", 405, codeUnsupported},
		{"DELETE", "crfailoverd/default/counter/counter/blobs/" + im.LayerDigest, 405, codeUnsupported},
	} {
		resp, body := get(t, c.method, base+c.path)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s: %s, want %d", c.method, c.path, resp.Status, c.status)
			continue
		}
		if resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: content type %q", c.method, c.path, resp.Header.Get("Content-Type"))
		}
		if code := errorCode(t, body); code != c.code {
			t.Errorf("%s %s: code %s, want %s", c.method, c.path, code, c.code)
		}
		if c.status == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q", c.method, c.path, resp.Header.Get("Allow"))
		}
		// HEAD answers the same status, without a body.
		if c.method == "GET" {
			if resp, body := get(t, "HEAD", base+c.path); resp.StatusCode != c.status || len(body) != 0 {
				t.Errorf("HEAD %s: %s with %d bytes of body", c.path, resp.Status, len(body))
			}
		}
	}

	// The client sees the registry's error codes.
	_, err = remote.Image(b.ref(t, "crfailoverd/default/counter/counter:9"), testAuth)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != 404 || len(te.Errors) != 1 || te.Errors[0].Code != transport.ManifestUnknownErrorCode {
		t.Errorf("pull of an unknown tag: %v", err)
	}
	_, err = remote.Image(b.ref(t, "crfailoverd/default/x/counter:1"), testAuth)
	if !errors.As(err, &te) || te.StatusCode != 404 || len(te.Errors) != 1 || te.Errors[0].Code != transport.NameUnknownErrorCode {
		t.Errorf("pull of an unknown repository: %v", err)
	}
}

func TestPagination(t *testing.T) {
	b := newBed(t, 5)
	gz, _ := fixtureBytes(t)
	for range 3 {
		b.add(t, wl, gz) // tags 1 2 3 latest
	}
	b.add(t, store.Workload{Namespace: "a", Pod: "b", Container: "c"}, gz)
	repo := b.http.URL + "/v2/crfailoverd/default/counter/counter/tags/list"
	resp, body := get(t, "GET", repo+"?n=2")
	if resp.StatusCode != 200 || string(body) != `{"name":"crfailoverd/default/counter/counter","tags":["1","2"]}` {
		t.Errorf("n=2: %s %s", resp.Status, body)
	}
	if l := resp.Header.Get("Link"); !strings.Contains(l, "last=2") || !strings.Contains(l, `rel="next"`) {
		t.Errorf("Link %q", l)
	}
	resp, body = get(t, "GET", repo+"?n=2&last=2")
	if string(body) != `{"name":"crfailoverd/default/counter/counter","tags":["3","latest"]}` || resp.Header.Get("Link") != "" {
		t.Errorf("n=2&last=2: %s, Link %q", body, resp.Header.Get("Link"))
	}
	_, body = get(t, "GET", b.http.URL+"/v2/_catalog?n=1")
	if string(body) != `{"repositories":["crfailoverd/a/b/c"]}` {
		t.Errorf("catalog n=1: %s", body)
	}
	_, body = get(t, "GET", b.http.URL+"/v2/_catalog?last=crfailoverd/a/b/c")
	if string(body) != `{"repositories":["crfailoverd/default/counter/counter"]}` {
		t.Errorf("catalog after a/b/c: %s", body)
	}
}

// TestLatestSkipsBad checks that :latest is the newest entry not marked
// bad, and that a workload whose entries are all bad has no :latest.
func TestLatestSkipsBad(t *testing.T) {
	b := newBed(t, 3)
	gz, plain := fixtureBytes(t)
	b.add(t, wl, gz)
	b.add(t, wl, plain)
	if err := b.st.MarkBad(wl, 2, "restore failed"); err != nil {
		t.Fatal(err)
	}
	im1, _ := b.srv.Prepare(context.Background(), wl, 1)
	desc, err := remote.Head(b.ref(t, "crfailoverd/default/counter/counter:latest"), testAuth)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != im1.ManifestDigest {
		t.Errorf(":latest is %s, want #1's %s", desc.Digest, im1.ManifestDigest)
	}
	if err := b.st.MarkBad(wl, 1, "restore failed"); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, "GET", b.http.URL+"/v2/crfailoverd/default/counter/counter/manifests/latest")
	if resp.StatusCode != 404 || errorCode(t, body) != codeManifestUnknown {
		t.Errorf("latest of all-bad workload: %s %s", resp.Status, body)
	}
	if _, err := b.srv.Prepare(context.Background(), wl, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Prepare(latest) of all-bad workload: %v", err)
	}
}

// TestCache checks where the layer is kept, that the store's directory is
// not written, that a new server uses the cache without rebuilding, that a
// damaged layer is rebuilt, and that entries the store dropped are pruned.
func TestCache(t *testing.T) {
	b := newBed(t, 2)
	gz, plain := fixtureBytes(t)
	e1 := b.add(t, wl, gz)
	storeDir := filepath.Dir(e1.Path)
	before := dirNames(t, storeDir)

	im, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(b.dataDir, "images", "default_counter_counter")
	if im.LayerPath != filepath.Join(cacheDir, "00000000000000000001.layer.tar.gz") {
		t.Errorf("layer at %s", im.LayerPath)
	}
	if got := dirNames(t, cacheDir); !slices.Equal(got, []string{"00000000000000000001.image.json", "00000000000000000001.layer.tar.gz"}) {
		t.Errorf("cache holds %v", got)
	}
	if got := dirNames(t, storeDir); !slices.Equal(got, before) {
		t.Errorf("store directory changed: %v -> %v", before, got)
	}
	if _, err := store.Open(filepath.Join(b.dataDir, "checkpoints"), 2); err != nil {
		t.Fatal(err)
	}
	if es, _ := b.st.List(wl); len(es) != 1 {
		t.Errorf("store lists %d entries after reopening", len(es))
	}
	if b.logs.count("built checkpoint image") != 1 {
		t.Errorf("%d builds", b.logs.count("built checkpoint image"))
	}

	// A new server (a restarted daemon) finds the layer in the cache.
	st1, _ := os.Stat(im.LayerPath)
	logs := &logBuffer{}
	s2 := NewServer(b.st, slog.New(slog.NewTextHandler(logs, nil)))
	im2, err := s2.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(im.LayerPath)
	if logs.count("built checkpoint image") != 0 || !os.SameFile(st1, st2) || im2.ManifestDigest != im.ManifestDigest {
		t.Errorf("restarted server rebuilt the image")
	}

	// A damaged layer is noticed (by a server that has not verified it
	// yet) and rebuilt.
	data, _ := os.ReadFile(im.LayerPath)
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(im.LayerPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logs = &logBuffer{}
	s3 := NewServer(b.st, slog.New(slog.NewTextHandler(logs, nil)))
	im3, err := s3.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if logs.count("damaged") != 1 || logs.count("built checkpoint image") != 1 || im3.LayerDigest != im.LayerDigest {
		t.Errorf("damaged layer: logs %q", logs.b.String())
	}

	// Leftover temporary files and entries retention dropped are pruned.
	if err := os.WriteFile(filepath.Join(cacheDir, ".tmp-layer-x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.add(t, wl, plain)
	b.add(t, wl, gz) // retention 2: #1 goes
	if _, err := b.srv.Prepare(context.Background(), wl, 3); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, cacheDir); !slices.Equal(got, []string{"00000000000000000003.image.json", "00000000000000000003.layer.tar.gz"}) {
		t.Errorf("after a build, cache holds %v", got)
	}
	resp, _ := get(t, "GET", b.http.URL+"/v2/crfailoverd/default/counter/counter/blobs/"+im.ConfigDigest)
	if resp.StatusCode != 404 {
		t.Errorf("blob of a dropped entry: %s", resp.Status)
	}
	if err := b.st.Remove(wl); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Prune(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cacheDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache directory of a removed workload is still there (%v): %v", err, dirNames(t, cacheDir))
	}
}

func TestCacheDirOption(t *testing.T) {
	b := newBed(t, 2)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	b.srv.CacheDir = filepath.Join(t.TempDir(), "elsewhere")
	im, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(im.LayerPath, b.srv.CacheDir+"/") {
		t.Errorf("layer at %s", im.LayerPath)
	}
}

func TestRejectsDamagedArchive(t *testing.T) {
	b := newBed(t, 2)
	_, plain := fixtureBytes(t)
	b.add(t, wl, plain[:len(plain)/2])
	resp, body := get(t, "GET", b.http.URL+"/v2/crfailoverd/default/counter/counter/manifests/1")
	if resp.StatusCode != 500 || errorCode(t, body) != codeUnknown {
		t.Errorf("truncated archive: %s %s", resp.Status, body)
	}
	if got := dirNames(t, filepath.Join(b.dataDir, "images", "default_counter_counter")); len(got) != 0 {
		t.Errorf("failed build left %v", got)
	}
}

// TestConcurrentPulls pulls one image from many clients at once: one build
// serves them all.
func TestConcurrentPulls(t *testing.T) {
	b := newBed(t, 2)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	var wg sync.WaitGroup
	digests := make([]v1.Hash, 8)
	errs := make([]error, 8)
	for i := range digests {
		wg.Go(func() {
			img, err := remote.Image(b.ref(t, "crfailoverd/default/counter/counter:latest"), testAuth)
			if err == nil {
				err = verifyImage(t, img)
			}
			if err == nil {
				digests[i], err = img.Digest()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		if digests[i] != digests[0] {
			t.Errorf("pull %d got %s, pull 0 %s", i, digests[i], digests[0])
		}
	}
	if n := b.logs.count("built checkpoint image"); n != 1 {
		t.Errorf("%d builds", n)
	}
}

func TestServeListener(t *testing.T) {
	b := newBed(t, 2)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.srv.ServeListener(ctx, ln) }()
	r, err := name.ParseReference(ln.Addr().String()+"/"+ImageName(wl, 1), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, testAuth)
	if err == nil {
		err = verifyImage(t, img)
	}
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ServeListener: %v", err)
	}
	if err := b.srv.Serve(context.Background(), "256.0.0.1:1"); err == nil {
		t.Errorf("Serve on an invalid address succeeded")
	}
}

// verifyImage reads every part of a pulled image and checks its digests
// and sizes: the client checks the manifest (when pulled by digest), the
// configuration and the compressed layer against their descriptors; the
// diff_id is checked here.
func verifyImage(t *testing.T, img v1.Image) error {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if sha256Digest(raw) != d.String() {
		return fmt.Errorf("manifest digest %s, bytes have %s", d, sha256Digest(raw))
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if sha256Digest(cfg) != m.Config.Digest.String() || int64(len(cfg)) != m.Config.Size {
		return fmt.Errorf("config does not match its descriptor")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if len(layers) != len(m.Layers) || len(layers) != len(cf.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers, %d descriptors, %d diff_ids", len(layers), len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for i, l := range layers {
		rc, err := l.Compressed() // verified by the client while read
		if err != nil {
			return err
		}
		zb, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if sha256Digest(zb) != m.Layers[i].Digest.String() || int64(len(zb)) != m.Layers[i].Size {
			return fmt.Errorf("layer %d does not match its descriptor", i)
		}
		zr, err := gzip.NewReader(bytes.NewReader(zb))
		if err != nil {
			return err
		}
		ub, err := io.ReadAll(zr)
		if err != nil {
			return err
		}
		if sha256Digest(ub) != cf.RootFS.DiffIDs[i].String() {
			return fmt.Errorf("layer %d: diff_id %s, content has %s", i, cf.RootFS.DiffIDs[i], sha256Digest(ub))
		}
	}
	return nil
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}
