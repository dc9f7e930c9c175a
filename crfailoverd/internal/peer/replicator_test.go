package peer

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

type replicated struct {
	e    store.Entry
	peer string
}

// newTestReplicator returns a replicator over clients whose callbacks
// report on the returned channels.
func newTestReplicator(clients map[string]*Client, o ReplicatorOptions) (*Replicator, chan replicated, chan replicated) {
	ok, failed := make(chan replicated, 100), make(chan replicated, 100)
	o.Clients = func(peer string) (*Client, error) {
		if c := clients[peer]; c != nil {
			return c, nil
		}
		return nil, fmt.Errorf("unknown peer %s", peer)
	}
	o.OnReplicated = func(e store.Entry, peer string, took time.Duration, bytes int64) {
		if bytes != e.Size {
			panic(fmt.Sprintf("OnReplicated: %d bytes for an entry of %d", bytes, e.Size))
		}
		ok <- replicated{e, peer}
	}
	o.OnFailed = func(e store.Entry, peer string, err error) { failed <- replicated{e, peer} }
	if o.Backoff == 0 {
		o.Backoff = 10 * time.Millisecond
	}
	return NewReplicator(o), ok, failed
}

// run runs r until stop is called or the test ends; stop checks that Run
// returns.
func run(t *testing.T, r *Replicator) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		r.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			recvTimeout(t, stopped, "Run to return")
		})
	}
	t.Cleanup(stop)
	return stop
}

// pushGate is a server option that reports each Push on entered and holds
// it until release is closed.
func pushGate(entered chan<- struct{}, release <-chan struct{}) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == fullMethod("Push") {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ss.Context().Done():
				return ss.Context().Err()
			}
		}
		return handler(srv, ss)
	})
}

// failPushes is a server option that fails the first n pushes (all if n
// is negative), counting every push in calls.
func failPushes(n int32, calls *atomic.Int32) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == fullMethod("Push") {
			if c := calls.Add(1); n < 0 || c <= n {
				return status.Errorf(codes.Unavailable, "injected failure %d", c)
			}
		}
		return handler(srv, ss)
	})
}

// blackHole listens and accepts TCP connections but never speaks TLS.
func blackHole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestReplicatorSlowPeerDoesNotStallOthers(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	self := ca.nodeTLS(t, "node-a")
	healthy := startPeer(t, ca, "healthy", Handlers{})
	slow, err := Dial("slow", blackHole(t), self)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	r, ok, failed := newTestReplicator(map[string]*Client{"healthy": healthy.client(t, self), "slow": slow},
		ReplicatorOptions{MaxConcurrent: 2, Timeout: time.Minute, MaxTries: 100})
	stop := run(t, r)

	src, _ := openStore(t)
	var entries []store.Entry
	for i := range 3 {
		e := addEntry(t, src, fmt.Sprintf("ns/pod-%d/ctr", i), 100_000)
		entries = append(entries, e)
		r.Enqueue(e, []string{"slow", "healthy"})
	}
	for range entries {
		ev := recvTimeout(t, ok, "replication to the healthy peer")
		if ev.peer != "healthy" {
			t.Fatalf("replicated to %s", ev.peer)
		}
	}
	for _, e := range entries {
		if _, err := healthy.store.Get(e.Workload, e.Seq); err != nil {
			t.Errorf("healthy peer: %v", err)
		}
	}
	if n := r.Pending()["slow"]; n == 0 {
		t.Errorf("slow peer has no pending entries")
	}
	if _, ok := r.Pending()["healthy"]; ok {
		t.Errorf("healthy peer still has pending entries: %v", r.Pending())
	}
	select {
	case ev := <-failed:
		t.Errorf("gave up on %s seq %d for %s", ev.e.Workload, ev.e.Seq, ev.peer)
	default:
	}

	// Stopping interrupts the stuck push and keeps everything queued.
	stop()
	if pend := r.Pending(); pend["slow"] != len(entries) || len(pend) != 1 {
		t.Errorf("pending after Run returned: %v, want slow: %d", pend, len(entries))
	}
}

