package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestPushArchive(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	b := startPeer(t, ca, "node-b", Handlers{})
	src, _ := openStore(t)
	e := addEntry(t, src, "ns/pod/ctr", 5<<20+12345) // several MiB, not a multiple of the chunk size

	var last int64
	c := b.client(t, a)
	if err := c.Push(context.Background(), e, func(sent int64) { last = sent }); err != nil {
		t.Fatalf("Push: %v", err)
	}
	if last != e.Size {
		t.Errorf("progress ended at %d, want %d", last, e.Size)
	}
	got, err := b.store.Get(e.Workload, e.Seq)
	if err != nil {
		t.Fatalf("receiver: %v", err)
	}
	if got.SHA256 != e.SHA256 || got.Size != e.Size || got.Seq != e.Seq {
		t.Errorf("receiver has seq %d sha256 %s size %d, want seq %d sha256 %s size %d", got.Seq, got.SHA256, got.Size, e.Seq, e.SHA256, e.Size)
	}
	if !got.Created.Equal(e.Created) || got.Method != e.Method || got.Duration != e.Duration {
		t.Errorf("receiver metadata %+v, want %+v", got, e)
	}
	// The source is the authenticated pusher, not what the header claims.
	if e.Source == "node-a" || got.Source != "node-a" {
		t.Errorf("receiver records source %q (header said %q), want the caller node-a", got.Source, e.Source)
	}
	if err := b.store.Verify(got); err != nil {
		t.Error(err)
	}

	// Pushing it again is harmless: the receiver already has it.
	if err := c.Push(context.Background(), e, nil); err != nil {
		t.Errorf("second Push: %v", err)
	}
}

// rawPush sends a header and chunks as given, then closes and returns the
// outcome.
func rawPush(ctx context.Context, c *Client, msgs ...any) error {
	stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[pushStream], fullMethod("Push"))
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := stream.SendMsg(m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
	}
	stream.CloseSend()
	return stream.RecvMsg(&pushReply{})
}

func TestPushRefused(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	b := startPeer(t, ca, "node-b", Handlers{}, streamDone(done))
	c := b.client(t, a)
	w := mustWorkload(t, "ns/pod/ctr")

	data := tarOf(t, 1_100_000)
	sum := sha256.Sum256(data)
	other := sha256.Sum256([]byte("something else"))
	hdr := func(digest [32]byte, size int) *header {
		return &header{Workload: w.String(), Seq: 3, SHA256: hex.EncodeToString(digest[:]), Size: int64(size), Created: time.Now()}
	}
	for _, tc := range []struct {
		name string
		msgs []any
		code codes.Code
		want string
	}{
		{"wrong sha256", []any{hdr(other, len(data)), &chunk{data}}, codes.DataLoss, "sha256 mismatch"},
		{"short stream", []any{hdr(sum, len(data)), &chunk{data[:1000]}}, codes.InvalidArgument, "ended after 1000 of"},
		{"long stream", []any{hdr(sum, len(data)), &chunk{data}, &chunk{[]byte("x")}}, codes.InvalidArgument, "more than the announced"},
		{"no header", []any{&chunk{data}}, codes.Internal, "tag"},
		{"seq 0", []any{&header{Workload: w.String(), SHA256: hex.EncodeToString(sum[:]), Size: 1}}, codes.InvalidArgument, "seq is 0"},
		{"bad workload", []any{&header{Workload: "ns/pod", Seq: 3, SHA256: hex.EncodeToString(sum[:])}}, codes.InvalidArgument, "invalid workload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := rawPush(context.Background(), c, tc.msgs...)
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("push: %v; want code %v and %q", err, tc.code, tc.want)
			}
			if herr := recvTimeout(t, done, "server handler"); herr == nil {
				t.Error("server handler succeeded")
			}
			assertNothingVisible(t, b.store, w, b.root)
		})
	}

	// A store error names workload, seq and cause.
	err := rawPush(context.Background(), c, hdr(other, len(data)), &chunk{data})
	<-done
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "ns/pod/ctr") || !strings.Contains(msg, "seq 3") {
		t.Errorf("error %q does not name the workload and seq", msg)
	}
}

// stallReader yields half of data, then cancels the push and blocks.
type stallReader struct {
	data   []byte
	cancel context.CancelFunc
	ctx    context.Context
	off    int
}

func (r *stallReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data)/2 {
		r.cancel()
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := copy(p, r.data[r.off:len(r.data)/2])
	r.off += n
	return n, nil
}

