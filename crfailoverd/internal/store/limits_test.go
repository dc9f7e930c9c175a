package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const kib, mib = 1 << 10, 1 << 20

// replicaMeta is what a peer's push announces for data.
func replicaMeta(seq uint64, data []byte) Entry {
	return Entry{Seq: seq, SHA256: sum(data), Size: int64(len(data)), Method: "kubelet", Source: "n2", Created: time.Now()}
}

// wantQuota asserts err is a *QuotaError for limit, naming the workload,
// the size and the limit's value in its message.
func wantQuota(t *testing.T, err error, limit string, w Workload, size, limitMax int64) *QuotaError {
	t.Helper()
	var qe *QuotaError
	if !errors.Is(err, ErrQuota) || !errors.As(err, &qe) {
		t.Fatalf("error %v; want a *QuotaError (ErrQuota) for %s", err, limit)
	}
	msg := err.Error()
	if qe.Limit != limit || qe.Workload != w || qe.Max != limitMax {
		t.Errorf("QuotaError %+v; want limit %s, workload %s, max %d", qe, limit, w, limitMax)
	}
	for _, s := range []string{w.String(), "store." + limit, strconv.FormatInt(limitMax, 10)} {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not name %q", msg, s)
		}
	}
	if size >= 0 && (qe.Size != size || !strings.Contains(msg, strconv.FormatInt(size, 10))) {
		t.Errorf("error %q (size %d): want size %d named", msg, qe.Size, size)
	}
	return qe
}

func TestImportWorkloadQuota(t *testing.T) {
	for _, mode := range testModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			s := openWith(t, root, Options{Retention: 5, Key: mode.key, Node: "n1", Limits: Limits{WorkloadQuota: mib}})
			ctx := context.Background()
			a := archiveBytes(600 * kib)
			if _, err := s.Import(ctx, testWL, bytes.NewReader(a), replicaMeta(1, a)); err != nil {
				t.Fatal(err)
			}
			b := archiveBytes(600 * kib)
			_, err := s.Import(ctx, testWL, failReader{t}, replicaMeta(2, b))
			qe := wantQuota(t, err, "workload_quota", testWL, 600*kib, mib)
			if qe.Used != 600*kib || qe.Seq != 2 || !strings.Contains(err.Error(), "seq 2") {
				t.Errorf("QuotaError %+v (%v); want 614400 bytes used and seq 2 named", qe, err)
			}
			if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{1}) {
				t.Errorf("entries after the refusal: %v, want [1]", got)
			}
			checkConsistent(t, s, root)

			// Another workload has its own quota.
			other := Workload{Namespace: "default", Pod: "other", Container: "app"}
			if _, err := s.Import(ctx, other, bytes.NewReader(b), replicaMeta(1, b)); err != nil {
				t.Errorf("import of another workload's replica: %v", err)
			}
			// Local checkpoints are not replicas: no quota.
			big := archiveBytes(2 * mib)
			if _, err := commit(s, testWL, big); err != nil {
				t.Errorf("local Commit of 2 MiB over a 1 MiB replica quota: %v", err)
			}
			// An unannounced stream is cut at the quota.
			r := &endless{}
			_, err = s.Import(ctx, testWL, r, Entry{Seq: 3, Source: "n2"})
			wantQuota(t, err, "workload_quota", testWL, -1, mib)
			if read := int64(r.n) * 64 * kib; read > mib {
				t.Errorf("read %d bytes of an unannounced stream before cutting it at a quota with %d bytes left", read, mib-600*kib)
			}
			checkConsistent(t, s, root)
			// Reopened, the store still counts the replicas it holds.
			s = openWith(t, root, Options{Retention: 5, Key: mode.key, Node: "n1", Limits: Limits{WorkloadQuota: mib}})
			_, err = s.Import(ctx, testWL, failReader{t}, replicaMeta(4, b))
			wantQuota(t, err, "workload_quota", testWL, 600*kib, mib)
		})
	}
}