func TestReplicatorLatestWins(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	self := ca.nodeTLS(t, "node-a")
	entered, release := make(chan struct{}, 10), make(chan struct{})
	p := startPeer(t, ca, "node-p", Handlers{}, pushGate(entered, release))
	r, ok, _ := newTestReplicator(map[string]*Client{"node-p": p.client(t, self)}, ReplicatorOptions{})
	run(t, r)

	src, _ := openStore(t)
	var entries []store.Entry
	for range 5 {
		entries = append(entries, addEntry(t, src, "ns/pod/ctr", 50_000))
	}
	r.Enqueue(entries[0], []string{"node-p"})
	recvTimeout(t, entered, "the first push")
	for _, e := range entries[1:] {
		r.Enqueue(e, []string{"node-p"})
	}
	r.Enqueue(entries[2], []string{"node-p"}) // older than what waits: ignored
	if n := r.Pending()["node-p"]; n != 2 {
		t.Errorf("pending = %d, want 2 (one in flight, the newest waiting)", n)
	}
	close(release)

	var got []uint64
	for !slices.Contains(got, entries[4].Seq) {
		got = append(got, recvTimeout(t, ok, "replication").e.Seq)
	}
	if want := []uint64{entries[0].Seq, entries[4].Seq}; !slices.Equal(got, want) {
		t.Errorf("replicated seqs %v, want %v", got, want)
	}
	if len(entered) != 1 {
		t.Errorf("%d pushes after the first, want 1", len(entered))
	}
	if pend := r.Pending(); len(pend) != 0 {
		t.Errorf("pending after catching up: %v", pend)
	}
	es, err := p.store.List(entries[0].Workload)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range es {
		seqs = append(seqs, e.Seq)
	}
	if want := []uint64{entries[4].Seq, entries[0].Seq}; !slices.Equal(seqs, want) {
		t.Errorf("receiver holds seqs %v, want %v", seqs, want)
	}
}

func TestReplicatorRetries(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	self := ca.nodeTLS(t, "node-a")
	var flakyCalls, brokenCalls atomic.Int32
	flaky := startPeer(t, ca, "flaky", Handlers{}, failPushes(2, &flakyCalls))
	broken := startPeer(t, ca, "broken", Handlers{}, failPushes(-1, &brokenCalls))
	r, ok, failed := newTestReplicator(map[string]*Client{"flaky": flaky.client(t, self), "broken": broken.client(t, self)},
		ReplicatorOptions{MaxTries: 3})

	src, _ := openStore(t)
	e := addEntry(t, src, "ns/pod/ctr", 10_000)
	r.Enqueue(e, []string{"flaky", "broken", "unknown"}) // queued before Run starts
	run(t, r)

	if ev := recvTimeout(t, ok, "replication to the flaky peer"); ev.peer != "flaky" || ev.e.Seq != e.Seq {
		t.Errorf("replicated %s seq %d to %s", ev.e.Workload, ev.e.Seq, ev.peer)
	}
	var gaveUp []string
	for range 2 {
		gaveUp = append(gaveUp, recvTimeout(t, failed, "giving up").peer)
	}
	slices.Sort(gaveUp)
	if want := []string{"broken", "unknown"}; !slices.Equal(gaveUp, want) {
		t.Errorf("gave up on %v, want %v", gaveUp, want)
	}
	if n := flakyCalls.Load(); n != 3 {
		t.Errorf("flaky peer got %d pushes, want 3", n)
	}
	if n := brokenCalls.Load(); n != 3 {
		t.Errorf("broken peer got %d pushes, want MaxTries = 3", n)
	}
	if _, err := flaky.store.Get(e.Workload, e.Seq); err != nil {
		t.Errorf("flaky peer: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	r := NewReplicator(ReplicatorOptions{Backoff: time.Second})
	for tries, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 10: time.Minute} {
		if got := r.backoff(tries); got != want {
			t.Errorf("backoff(%d) = %v, want %v", tries, got, want)
		}
	}
}
