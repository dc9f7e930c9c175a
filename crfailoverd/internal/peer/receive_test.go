package peer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// hostileMember is a tar member that archive.Walker refuses.
type hostileMember struct {
	hdr  tar.Header
	data string
}

// craftTar writes a valid archive (a checkpoint/ directory and a file)
// followed by extra, as archive/tar writes it: correct checksums, a proper
// end-of-archive marker.
func craftTar(t *testing.T, extra ...hostileMember) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	ms := append([]hostileMember{
		{hdr: tar.Header{Name: "checkpoint/", Typeflag: tar.TypeDir, Mode: 0o700}},
		{hdr: tar.Header{Name: "checkpoint/core-1.img", Typeflag: tar.TypeReg, Mode: 0o600}, data: strings.Repeat("c", 4000)},
	}, extra...)
	for _, m := range ms {
		h := m.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(m.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// headerFor returns a push header whose sha256 and size are data's: the
// replica is exactly what it claims to be.
func headerFor(w store.Workload, seq uint64, data []byte) header {
	sum := sha256.Sum256(data)
	return header{Workload: w.String(), Seq: seq, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Created: time.Now(), Method: "cri"}
}

// assertNothingStored checks that the store under root has no entry of w,
// no workload in its catalog, and no file at all in w's directory (no
// temporary file, no archive, no record).
func assertNothingStored(t *testing.T, st *store.Store, root string, w store.Workload) {
	t.Helper()
	assertNothingVisible(t, st, w, root)
	ws, err := st.Workloads()
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 0 {
		t.Errorf("the store's catalog lists %v, want nothing", ws)
	}
	var files []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Errorf("files in the store after a refused push: %v", files)
	}
}

// A correctly checksummed replica whose members archive.Walker refuses is
// refused by the push, naming the member, before the store commits it.
func TestPushRefusesHostileArchive(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	b := startPeer(t, ca, "node-b", Handlers{}, streamDone(done))
	c := b.client(t, a)
	w := mustWorkload(t, "ns/pod/ctr")

	// A sparse member whose 512 bytes of data would expand to 1 GiB.
	var sparse bytes.Buffer
	tw := tar.NewWriter(&sparse)
	tw.WriteHeader(&tar.Header{Name: "checkpoint/", Typeflag: tar.TypeDir, Mode: 0o700})
	tw.Flush() // the rest is written by hand: archive/tar writes no sparse files
	pax := "GNU.sparse.major=1\nGNU.sparse.minor=0\nGNU.sparse.name=checkpoint/pages-1.img\nGNU.sparse.realsize=1073741824\n"
	sparseTar := append(sparse.Bytes(), paxBlock(t, pax)...)
	sparseMap := append([]byte("1\n1073741823\n1\n"), make([]byte, 512-15)...)
	sparseTar = append(sparseTar, regBlock(t, "GNUSparseFile.0/pages-1.img", append(sparseMap, 'x'))...)
	sparseTar = append(sparseTar, make([]byte, 1024)...)

	for _, tc := range []struct {
		name   string
		data   []byte
		code   codes.Code
		member string
		want   string
	}{
		{"dotdot", craftTar(t, hostileMember{hdr: tar.Header{Name: "../x", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"}),
			codes.InvalidArgument, "../x", `unsafe member name: contains ".."`},
		{"symlink", craftTar(t, hostileMember{hdr: tar.Header{Name: "checkpoint/pages-1.img", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}}),
			codes.InvalidArgument, "checkpoint/pages-1.img", `symbolic link to "/etc/shadow"`},
		{"device", craftTar(t, hostileMember{hdr: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8}}),
			codes.InvalidArgument, "dev/sda", "block device"},
		{"sparse bomb", sparseTar, codes.InvalidArgument, "checkpoint/pages-1.img", "sparse file"},
		{"trailing junk", append(craftTar(t), "junk"...), codes.InvalidArgument, "", "unexpected data after the end of the tar archive"},
		{"not a tar", bytes.Repeat([]byte("checkpoint "), 1000), codes.InvalidArgument, "", "not a tar archive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := headerFor(w, 3, tc.data)
			err := c.push(context.Background(), h, bytes.NewReader(tc.data), nil)
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) || !strings.Contains(st.Message(), "archive refused") {
				t.Errorf("push: %v; want %v, archive refused, %q", err, tc.code, tc.want)
			}
			if tc.member != "" && !strings.Contains(st.Message(), fmt.Sprintf("member %q", tc.member)) {
				t.Errorf("push: %v does not name member %q", err, tc.member)
			}
			if !strings.Contains(st.Message(), "push ns/pod/ctr seq 3 from node-a") {
				t.Errorf("push: %v does not name the workload, seq and peer", err)
			}
			if herr := recvTimeout(t, done, "server handler"); herr == nil {
				t.Error("server handler succeeded")
			}
			assertNothingStored(t, b.store, b.root, w)
		})
	}

	// The same push with a good archive is stored: the refusals above were
	// the members'.
	good := craftTar(t)
	if err := c.push(context.Background(), headerFor(w, 3, good), bytes.NewReader(good), nil); err != nil {
		t.Fatalf("push of a good archive: %v", err)
	}
	<-done
	if _, err := b.store.Get(w, 3); err != nil {
		t.Errorf("good archive not stored: %v", err)
	}
}

// paxBlock returns a PAX extended header entry ('x') with the given
// records ("key=value" lines).
func paxBlock(t *testing.T, records string) []byte {
	t.Helper()
	var data []byte
	for _, line := range strings.Split(strings.TrimSuffix(records, "\n"), "\n") {
		rec := " " + line + "\n"
		n := len(rec) + 1
		for n != len(rec)+len(fmt.Sprint(n)) {
			n++
		}
		data = append(data, fmt.Sprintf("%d%s", n, rec)...)
	}
	return rawEntry(t, "PaxHeaders/x", tar.TypeXHeader, data)
}

// regBlock returns a regular file entry written by hand (archive/tar would
// refuse to write it after a sparse PAX header).
func regBlock(t *testing.T, name string, data []byte) []byte {
	return rawEntry(t, name, tar.TypeReg, data)
}

// rawEntry returns a USTAR header block for name and data, then data
// padded to whole blocks.
func rawEntry(t *testing.T, name string, typ byte, data []byte) []byte {
	t.Helper()
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", len(data)))
	copy(b[136:148], "00000000000\x00")
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return append(b, append(data, make([]byte, (512-len(data)%512)%512)...)...)
}

// Sizes: a header announcing 1 EiB is refused before any chunk is read; a
// member announcing more than the limits is refused from its header; a
// stream longer than announced is cut off, naming both sizes; a shorter
// one is a truncation.
func TestPushRefusesSizes(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	root := t.TempDir()
	const limit = 1 << 20
	st, err := store.OpenWith(root, store.Options{Retention: 10, Limits: store.Limits{MaxArchiveBytes: limit}})
	if err != nil {
		t.Fatal(err)
	}
	b := startPeer(t, ca, "node-b", Handlers{Store: st}, streamDone(done))
	c := b.client(t, a)
	w := mustWorkload(t, "ns/pod/ctr")
	good := craftTar(t)

	// 1 EiB, with the store's limit and with the archive default.
	for _, tc := range []struct {
		name  string
		peer  *testPeer
		root  string
		limit int64
	}{
		{"store limit", b, root, limit},
		{"archive default", startPeer(t, ca, "node-c", Handlers{}, streamDone(done)), "", archive.DefaultMaxBytes},
	} {
		h := headerFor(w, 3, good)
		h.Size = 1 << 60
		err := rawPush(context.Background(), tc.peer.client(t, a), &h, &chunk{good})
		want := fmt.Sprintf("announced size %d bytes is above the limit of %d bytes", int64(1)<<60, tc.limit)
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), want) {
			t.Errorf("%s: 1 EiB push: %v, want ResourceExhausted and %q", tc.name, err, want)
		}
		recvTimeout(t, done, "server handler")
		r := tc.root
		if r == "" {
			r = tc.peer.root
		}
		assertNothingStored(t, tc.peer.store, r, w)
	}

	// A member whose header announces more than the archive may hold, in
	// a stream of a few KiB whose sha256 is right.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "checkpoint/pages-1.img", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1 << 30})
	tw.Write(bytes.Repeat([]byte{'p'}, 2048)) // and then the stream ends
	big := buf.Bytes()
	err = c.push(context.Background(), headerFor(w, 3, big), bytes.NewReader(big), nil)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted ||
		!strings.Contains(st.Message(), `member "checkpoint/pages-1.img": too large: 1073741824 bytes, which bring the archive's members to 1073741824 bytes, above the limit of 1048576 bytes per archive`) {
		t.Errorf("push of a member of 1 GiB: %v, want ResourceExhausted naming the member, its size and the limit", err)
	}
	recvTimeout(t, done, "server handler")
	assertNothingStored(t, st, root, w)

	// The per-member limit (store.max_member_bytes), a default of the
	// archive package.
	member, total := archive.DefaultLimits()
	archive.SetDefaultLimits(1000, 0)
	t.Cleanup(func() { archive.SetDefaultLimits(member, total) })
	err = c.push(context.Background(), headerFor(w, 3, good), bytes.NewReader(good), nil)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted ||
		!strings.Contains(st.Message(), `member "checkpoint/core-1.img": too large: 4000 bytes, above the limit of 1000 bytes per member`) {
		t.Errorf("push of a member above max_member_bytes: %v", err)
	}
	recvTimeout(t, done, "server handler")
	assertNothingStored(t, st, root, w)
	archive.SetDefaultLimits(member, total)

	// More bytes than announced: cut off at the chunk that passes it.
	h := headerFor(w, 3, good)
	h.Size -= 1000
	err = rawPush(context.Background(), c, &h, &chunk{good})
	want := fmt.Sprintf("more than the announced %d bytes: %d bytes with this chunk: cut off", h.Size, len(good))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), want) {
		t.Errorf("longer push: %v, want InvalidArgument and %q", err, want)
	}
	recvTimeout(t, done, "server handler")
	assertNothingStored(t, st, root, w)

	// Fewer: a truncation.
	h = headerFor(w, 3, good)
	err = rawPush(context.Background(), c, &h, &chunk{good[:3000]})
	want = fmt.Sprintf("truncated: stream ended after 3000 of the %d bytes announced", len(good))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), want) {
		t.Errorf("shorter push: %v, want InvalidArgument and %q", err, want)
	}
	recvTimeout(t, done, "server handler")
	assertNothingStored(t, st, root, w)
}

