package peer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestAsideRecord(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	full := fmt.Errorf("peer n2: push: %w", status.Error(codes.ResourceExhausted, "write: no space left on device"))
	down := status.Error(codes.Unavailable, "connection refused")
	type step struct {
		at    time.Duration // after t0
		err   error
		aside time.Duration // set aside for this long from at (0: not set aside by this outcome)
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"a full disk sets aside at once", []step{{0, full, 30 * time.Second}}},
		{"repeated refusals double", []step{
			{0, full, 30 * time.Second}, {30 * time.Second, full, time.Minute}, {90 * time.Second, full, 2 * time.Minute},
			{210 * time.Second, full, 4 * time.Minute}, {450 * time.Second, full, 5 * time.Minute}, {750 * time.Second, full, 5 * time.Minute}}},
		{"a success resets", []step{
			{0, full, 30 * time.Second}, {30 * time.Second, full, time.Minute}, {90 * time.Second, nil, 0}, {91 * time.Second, full, 30 * time.Second}}},
		{"three failures in a row", []step{{0, down, 0}, {time.Second, down, 0}, {2 * time.Second, down, 30 * time.Second}}},
		{"a success between failures starts the count again", []step{
			{0, down, 0}, {time.Second, down, 0}, {2 * time.Second, nil, 0}, {3 * time.Second, down, 0}, {4 * time.Second, down, 0}, {5 * time.Second, down, 30 * time.Second}}},
		{"after a set-aside, three more failures to the next, doubled", []step{
			{0, down, 0}, {time.Second, down, 0}, {2 * time.Second, down, 30 * time.Second},
			{40 * time.Second, down, 0}, {41 * time.Second, down, 0}, {42 * time.Second, down, time.Minute}}},
		{"this node's own failures count for nothing", []step{
			{0, fs.ErrNotExist, 0}, {time.Second, context.Canceled, 0}, {2 * time.Second, fmt.Errorf("open: %w", fs.ErrNotExist), 0}, {3 * time.Second, down, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a Aside
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				got, until, why := a.Record("n2", s.err, now)
				if got != (s.aside > 0) {
					t.Fatalf("step %d (%v): set aside %v, want %v", i, s.err, got, s.aside > 0)
				}
				if !got {
					continue
				}
				if want := now.Add(s.aside); !until.Equal(want) {
					t.Errorf("step %d: until %s, want %s", i, until.Sub(t0), want.Sub(t0))
				}
				if why == "" || !strings.Contains(why, s.err.Error()) {
					t.Errorf("step %d: reason %q does not name the error", i, why)
				}
				if u, ok := a.Until("n2", now.Add(s.aside-time.Nanosecond)); !ok || !u.Equal(until) {
					t.Errorf("step %d: Until just before the end: %v %v", i, u, ok)
				}
				if _, ok := a.Until("n2", now.Add(s.aside)); ok {
					t.Errorf("step %d: still set aside at its end", i)
				}
				if _, ok := a.Until("n3", now); ok {
					t.Errorf("step %d: another peer is set aside", i)
				}
			}
		})
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// refuseFull is a server option that refuses the first n pushes as a full
// disk does (ResourceExhausted), counting every push in calls.
func refuseFull(n int32, calls *atomic.Int32) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == fullMethod("Push") {
			if c := calls.Add(1); c <= n {
				return status.Errorf(codes.ResourceExhausted, "store the archive: write: no space left on device (refusal %d)", c)
			}
		}
		return handler(srv, ss)
	})
}

// A peer whose disk is full is set aside at its first refusal: the entry
// and those waiting for it are handed back (ErrSetAside) without another
// push, its queue waits out the set-aside, and a success afterwards
// resets it.
func TestReplicatorSetsAsideFullPeer(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	self := ca.nodeTLS(t, "node-a")
	var calls atomic.Int32
	entered, release := make(chan struct{}, 10), make(chan struct{})
	full := startPeer(t, ca, "full", Handlers{}, pushGate(entered, release), refuseFull(1, &calls))
	clock := &fakeClock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	r, ok, _ := newTestReplicator(map[string]*Client{"full": full.client(t, self)}, ReplicatorOptions{MaxTries: 100, Now: clock.Now})
	var mu sync.Mutex
	var handed []error
	handedBack := make(chan struct{}, 10)
	r.o.OnFailed = func(_ store.Entry, _ string, err error) {
		mu.Lock()
		handed = append(handed, err)
		mu.Unlock()
		handedBack <- struct{}{}
	}
	run(t, r)

	src, _ := openStore(t)
	first, second := addEntry(t, src, "ns/a/ctr", 10_000), addEntry(t, src, "ns/b/ctr", 10_000)
	r.Enqueue(first, []string{"full"})
	recvTimeout(t, entered, "the first push")
	r.Enqueue(second, []string{"full"}) // waits behind the refused one
	close(release)
	recvTimeout(t, handedBack, "the refused entry handed back")
	recvTimeout(t, handedBack, "the waiting entry handed back")
	mu.Lock()
	for _, err := range handed {
		if !errors.Is(err, ErrSetAside) || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "until 2026-12-01T10:00:30Z") {
			t.Errorf("handed back with %v, want ErrSetAside until 10:00:30 naming the refusal", err)
		}
	}
	mu.Unlock()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d pushes to the full peer, want 1 (the waiting entry is not pushed once it is set aside)", n)
	}
	if until, aside := r.SetAside("full"); !aside || !until.Equal(clock.Now().Add(AsideBase)) {
		t.Errorf("SetAside = %v %v, want until now + %s", until, aside, AsideBase)
	}
	if n := len(r.Pending()); n != 0 {
		t.Errorf("pending after the set-aside: %v", r.Pending())
	}

	// While set aside, a new entry waits in its queue.
	third := addEntry(t, src, "ns/c/ctr", 10_000)
	r.Enqueue(third, []string{"full"})
	if n := r.Pending()["full"]; n != 1 {
		t.Errorf("pending while set aside = %d, want 1", n)
	}
	// Once the set-aside is over, the queue goes on (nudged by an enqueue),
	// and the success resets the peer.
	clock.Add(AsideBase)
	r.Enqueue(addEntry(t, src, "ns/d/ctr", 10_000), []string{"full"})
	for range 2 {
		recvTimeout(t, entered, "a push after the set-aside")
		if ev := recvTimeout(t, ok, "a replication after the set-aside"); ev.peer != "full" {
			t.Fatalf("replicated to %s", ev.peer)
		}
	}
	if _, aside := r.SetAside("full"); aside {
		t.Error("still set aside after a success")
	}
}