func TestImportNodeQuota(t *testing.T) {
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 5, Node: "n1", Limits: Limits{WorkloadQuota: mib, NodeQuota: mib}})
	ctx := context.Background()
	a := archiveBytes(600 * kib)
	if _, err := s.Import(ctx, testWL, bytes.NewReader(a), replicaMeta(1, a)); err != nil {
		t.Fatal(err)
	}
	other := Workload{Namespace: "default", Pod: "other", Container: "app"}
	_, err := s.Import(ctx, other, failReader{t}, replicaMeta(1, a))
	qe := wantQuota(t, err, "node_quota", other, 600*kib, mib)
	if qe.Used != 600*kib {
		t.Errorf("node_quota used %d, want the other workload's %d", qe.Used, 600*kib)
	}
	// Removing the first workload's replicas frees the node quota.
	if err := s.Remove(testWL); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, other, bytes.NewReader(a), replicaMeta(1, a)); err != nil {
		t.Errorf("import after the other workload was removed: %v", err)
	}
}

func TestMaxArchiveBytes(t *testing.T) {
	for _, mode := range testModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			root := t.TempDir()
			s := openWith(t, root, Options{Retention: 5, Key: mode.key, Node: "n1", Limits: Limits{MaxArchiveBytes: mib}})
			ctx := context.Background()
			big := archiveBytes(mib + 1)

			tmp, err := s.TempPath(testWL)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(tmp, big, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = s.Commit(testWL, tmp, Entry{Method: "cri", Source: "n1"})
			wantQuota(t, err, "max_archive_bytes", testWL, mib+1, mib)
			if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("refused Commit left %s: %v", tmp, err)
			}
			_, err = s.Import(ctx, testWL, failReader{t}, replicaMeta(1, big))
			wantQuota(t, err, "max_archive_bytes", testWL, mib+1, mib)
			_, err = s.Import(ctx, testWL, &endless{}, Entry{Seq: 2, Source: "n2"})
			wantQuota(t, err, "max_archive_bytes", testWL, -1, mib)
			if es, _ := s.List(testWL); len(es) != 0 {
				t.Errorf("entries after refusals: %+v", es)
			}
			ok := archiveBytes(mib)
			if _, err := s.Import(ctx, testWL, bytes.NewReader(ok), replicaMeta(3, ok)); err != nil {
				t.Errorf("import of exactly max_archive_bytes: %v", err)
			}
			checkConsistent(t, s, root)
		})
	}
}

func TestImportAnnouncedSize(t *testing.T) {
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 5, Node: "n1"})
	ctx := context.Background()
	data := archiveBytes(5000)
	meta := replicaMeta(1, data)
	meta.Size = 1000
	_, err := s.Import(ctx, testWL, bytes.NewReader(data), meta)
	if err == nil || !strings.Contains(err.Error(), "longer than the 1000 bytes announced") || !strings.Contains(err.Error(), testWL.String()) {
		t.Errorf("stream longer than announced: %v", err)
	}
	meta.Size = 9000
	_, err = s.Import(ctx, testWL, bytes.NewReader(data), meta)
	if err == nil || !strings.Contains(err.Error(), "ended after 5000 bytes, 9000 were announced") {
		t.Errorf("stream shorter than announced: %v", err)
	}
	meta.Size = -1
	if _, err := s.Import(ctx, testWL, failReader{t}, meta); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("negative announced size: %v", err)
	}
	if es, _ := s.List(testWL); len(es) != 0 {
		t.Errorf("entries after refusals: %+v", es)
	}
	checkConsistent(t, s, root)
}

