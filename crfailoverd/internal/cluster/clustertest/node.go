package clustertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Copy is a live copy of a workload on a FakeNode.
type Copy struct {
	Workload  store.Workload
	SandboxID string
	Epoch     uint64 // the pod's epoch label (0: an original pod)
}

// FakeNode stands in for a node's agent and runtime behind the
// controller's Node interface. It keeps copies in memory, writes
// checkpoints of random bytes into a real store, and judges its copies by
// the ownership view as the agent does (ownership.View.Admit), on every
// view change and every DiscoverEvery: copies told to stop are removed,
// copies the cluster does not know are reported.
type FakeNode struct {
	name  string
	store *store.Store

	reports chan ownership.Report

	mu       sync.Mutex
	board    *ownership.Board // the running member's; replaced on a restart
	copies   map[store.Workload]*Copy
	sandbox  int
	restores []ownership.Placement
	stopped  []Copy
	failNext error // the next Restore fails with it
	failed   int   // restores that failed
	delay    time.Duration
	down     bool // powered off: no copies, no reports
}

func newFakeNode(name string, st *store.Store, board *ownership.Board) *FakeNode {
	// board is replaced at every start (powerOn).
	return &FakeNode{name: name, store: st, board: board, reports: make(chan ownership.Report, 1024), copies: map[store.Workload]*Copy{}}
}

// DiscoverEvery is how often a FakeNode looks at its copies without a
// view change (the agent's discovery runs every second).
const DiscoverEvery = 100 * time.Millisecond

func (f *FakeNode) view() *ownership.View {
	f.mu.Lock()
	b := f.board
	f.mu.Unlock()
	return b.View()
}

// run is the fake's discovery loop, on board (the running member's).
func (f *FakeNode) run(ctx context.Context, board *ownership.Board) {
	t := time.NewTicker(DiscoverEvery)
	defer t.Stop()
	for {
		changed := board.Changed()
		f.discover(board.View())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
	}
}

func (f *FakeNode) discover(v *ownership.View) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return
	}
	for id, c := range f.copies {
		w := c.discovered()
		verdict, known := v.Admit(w)
		if !known && v.Connected && !v.Fenced {
			f.send(ownership.Report{Kind: ownership.Unregistered, Workload: w, CopyEpoch: v.CopyEpoch(w)})
		}
		if verdict == ownership.Stop {
			f.stopped = append(f.stopped, *c)
			delete(f.copies, id)
		}
	}
}

func (c *Copy) discovered() discovery.Workload {
	return discovery.Workload{ID: c.Workload, SandboxID: c.SandboxID, ContainerID: "ctr-" + c.SandboxID, Interval: time.Second, Epoch: c.Epoch}
}

// send queues a report; f.mu is held.
func (f *FakeNode) send(r ownership.Report) {
	select {
	case f.reports <- r:
	default:
	}
}

// StartOriginal starts an original copy of id (a pod a user created).
func (f *FakeNode) StartOriginal(id store.Workload) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandbox++
	f.copies[id] = &Copy{Workload: id, SandboxID: fmt.Sprintf("%s-sb%d", f.name, f.sandbox)}
}

// Checkpoint writes a checkpoint of a live copy into the store and
// reports it, as the agent's worker does.
func (f *FakeNode) Checkpoint(id store.Workload, size int) (store.Entry, error) {
	f.mu.Lock()
	c, ok := f.copies[id]
	f.mu.Unlock()
	if !ok {
		return store.Entry{}, fmt.Errorf("%s: no copy of %s", f.name, id)
	}
	e, err := f.writeCheckpoint(id, size)
	if err != nil {
		return e, err
	}
	v := f.view()
	w := c.discovered()
	f.mu.Lock()
	f.send(ownership.Report{Kind: ownership.Checkpointed, Workload: w, CopyEpoch: v.CopyEpoch(w), Entry: e})
	f.mu.Unlock()
	return e, nil
}

func (f *FakeNode) writeCheckpoint(id store.Workload, size int) (store.Entry, error) {
	tmp, err := f.store.TempPath(id)
	if err != nil {
		return store.Entry{}, err
	}
	// A real tar (peers walk replicas before they store them) of random
	// memory pages.
	b := make([]byte, size)
	_, _ = rand.Read(b)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "checkpoint/", Mode: 0o700})
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/pages-1.img", Mode: 0o600, Size: int64(size)})
	_, _ = tw.Write(b)
	if err := tw.Close(); err != nil {
		return store.Entry{}, err
	}
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return store.Entry{}, err
	}
	return f.store.Commit(id, tmp, store.Entry{Created: time.Now(), Source: f.name, Method: "fake"})
}