// A fetched archive is walked like a pushed one: a hostile archive that a
// holder serves is not committed to the fetching store.
func TestFetchRefusesHostileArchive(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	b := startPeer(t, ca, "node-b", Handlers{})
	w := mustWorkload(t, "ns/pod/ctr")
	bad := craftTar(t, hostileMember{hdr: tar.Header{Name: "checkpoint/../../etc/cron.d/x", Typeflag: tar.TypeReg, Mode: 0o644}, data: "* * * * * root sh"})
	// The holder's store takes it as given (it does not walk).
	e, err := b.store.Import(context.Background(), w, bytes.NewReader(bad), store.Entry{Seq: 5, Source: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	local, err := store.Open(root, 10)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.client(t, a).Fetch(context.Background(), local, w, e.Seq, Expect{})
	if err == nil || !strings.Contains(err.Error(), `archive refused: member "checkpoint/../../etc/cron.d/x": unsafe member name`) {
		t.Errorf("Fetch of a hostile archive: %v", err)
	}
	assertNothingStored(t, local, root, w)

	// A header announcing more than the local store takes is refused
	// before a chunk is read.
	root2 := t.TempDir()
	small, err := store.OpenWith(root2, store.Options{Retention: 10, Limits: store.Limits{MaxArchiveBytes: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	good := addEntry(t, b.store, "ns/pod/other", 100_000)
	_, err = b.client(t, a).Fetch(context.Background(), small, good.Workload, good.Seq, Expect{})
	if !errors.As(err, new(tooMuch)) || toStatus(err).Code() != codes.ResourceExhausted ||
		!strings.Contains(err.Error(), fmt.Sprintf("announced size %d bytes is above the limit of 4096 bytes", good.Size)) {
		t.Errorf("Fetch above the local limit: %v", err)
	}
	assertNothingStored(t, small, root2, good.Workload)
}

// One peer may have at most MaxPushesPerPeer pushes in progress; others
// are refused naming it, other peers are not affected, and a slot is given
// back when a push ends.
func TestPushesPerPeerBounded(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	other := ca.nodeTLS(t, "node-c")
	done := make(chan error, 10)
	b := startPeer(t, ca, "node-b", Handlers{MaxPushesPerPeer: 2}, streamDone(done))
	c := b.client(t, a)
	good := craftTar(t)

	// Two pushes that send a header and a chunk, then wait.
	var cancels []context.CancelFunc
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cancels = append(cancels, cancel)
		stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[pushStream], fullMethod("Push"))
		if err != nil {
			t.Fatal(err)
		}
		h := headerFor(mustWorkload(t, fmt.Sprintf("ns/pod/ctr%d", i)), 3, good)
		if err := stream.SendMsg(&h); err != nil {
			t.Fatal(err)
		}
		if err := stream.SendMsg(&chunk{good[:1024]}); err != nil {
			t.Fatal(err)
		}
	}
	// Both hold their slot once their imports write a temporary file.
	waitFor(t, "two imports in progress", func() bool { return len(tempFiles(b.root)) == 2 })

	w := mustWorkload(t, "ns/pod/third")
	err := c.push(context.Background(), headerFor(w, 3, good), bytes.NewReader(good), nil)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted ||
		!strings.Contains(st.Message(), "push ns/pod/third seq 3 from node-a: node-a already has 2 pushes in progress") {
		t.Errorf("third push from node-a: %v, want ResourceExhausted naming node-a and the limit", err)
	}
	recvTimeout(t, done, "server handler")
	if _, err := b.store.Get(w, 3); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused push stored: %v", err)
	}

	// Another peer is not held back by node-a's pushes.
	if err := b.client(t, other).push(context.Background(), headerFor(w, 3, good), bytes.NewReader(good), nil); err != nil {
		t.Errorf("push from node-c: %v", err)
	}
	recvTimeout(t, done, "server handler")

	// Ending one of node-a's pushes gives its slot back.
	cancels[0]()
	recvTimeout(t, done, "the cancelled push's handler")
	w2 := mustWorkload(t, "ns/pod/fourth")
	waitFor(t, "a slot for node-a", func() bool {
		err := c.push(context.Background(), headerFor(w2, 3, good), bytes.NewReader(good), nil)
		recvTimeout(t, done, "server handler")
		return err == nil
	})
}

// tempFiles lists the store's temporary files under root.
func tempFiles(root string) []string {
	var files []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			files = append(files, p)
		}
		return nil
	})
	return files
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// walkingReader passes the bytes of a good archive through unchanged and
// ends with io.EOF; for a refused one it returns the walk's error instead
// of io.EOF, even when the fault is only visible at the very end.
func TestWalkingReader(t *testing.T) {
	good := craftTar(t)
	v := newWalkingReader(bytes.NewReader(good), archive.Options{})
	got, err := io.ReadAll(v)
	v.Close()
	if err != nil || !bytes.Equal(got, good) {
		t.Errorf("good archive: %d bytes, %v; want its %d bytes and no error", len(got), err, len(good))
	}
	for _, bad := range [][]byte{append(craftTar(t), 1), good[:len(good)-512]} {
		v := newWalkingReader(bytes.NewReader(bad), archive.Options{})
		_, err := io.ReadAll(v)
		v.Close()
		if err == nil || !isBadRequest(err) || !strings.Contains(err.Error(), "archive refused") {
			t.Errorf("archive of %d bytes: %v, want the walk's refusal", len(bad), err)
		}
	}
	// An import that stops reading ends the walk: Close returns.
	v = newWalkingReader(bytes.NewReader(good), archive.Options{})
	if _, err := v.Read(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { v.Close(); close(closed) }()
	recvTimeout(t, closed, "Close of an unfinished walk")
}

// A client without a store cannot send a sealed archive (it would send
// the ciphertext, which the receiver's sha256 check refuses at the end);
// it says so before opening a stream. A nil store is no store.
func TestPushSealedNeedsStore(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithArchives((*store.Store)(nil))}} {
		c, err := Dial("node-b", "127.0.0.1:1", newCA(t, "ca").nodeTLS(t, "node-a"), opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		e := store.Entry{Workload: mustWorkload(t, "ns/pod/ctr"), Seq: 3, Sealed: true, Path: "/nonexistent"}
		if err := c.Push(context.Background(), e, nil); err == nil || !strings.Contains(err.Error(), "sealed and this client has no store") {
			t.Errorf("Push of a sealed entry without a store: %v", err)
		}
	}
}

// BenchmarkWalkingReader measures what walking a received archive while
// it streams costs, against passing it through unwalked.
func BenchmarkWalkingReader(b *testing.B) {
	data := tarOf(b, 64<<20)
	for _, walk := range []bool{false, true} {
		b.Run(fmt.Sprintf("walk=%v", walk), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			buf := make([]byte, 1<<20)
			for b.Loop() {
				var r io.Reader = &chunkedReader{data: data, n: chunkSize}
				var v *walkingReader
				if walk {
					v = newWalkingReader(r, archive.Options{})
					r = v
				}
				if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
					b.Fatal(err)
				}
				if v != nil {
					v.Close()
				}
			}
		})
	}
}

// chunkedReader yields data n bytes at a time, as chunkReader does.
type chunkedReader struct {
	data []byte
	n    int
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.data)
	c.data = c.data[k:]
	return k, nil
}