// TestImportReservation: an import in progress holds its announced size, so
// a second one that would fit only without it is refused.
func TestImportReservation(t *testing.T) {
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 5, Node: "n1", Limits: Limits{WorkloadQuota: mib}})
	ctx := context.Background()
	a := archiveBytes(600 * kib)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.Import(ctx, testWL, pr, replicaMeta(1, a))
		done <- err
	}()
	if _, err := pw.Write(a[:100*kib]); err != nil { // returns once the import has read it
		t.Fatal(err)
	}
	b := archiveBytes(600 * kib)
	_, err := s.Import(ctx, testWL, failReader{t}, replicaMeta(2, b))
	qe := wantQuota(t, err, "workload_quota", testWL, 600*kib, mib)
	if qe.Used != 600*kib {
		t.Errorf("used %d, want the first import's reservation %d", qe.Used, 600*kib)
	}
	if _, err := pw.Write(a[100*kib:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("the first import: %v", err)
	}
	// A failed import gives its reservation back.
	pr, pw = io.Pipe()
	go func() {
		_, err := s.Import(ctx, testWL, pr, replicaMeta(3, b))
		done <- err
	}()
	pw.CloseWithError(errors.New("peer went away"))
	if err := <-done; err == nil {
		t.Fatal("import of a broken stream succeeded")
	}
	s.mu.Lock()
	n := len(s.pending)
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("%d reservations left after the imports ended", n)
	}
	c := archiveBytes(400 * kib)
	if _, err := s.Import(ctx, testWL, bytes.NewReader(c), replicaMeta(4, c)); err != nil {
		t.Errorf("import that fits beside the committed replica: %v", err)
	}
	checkConsistent(t, s, root)
}

// TestMinFreeWhileStreaming: the file system fills up (say, with local
// checkpoints) while an announced import streams; it is cut at the next
// check. statfs is faked, so this runs without root.
func TestMinFreeWhileStreaming(t *testing.T) {
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 5, Node: "n1", Limits: Limits{MinFree: 100 * mib}})
	free := int64(200 * mib)
	calls := 0
	old := statfs
	statfs = func(string) (int64, error) { calls++; return free, nil }
	defer func() { statfs = old }()
	ctx := context.Background()

	// Announced larger than free less min_free: refused before reading.
	big := Entry{Seq: 1, SHA256: strings.Repeat("ab", 32), Size: 150 * mib, Source: "n2"}
	_, err := s.Import(ctx, testWL, failReader{t}, big)
	qe := wantQuota(t, err, "min_free", testWL, 150*mib, 100*mib)
	if qe.Used != 200*mib {
		t.Errorf("min_free refusal reports %d free, want %d", qe.Used, 200*mib)
	}
	// Fits at the start; after 20 MiB the disk has 105 MiB free, less
	// than min_free and the 8 MiB still to come at the check at 32 MiB.
	data := bytes.Repeat([]byte("d"), 40*mib)
	hook := &endless{}
	r := io.TeeReader(bytes.NewReader(data), writerFunc(func(p []byte) {
		hook.n += len(p)
		if hook.n >= 20*mib {
			free = 105 * mib
		}
	}))
	_, err = s.Import(ctx, testWL, r, replicaMeta(2, data))
	wantQuota(t, err, "min_free", testWL, 40*mib, 100*mib)
	if hook.n > 2*freeCheckEvery+mib {
		t.Errorf("read %d of %d bytes before cutting the stream", hook.n, len(data))
	}
	if calls < 2 {
		t.Errorf("statfs called %d times; want a check at the start and while streaming", calls)
	}
	// Local checkpoints are not held to min_free.
	free = 0
	if _, err := commit(s, testWL, []byte("local")); err != nil {
		t.Errorf("local Commit with no free space reported: %v", err)
	}
	checkConsistent(t, s, root)
}