func TestPushCancelledMidStream(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	b := startPeer(t, ca, "node-b", Handlers{}, streamDone(done))
	c := b.client(t, a)
	src, _ := openStore(t)
	e := addEntry(t, src, "ns/pod/ctr", 3<<20)
	data, err := os.ReadFile(e.Path)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = c.push(ctx, headerOf(e), &stallReader{data: data, cancel: cancel, ctx: ctx}, nil)
	if err == nil {
		t.Fatal("cancelled push succeeded")
	}
	if herr := recvTimeout(t, done, "server handler"); herr == nil {
		t.Fatal("server handler succeeded")
	} else {
		t.Logf("server: %v", herr)
	}
	assertNothingVisible(t, b.store, e.Workload, b.root)
}

func TestFetch(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	b := startPeer(t, ca, "node-b", Handlers{})
	w := mustWorkload(t, "ns/pod/ctr")
	e1 := addEntry(t, b.store, w.String(), 700_000)
	e2 := addEntry(t, b.store, w.String(), 1<<20)
	local, _ := openStore(t)
	c := b.client(t, a)
	ctx := context.Background()

	got, err := c.Fetch(ctx, local, w, e1.Seq, Expect{})
	if err != nil {
		t.Fatalf("Fetch seq %d: %v", e1.Seq, err)
	}
	if got.Seq != e1.Seq || got.SHA256 != e1.SHA256 || got.Source != "node-b" || got.Method != "replica" {
		t.Errorf("fetched %+v, want %+v from node-b as a replica", got, e1)
	}
	if err := local.Verify(got); err != nil {
		t.Error(err)
	}
	latest, err := c.Fetch(ctx, local, w, 0, Expect{})
	if err != nil || latest.Seq != e2.Seq || latest.SHA256 != e2.SHA256 {
		t.Errorf("Fetch latest: %+v, %v; want seq %d", latest, err, e2.Seq)
	}
	_, err = c.Fetch(ctx, local, w, 99, Expect{})
	if status.Code(errors.Unwrap(err)) != codes.NotFound {
		t.Errorf("Fetch of a missing seq: %v, want NotFound", err)
	}
}

// TestFetchExpected: a fetch that expects the cluster's record refuses a
// header announcing another archive before reading it, and content that
// does not match the record even when the header does; neither leaves an
// entry or a file.
func TestFetchExpected(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	b := startPeer(t, ca, "node-b", Handlers{})
	w := mustWorkload(t, "ns/pod/ctr")
	e1 := addEntry(t, b.store, w.String(), 700_000)
	e2 := addEntry(t, b.store, w.String(), 300_000)
	local, root := openStore(t)
	c := b.client(t, a)
	ctx := context.Background()
	noEntries := func(what string) {
		t.Helper()
		if es, _ := local.List(w); len(es) != 0 {
			t.Errorf("%s: entries %+v", what, es)
		}
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
				t.Errorf("%s: left %s", what, p)
			}
			return nil
		})
	}
	_, err := c.Fetch(ctx, local, w, e1.Seq, Expect{SHA256: e2.SHA256, Size: e2.Size})
	if !errors.Is(err, store.ErrDigest) || !strings.Contains(err.Error(), "refused before reading it") || !strings.Contains(err.Error(), e2.SHA256) {
		t.Errorf("fetch of #%d expecting #%d's record: %v; want ErrDigest naming both", e1.Seq, e2.Seq, err)
	}
	noEntries("another archive announced")
	// The holder's copy of #1 is damaged: its header still says #1.
	if err := os.WriteFile(e1.Path, bytes.Repeat([]byte{'x'}, int(e1.Size)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = c.Fetch(ctx, local, w, e1.Seq, Expect{SHA256: e1.SHA256, Size: e1.Size})
	if err == nil {
		t.Fatal("fetch of a damaged copy succeeded")
	}
	noEntries("damaged content")
	if got, err := c.Fetch(ctx, local, w, e2.Seq, Expect{SHA256: e2.SHA256, Size: e2.Size}); err != nil || got.SHA256 != e2.SHA256 {
		t.Errorf("fetch of #%d as recorded: %+v, %v", e2.Seq, got, err)
	}
}

func TestApplyAndMigrate(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	var mu sync.Mutex
	var callers []string
	b := startPeer(t, ca, "node-b", Handlers{
		Apply: func(ctx context.Context, cmd []byte) error {
			mu.Lock()
			callers = append(callers, PeerName(ctx))
			mu.Unlock()
			if string(cmd) != "put x" {
				return errors.New("not the leader; leader is node-c")
			}
			return nil
		},
		Migrate: func(ctx context.Context, workload, to string) (uint64, time.Duration, error) {
			if to != "node-c" {
				return 0, 0, errors.New("no such node " + to)
			}
			return 7, 1500 * time.Millisecond, nil
		},
	})
	c := b.client(t, a)
	ctx := context.Background()

	if err := c.Apply(ctx, []byte("put x")); err != nil {
		t.Errorf("Apply: %v", err)
	}
	err := c.Apply(ctx, []byte("put y"))
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "not the leader; leader is node-c" || re.Peer != "node-b" {
		t.Errorf("Apply: %v, want a RemoteError from node-b", err)
	}
	mu.Lock()
	if len(callers) != 2 || callers[0] != "node-a" {
		t.Errorf("handler saw callers %q, want node-a", callers)
	}
	mu.Unlock()

	seq, downtime, err := c.Migrate(ctx, "ns/pod/ctr", "node-c")
	if err != nil || seq != 7 || downtime != 1500*time.Millisecond {
		t.Errorf("Migrate = %d, %v, %v; want 7, 1.5s, nil", seq, downtime, err)
	}
	if _, _, err := c.Migrate(ctx, "ns/pod/ctr", "node-x"); !errors.As(err, &re) || !strings.Contains(re.Msg, "no such node") {
		t.Errorf("Migrate: %v, want a RemoteError", err)
	}

	// A node without handlers answers Unimplemented.
	d := startPeer(t, ca, "node-d", Handlers{})
	if err := d.client(t, a).Apply(ctx, nil); status.Code(errors.Unwrap(err)) != codes.Unimplemented {
		t.Errorf("Apply on a node without handler: %v, want Unimplemented", err)
	}
}

func TestToStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{errors.New("boom"), codes.Internal},
		{context.Canceled, codes.Canceled},
		{invalid("bad"), codes.InvalidArgument},
		{store.ErrNotFound, codes.NotFound},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, codes.ResourceExhausted},
		{status.Error(codes.Unavailable, "x"), codes.Unavailable},
	} {
		if got := toStatus(errors.Join(errors.New("wrapped"), tc.err)).Code(); got != tc.code {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.code)
		}
	}
}

