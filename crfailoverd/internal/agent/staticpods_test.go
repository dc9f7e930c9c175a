package agent

import (
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// TestRestorePlacementWritesAStaticPod: with static pods, a placement's
// restore hands kubelet
// a manifest whose image is the checkpoint on the local endpoint, and
// makes no CRI restore call; removing the copies removes the manifest.
func TestRestorePlacementWritesAStaticPod(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "checkpoints"), 3)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("../archive/testdata/counter-checkpoint.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Import(context.Background(), wl, zr, store.Entry{Method: MethodCRI, Source: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	rt := newFake()
	manifests := filepath.Join(dir, "manifests")
	a := New(Options{Runtime: rt, Store: st, DataDir: dir, StaticPods: &StaticPods{Dir: manifests, Endpoint: "localhost:7948"},
		Log: startAgentLog(), Settings: Settings{Node: "n2", Method: MethodCRI}})
	cfg, err := a.RecordConfig(context.Background(), discovery.Workload{ID: wl, SandboxID: "sb-0", ContainerID: "ctr-0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(context.Background(), ownership.Placement{Entry: e, Config: cfg, Epoch: 3, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	pod, err := staticpod.Load(filepath.Join(manifests, staticpod.FileName("ns", "web")))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pod.Spec.Containers[0].Image, "localhost:7948/crfailoverd/ns/web/app:1"; got != want {
		t.Errorf("image %q, want %q", got, want)
	}
	if pod.Annotations[discovery.AnnEpoch] != "3" || pod.Annotations[discovery.AnnWorkload] != wl.String() {
		t.Errorf("annotations %v: want epoch 3 and workload %s", pod.Annotations, wl)
	}
	if len(rt.restores) != 0 {
		t.Errorf("a CRI restore was made (%v); kubelet should make the pod", rt.restores)
	}
	if _, err := a.RemoveCopies(context.Background(), wl); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(manifests, staticpod.FileName("ns", "web"))); !os.IsNotExist(err) {
		t.Errorf("manifest still there after RemoveCopies: %v", err)
	}
}