type writerFunc func([]byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// TestMinFreeTmpfs: the real file system, a 16 MiB tmpfs (root only).
func TestMinFreeTmpfs(t *testing.T) {
	root := filepath.Join(mountTmpfs(t, "16m"), "store")
	o := Options{Retention: 5, Node: "n1", Key: newKey(t), Limits: Limits{MinFree: 10 * mib}}
	s := openWith(t, root, o)
	ctx := context.Background()
	small := archiveBytes(2 * mib)
	if _, err := s.Import(ctx, testWL, bytes.NewReader(small), replicaMeta(1, small)); err != nil {
		t.Fatalf("2 MiB into 16 MiB with 10 MiB kept free: %v", err)
	}
	big := archiveBytes(5 * mib)
	_, err := s.Import(ctx, testWL, failReader{t}, replicaMeta(2, big))
	wantQuota(t, err, "min_free", testWL, 5*mib, 10*mib)
	_, err = s.Import(ctx, testWL, &endless{}, Entry{Seq: 3, Source: "n2"})
	wantQuota(t, err, "min_free", testWL, -1, 10*mib)
	checkConsistent(t, s, root)
	free, err := statfs(root)
	if err != nil {
		t.Fatal(err)
	}
	if free < o.Limits.MinFree-64*kib { // a sealed chunk of slack
		t.Errorf("%d bytes free after the refused imports, want at least min_free %d", free, o.Limits.MinFree)
	}
}

func TestSeqLimits(t *testing.T) {
	ctx := context.Background()
	data := []byte("replica")
	for _, seq := range []uint64{MaxSeq + 1, 1<<64 - 1} {
		s := openWith(t, t.TempDir(), Options{Retention: 3, Node: "n1"})
		_, err := s.Import(ctx, testWL, failReader{t}, replicaMeta(seq, data))
		if !errors.Is(err, ErrSeq) || !strings.Contains(err.Error(), strconv.FormatUint(seq, 10)) || !strings.Contains(err.Error(), testWL.String()) {
			t.Errorf("Import seq %d: %v; want ErrSeq naming the workload and the number", seq, err)
		}
		if es, _ := s.List(testWL); len(es) != 0 {
			t.Errorf("entries after refusing seq %d: %+v", seq, es)
		}
	}

	// The largest number is accepted; after it, no next one (no wrap).
	root := t.TempDir()
	s := openWith(t, root, Options{Retention: 3, Node: "n1"})
	if _, err := s.Import(ctx, testWL, bytes.NewReader(data), replicaMeta(MaxSeq, data)); err != nil {
		t.Fatalf("Import seq MaxSeq: %v", err)
	}
	_, err := commit(s, testWL, []byte("local"))
	if !errors.Is(err, ErrSeq) || !strings.Contains(err.Error(), strconv.FormatUint(MaxSeq, 10)) {
		t.Errorf("Commit after seq MaxSeq: %v; want ErrSeq naming %d", err, uint64(MaxSeq))
	}
	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{MaxSeq}) {
		t.Errorf("entries = %v, want [MaxSeq]", got)
	}
	checkConsistent(t, s, root)

	// A store written before the cap, with a high-water mark of 2^64-1.
	root = t.TempDir()
	s = openWith(t, root, Options{Retention: 3, Node: "n1"})
	commitBytes(t, s, testWL, []byte("one"))
	if err := os.WriteFile(filepath.Join(s.dir(testWL), seqFile), []byte("18446744073709551615\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = commit(s, testWL, []byte("two"))
	if !errors.Is(err, ErrSeq) || !strings.Contains(err.Error(), "18446744073709551615") {
		t.Errorf("Commit after a high-water mark of 2^64-1: %v; want ErrSeq, not a wrap to 0", err)
	}
	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{1}) {
		t.Errorf("entries = %v, want [1]", got)
	}
}

// TestFailedSealLeavesNoPlaintext: a checkpoint written by the runtime
// outside the store (kubelet's checkpoints directory) that cannot be sealed
// for want of space leaves no plaintext copy in the store, nor the
// runtime's file.
func TestFailedSealLeavesNoPlaintext(t *testing.T) {
	fs := mountTmpfs(t, "16m")
	root := filepath.Join(fs, "store")
	s := openWith(t, root, Options{Retention: 3, Node: "n1", Key: newKey(t)})
	src := filepath.Join(fs, "kubelet", "checkpoint.tar")
	if err := os.MkdirAll(filepath.Dir(src), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, archiveBytes(10*mib), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := s.Commit(testWL, src, Entry{Method: "kubelet"})
	if err == nil {
		t.Fatal("sealing 10 MiB next to its 10 MiB plaintext on a 16 MiB tmpfs succeeded")
	}
	t.Logf("refused: %v", err)
	var left []string
	_ = filepath.WalkDir(fs, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	for _, p := range left {
		if strings.Contains(filepath.Base(p), tmpPrefix) || p == src {
			t.Errorf("left after the failed seal: %s", p)
		}
	}
}