// A peer that sends a push header and then nothing is cut off after the
// idle limit, with a refusal that says so, and leaves no file behind.
func TestStalledPushIsAbandoned(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	b := startPeer(t, ca, "node-b", Handlers{StreamIdle: 200 * time.Millisecond}, streamDone(done))
	c := b.client(t, a)
	w := mustWorkload(t, "ns/pod/ctr")
	sum := sha256.Sum256([]byte("never sent"))
	stream, err := c.conn.NewStream(context.Background(), &serviceDesc.Streams[pushStream], fullMethod("Push"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&header{Workload: w.String(), Seq: 3, SHA256: hex.EncodeToString(sum[:]), Size: 1 << 30, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&chunk{[]byte("a little")}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = recvTimeout(t, done, "the server to end the stalled push")
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "no data for") || !strings.Contains(st.Message(), "after 8 of 1073741824 bytes") {
		t.Fatalf("server ended the push with %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("abandoned after %s, want about the 200 ms idle limit", took)
	}
	if err := stream.RecvMsg(&pushReply{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("the sender got %v, want DeadlineExceeded", err)
	}
	// The import's temporary file goes once its receive fails.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var files []string
		_ = filepath.WalkDir(b.root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("files left in the store after an abandoned push: %v", files)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A peer that opens a push or fetch stream and sends nothing is cut off
// after the idle limit, naming what it did not send.
func TestSilentStreamIsAbandoned(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	for _, tc := range []struct {
		name   string
		stream int
		method string
	}{{"push", pushStream, "Push"}, {"fetch", fetchStream, "Fetch"}} {
		done := make(chan error, 1)
		b := startPeer(t, ca, "node-b", Handlers{StreamIdle: 200 * time.Millisecond}, streamDone(done))
		c := b.client(t, a)
		stream, err := c.conn.NewStream(context.Background(), &serviceDesc.Streams[tc.stream], fullMethod(tc.method))
		if err != nil {
			t.Fatal(err)
		}
		err = recvTimeout(t, done, "the server to end the silent "+tc.name)
		if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), tc.name+" from") || !strings.Contains(st.Message(), "nothing received") {
			t.Errorf("%s: server ended the silent stream with %v", tc.name, err)
		}
		_ = stream.CloseSend()
	}
}