// Fail makes a live copy's application fail and hands it to the cluster,
// as the agent does under restore.policy "peer".
func (f *FakeNode) Fail(id store.Workload, reason string) error {
	v := f.view()
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.copies[id]
	if !ok {
		return fmt.Errorf("%s: no copy of %s", f.name, id)
	}
	delete(f.copies, id)
	w := c.discovered()
	f.send(ownership.Report{Kind: ownership.AppFailed, Workload: w, CopyEpoch: v.CopyEpoch(w), Reason: reason})
	return nil
}

// FailNextRestore makes the next Restore fail with err.
func (f *FakeNode) FailNextRestore(err error) {
	f.mu.Lock()
	f.failNext = err
	f.mu.Unlock()
}

// Copies returns the live copies.
func (f *FakeNode) Copies() map[store.Workload]Copy {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[store.Workload]Copy{}
	for id, c := range f.copies {
		out[id] = *c
	}
	return out
}

// FailedRestores is how many restores failed here.
func (f *FakeNode) FailedRestores() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// Restores returns the placements this node restored.
func (f *FakeNode) Restores() []ownership.Placement {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ownership.Placement(nil), f.restores...)
}

// powerOff drops every copy (a power cut kills them).
func (f *FakeNode) powerOff() {
	f.mu.Lock()
	f.down = true
	clear(f.copies)
	f.mu.Unlock()
}

func (f *FakeNode) powerOn(board *ownership.Board) {
	f.mu.Lock()
	f.down = false
	f.board = board
	f.mu.Unlock()
}

// The controller's Node interface.

// RecordConfig returns an unprivileged restore configuration naming the
// copy and the node that recorded it.
func (f *FakeNode) RecordConfig(_ context.Context, w discovery.Workload) ([]byte, error) {
	return restorecfg.Marshal(&runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: w.ID.Pod, Namespace: w.ID.Namespace, Uid: w.SandboxID},
		Annotations: map[string]string{"recorded-on": f.name},
	}, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: w.ID.Container}, Image: &runtimeapi.ImageSpec{Image: "counter:latest"}})
}

// SlowRestores makes every Restore take d (a big checkpoint, say).
func (f *FakeNode) SlowRestores(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

// Restore starts a copy at the placement's epoch, after checking the
// archive against the store's checksum.
func (f *FakeNode) Restore(ctx context.Context, p ownership.Placement) (time.Duration, error) {
	if err := f.store.Verify(p.Entry); err != nil {
		return 0, err
	}
	f.mu.Lock()
	delay := f.delay
	f.mu.Unlock()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(delay):
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return 0, errors.New("node is down")
	}
	if err := f.failNext; err != nil {
		f.failNext = nil
		f.failed++
		return 0, err
	}
	if len(p.Config) == 0 {
		return 0, errors.New("no restore configuration")
	}
	f.sandbox++
	id := p.Entry.Workload
	f.copies[id] = &Copy{Workload: id, SandboxID: fmt.Sprintf("%s-sb%d", f.name, f.sandbox), Epoch: p.Epoch}
	f.restores = append(f.restores, p)
	return time.Millisecond, nil
}

// RemoveCopies removes the copy of id.
func (f *FakeNode) RemoveCopies(_ context.Context, id store.Workload) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.copies[id]; ok {
		f.stopped = append(f.stopped, *c)
		delete(f.copies, id)
		return 1, nil
	}
	return 0, nil
}

// Running reports whether a copy of id runs.
func (f *FakeNode) Running(id store.Workload) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.copies[id]
	return ok
}

// CheckpointNow checkpoints a live copy (without reporting it: the
// migration records it itself).
func (f *FakeNode) CheckpointNow(_ context.Context, id store.Workload) (store.Entry, error) {
	if !f.Running(id) {
		return store.Entry{}, fmt.Errorf("workload %s does not run on %s", id, f.name)
	}
	return f.writeCheckpoint(id, 4096)
}

// Stop removes the copy of id.
func (f *FakeNode) Stop(ctx context.Context, id store.Workload) error {
	_, err := f.RemoveCopies(ctx, id)
	return err
}

// Reports is what the fake tells the cluster.
func (f *FakeNode) Reports() <-chan ownership.Report { return f.reports }
