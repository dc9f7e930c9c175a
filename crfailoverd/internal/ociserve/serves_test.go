package ociserve

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// TestServesOnlyPendingRestores: with Serves set, as in the daemon, the
// node's own credentials pull a checkpoint only while its restore is
// pending: the catalog, the tags, the manifests (by tag and digest) and the
// blobs of any other checkpoint are not found, with a refusal that says
// why; once the restore is pending exactly that checkpoint is pulled.
func TestServesOnlyPendingRestores(t *testing.T) {
	b := newBed(t, 3)
	gz, plain := fixtureBytes(t)
	b.add(t, wl, gz)
	e2 := b.add(t, wl, plain)
	im1, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	pending := map[uint64]bool{}
	b.srv.Serves = func(w store.Workload, seq uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		return w == wl && pending[seq]
	}
	repo := b.http.URL + "/v2/crfailoverd/default/counter/counter"
	for _, path := range []string{"/manifests/latest", "/manifests/1", "/manifests/" + im1.ManifestDigest, "/blobs/" + im1.LayerDigest, "/blobs/" + im1.ConfigDigest, "/tags/list"} {
		resp, body := get(t, "GET", repo+path)
		if resp.StatusCode != 404 || !strings.Contains(string(body), "no restore of this workload is handed to kubelet") {
			t.Errorf("GET %s with no restore pending: %s (%d bytes); want 404 naming why", path, resp.Status, len(body))
		}
	}
	if resp, body := get(t, "GET", b.http.URL+"/v2/_catalog"); resp.StatusCode != 200 || strings.Contains(string(body), "counter") {
		t.Errorf("catalog with no restore pending: %s %s; want an empty list", resp.Status, body)
	}
	if n := b.logs.count("no restore of this workload is pending on this node"); n == 0 {
		t.Error("the refusals were not logged")
	}

	mu.Lock()
	pending[e2.Seq] = true
	mu.Unlock()
	if _, err := remote.Image(b.ref(t, "crfailoverd/default/counter/counter:2"), testAuth); err != nil {
		t.Errorf("pull of the pending #2: %v", err)
	}
	if img, err := remote.Image(b.ref(t, "crfailoverd/default/counter/counter:2"), testAuth); err == nil {
		if err := verifyImage(t, img); err != nil {
			t.Errorf("pending #2: %v", err)
		}
	}
	if resp, body := get(t, "GET", repo+"/manifests/1"); resp.StatusCode != 404 {
		t.Errorf("GET #1 while only #2 is pending: %s %s; want 404", resp.Status, body)
	}
	// (#1's layer is #2's too: the layer of one archive, gzipped or not,
	// is the same; its manifest is not.)
	if resp, _ := get(t, "GET", repo+"/manifests/"+im1.ManifestDigest); resp.StatusCode != 404 {
		t.Errorf("GET #1's manifest by digest while only #2 is pending: %s; want 404", resp.Status)
	}
	if resp, body := get(t, "GET", b.http.URL+"/v2/_catalog"); resp.StatusCode != 200 || !strings.Contains(string(body), "crfailoverd/default/counter/counter") {
		t.Errorf("catalog with #2 pending: %s %s", resp.Status, body)
	}
}
