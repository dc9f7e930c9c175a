package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

var testWL = Workload{Namespace: "default", Pod: "counter-0", Container: "app"}

func openStore(t *testing.T, root string, k int) *Store {
	t.Helper()
	s, err := Open(root, k)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", root, k, err)
	}
	return s
}

func openWith(t *testing.T, root string, o Options) *Store {
	t.Helper()
	s, err := OpenWith(root, o)
	if err != nil {
		t.Fatalf("OpenWith(%s): %v", root, err)
	}
	return s
}

type testMode struct {
	name string
	key  *seal.Key
}

// testModes are the store's two ways of keeping archives: plaintext, and
// sealed with a fresh data key.
func testModes(t testing.TB) []testMode {
	return []testMode{{"plaintext", nil}, {"sealed", newKey(t)}}
}

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

// readArchive returns e's plaintext, read through OpenArchive.
func readArchive(t testing.TB, s *Store, e Entry) []byte {
	t.Helper()
	a, err := s.OpenArchive(e)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := io.ReadAll(a)
	if err != nil {
		t.Fatalf("read archive of %s seq %d: %v", e.Workload, e.Seq, err)
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// commitBytes commits data the way the daemon does: TempPath, let the
// "runtime" write it, Commit.
func commitBytes(t *testing.T, s *Store, w Workload, data []byte) Entry {
	t.Helper()
	e, err := commit(s, w, data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func commit(s *Store, w Workload, data []byte) (Entry, error) {
	tmp, err := s.TempPath(w)
	if err != nil {
		return Entry{}, err
	}
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return Entry{}, err
	}
	return s.Commit(w, tmp, Entry{Method: "cri", Source: "n1", Created: time.Now()})
}

func seqsOf(t *testing.T, s *Store, w Workload) []uint64 {
	t.Helper()
	es, err := s.List(w)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var seqs []uint64
	for _, e := range es {
		seqs = append(seqs, e.Seq)
	}
	return seqs
}

// checkConsistent asserts that every listed entry's archive matches its
// recorded digest and that root holds no temporary files, no sidecar without
// an archive and no archive without a sidecar.
func checkConsistent(t *testing.T, s *Store, root string) {
	t.Helper()
	ws, err := s.Workloads()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		es, err := s.List(w)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if err := s.Verify(e); err != nil {
				t.Errorf("entry %s/%d: %v", w, e.Seq, err)
			}
		}
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		if strings.HasPrefix(name, ".") {
			t.Errorf("leftover temporary file %s", p)
		}
		for _, pair := range [][2]string{{".json", ".tar"}, {".tar", ".json"}} {
			if base, ok := strings.CutSuffix(name, pair[0]); ok {
				if _, err := os.Stat(filepath.Join(filepath.Dir(p), base+pair[1])); err != nil {
					t.Errorf("%s without %s: %v", p, pair[1], err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestParseWorkload(t *testing.T) {
	long := strings.Repeat("a", 254)
	tests := []struct {
		in, errHas string
	}{
		{in: "default/counter-0/app"},
		{in: "kube-system/etcd.node-1/etcd"},
		{in: "a/b", errHas: "want namespace/pod/container"},
		{in: "a/b/c/d", errHas: "got 4 part(s)"},
		{in: "Default/p/c", errHas: `namespace "Default"`},
		{in: "ns/p_1/c", errHas: `pod "p_1" contains '_'`},
		{in: "ns/p/", errHas: `container "" is empty`},
		{in: "ns/-p/c", errHas: "must start and end"},
		{in: "ns/p./c", errHas: "must start and end"},
		{in: "ns/" + long + "/c", errHas: "254 characters long"},
		{in: "ns/" + strings.Repeat("a", 253) + "/c", errHas: "too long to store"},
	}
	for _, tt := range tests {
		w, err := ParseWorkload(tt.in)
		if tt.errHas == "" {
			if err != nil || w.String() != tt.in {
				t.Errorf("ParseWorkload(%q) = %v, %v; want round trip", tt.in, w, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.errHas) {
			t.Errorf("ParseWorkload(%.40q) error = %v; want one containing %q", tt.in, err, tt.errHas)
		}
	}
}

func TestEntryJSON(t *testing.T) {
	e := Entry{Workload: testWL, Seq: 3, Path: "/x", SHA256: "ab", Duration: time.Second, Created: time.Unix(10, 0).UTC()}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"workload":"default/counter-0/app"`, `"duration_ns":1000000000`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	if bytes.Contains(b, []byte("/x")) {
		t.Errorf("JSON %s contains the path", b)
	}
	var back Entry
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	e.Path = ""
	if back != e {
		t.Errorf("round trip: got %+v, want %+v", back, e)
	}
}

func TestCommitListLatest(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 5)
	other := Workload{Namespace: "default", Pod: "other", Container: "app"}

	if _, ok, err := s.Latest(testWL); ok || err != nil {
		t.Fatalf("Latest on empty store = %v, %v; want none", ok, err)
	}
	var data [][]byte
	for i := range 3 {
		d := bytes.Repeat([]byte{byte(i)}, 1000*(i+1))
		data = append(data, d)
		created := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
		tmp, err := s.TempPath(testWL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("TempPath %s exists: %v", tmp, err)
		}
		if !strings.HasPrefix(filepath.Base(tmp), ".") {
			t.Errorf("TempPath %s is not hidden", tmp)
		}
		if err := os.WriteFile(tmp, d, 0o600); err != nil {
			t.Fatal(err)
		}
		e, err := s.Commit(testWL, tmp, Entry{Seq: 99, Created: created, Method: "kubelet", Duration: time.Duration(i), Source: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		want := Entry{Workload: testWL, Seq: uint64(i + 1), Path: e.Path, SHA256: sum(d), Size: int64(len(d)),
			Created: created, Method: "kubelet", Duration: time.Duration(i), Source: "n1"}
		if e != want {
			t.Errorf("Commit #%d = %+v, want %+v", i, e, want)
		}
		if got, err := s.Get(testWL, e.Seq); err != nil || got != e {
			t.Errorf("Get(%d) = %+v, %v; want %+v", e.Seq, got, err, e)
		}
		if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("temp file %s still there after Commit", tmp)
		}
	}
	commitBytes(t, s, other, []byte("other"))

	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{3, 2, 1}) {
		t.Errorf("List = %v, want [3 2 1]", got)
	}
	es, _ := s.List(testWL)
	for i, e := range es {
		if b, err := os.ReadFile(e.Path); err != nil || !bytes.Equal(b, data[2-i]) {
			t.Errorf("archive %s: %v, content mismatch", e.Path, err)
		}
		if !filepath.IsAbs(e.Path) || !strings.HasPrefix(e.Path, root) {
			t.Errorf("Path %s not absolute under %s", e.Path, root)
		}
	}
	if fi, err := os.Stat(filepath.Dir(es[0].Path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("workload directory mode: %v, %v; want 0700", fi.Mode(), err)
	}
	if ws, err := s.Workloads(); err != nil || !slices.Equal(ws, []Workload{testWL, other}) {
		t.Errorf("Workloads = %v, %v", ws, err)
	}

	if e, ok, err := s.Latest(testWL); !ok || err != nil || e.Seq != 3 {
		t.Errorf("Latest = %d, %v, %v; want 3", e.Seq, ok, err)
	}
	if err := s.MarkBad(testWL, 3, "restore failed: criu exit 1"); err != nil {
		t.Fatal(err)
	}
	if e, ok, err := s.Latest(testWL); !ok || err != nil || e.Seq != 2 {
		t.Errorf("Latest after MarkBad(3) = %d, %v, %v; want 2", e.Seq, ok, err)
	}
	// Bad is persisted.
	s = openStore(t, root, 5)
	if e, err := s.Get(testWL, 3); err != nil || !e.Bad || e.BadReason != "restore failed: criu exit 1" {
		t.Errorf("after reopen Get(3) = %+v, %v; want Bad with reason", e, err)
	}
	if _, err := s.Get(testWL, 7); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(7) error = %v, want ErrNotFound", err)
	}
	if err := s.MarkBad(testWL, 7, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkBad(7) error = %v, want ErrNotFound", err)
	}
	checkConsistent(t, s, root)

	// Verify notices a damaged archive.
	e, _ := s.Get(testWL, 1)
	if err := os.WriteFile(e.Path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Verify(e)
	if err == nil || !strings.Contains(err.Error(), e.Path) || !strings.Contains(err.Error(), e.SHA256) ||
		!strings.Contains(err.Error(), sum([]byte("garbage"))) {
		t.Errorf("Verify of damaged archive: %v; want path and both digests", err)
	}

	if err := s.Remove(testWL); err != nil {
		t.Fatal(err)
	}
	if got := seqsOf(t, s, testWL); len(got) != 0 {
		t.Errorf("List after Remove = %v", got)
	}
	if ws, _ := s.Workloads(); !slices.Equal(ws, []Workload{other}) {
		t.Errorf("Workloads after Remove = %v", ws)
	}
}

func TestCommitErrors(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 3)
	commitBytes(t, s, testWL, []byte("one"))

	tests := []struct {
		name   string
		w      Workload
		meta   Entry
		noFile bool
		errHas string
	}{
		{name: "missing file", w: testWL, noFile: true, errHas: "no such file"},
		{name: "invalid workload", w: Workload{"ns", "../x", "c"}, errHas: `pod "../x"`},
		{name: "digest mismatch", w: testWL, meta: Entry{SHA256: strings.Repeat("0", 64)}, errHas: "sha256 mismatch"},
	}
	// A committed archive passed by mistake is neither moved nor removed.
	e1, _ := s.Get(testWL, 1)
	if _, err := s.Commit(testWL, e1.Path, Entry{}); err == nil || !strings.Contains(err.Error(), "not a temporary file") {
		t.Errorf("Commit of a committed archive: %v; want refusal", err)
	}
	if err := s.Verify(e1); err != nil {
		t.Error(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), "archive.tar")
			if !tt.noFile {
				if err := os.WriteFile(tmp, []byte("two"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.Commit(tt.w, tmp, tt.meta)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("Commit error = %v, want one containing %q", err, tt.errHas)
			}
			if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("tmp %s not removed after failed Commit", tmp)
			}
			if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{1}) {
				t.Errorf("List = %v, want [1]", got)
			}
			checkConsistent(t, s, root)
		})
	}
}

func TestRetention(t *testing.T) {
	tests := []struct {
		name   string
		k      int
		steps  []string // commit | bad N | reopen K | setk K | import N [pruned]
		want   []uint64
		latest uint64
	}{
		{"newest K kept", 2, []string{"commit", "commit", "commit", "commit"}, []uint64{4, 3}, 4},
		{"bad entries count toward K", 2, []string{"commit", "commit", "bad 2", "commit"}, []uint64{3, 2}, 3},
		{"newest good kept beyond K", 3, []string{"commit", "commit", "commit", "bad 2", "bad 3", "reopen 2"}, []uint64{3, 2, 1}, 1},
		{"newest good kept with K=1", 3, []string{"commit", "commit", "commit", "bad 2", "bad 3", "reopen 1"}, []uint64{3, 1}, 1},
		{"all bad: newest K only", 3, []string{"commit", "commit", "commit", "bad 1", "bad 2", "bad 3", "reopen 1"}, []uint64{3}, 0},
		{"older good import behind bad ones kept", 2, []string{"import 10", "import 11", "bad 10", "bad 11", "import 9", "import 8 pruned"}, []uint64{11, 10, 9}, 9},
		{"new commit releases older good", 2, []string{"import 10", "import 11", "bad 10", "bad 11", "import 9", "commit"}, []uint64{12, 11}, 12},
		{"SetRetention applies at next commit", 3, []string{"commit", "commit", "commit", "setk 1", "commit"}, []uint64{4}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			s := openStore(t, root, tt.k)
			for i, step := range tt.steps {
				f := strings.Fields(step)
				n := uint64(0)
				if len(f) > 1 {
					n, _ = strconv.ParseUint(f[1], 10, 64)
				}
				data := fmt.Appendf(nil, "%s step %d", tt.name, i)
				switch f[0] {
				case "commit":
					commitBytes(t, s, testWL, data)
				case "bad":
					if err := s.MarkBad(testWL, n, "test"); err != nil {
						t.Fatal(err)
					}
				case "reopen":
					s = openStore(t, root, int(n))
				case "setk":
					s.SetRetention(int(n))
				case "import":
					_, err := s.Import(context.Background(), testWL, bytes.NewReader(data), Entry{Seq: n, Method: "replica"})
					if wantPruned := len(f) == 3; wantPruned != errors.Is(err, ErrPruned) || !wantPruned && err != nil {
						t.Fatalf("%s: error %v", step, err)
					}
				default:
					t.Fatalf("bad step %q", step)
				}
			}
			if got := seqsOf(t, s, testWL); !slices.Equal(got, tt.want) {
				t.Errorf("entries = %v, want %v", got, tt.want)
			}
			e, ok, err := s.Latest(testWL)
			if err != nil || ok != (tt.latest != 0) || e.Seq != tt.latest {
				t.Errorf("Latest = %d, %v, %v; want %d", e.Seq, ok, err, tt.latest)
			}
			checkConsistent(t, s, root)
		})
	}
}

func TestSeqNeverReused(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 1)
	for range 3 {
		commitBytes(t, s, testWL, []byte("x"))
	}
	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("entries = %v, want [3]", got)
	}
	s = openStore(t, root, 1)
	if e := commitBytes(t, s, testWL, []byte("y")); e.Seq != 4 {
		t.Errorf("after prune and reopen: seq %d, want 4", e.Seq)
	}
	if err := s.Remove(testWL); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, root, 1)
	if e := commitBytes(t, s, testWL, []byte("z")); e.Seq != 5 {
		t.Errorf("after Remove and reopen: seq %d, want 5", e.Seq)
	}
	// A replica with a higher sequence number raises the mark too.
	if _, err := s.Import(context.Background(), testWL, strings.NewReader("r"), Entry{Seq: 40}); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(testWL); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, root, 1)
	if e := commitBytes(t, s, testWL, []byte("w")); e.Seq != 41 {
		t.Errorf("after import of 40, Remove and reopen: seq %d, want 41", e.Seq)
	}
}

// failReader fails the test if it is read.
type failReader struct{ t *testing.T }

func (r failReader) Read([]byte) (int, error) {
	r.t.Error("reader was read")
	return 0, io.EOF
}

func TestImport(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 10)
	ctx := context.Background()
	data := bytes.Repeat([]byte("checkpoint"), 100000)
	good := sum(data)

	e, err := s.Import(ctx, testWL, bytes.NewReader(data), Entry{SHA256: strings.ToUpper(good), Method: "replica", Source: "n2"})
	if err != nil {
		t.Fatalf("Import with matching sha256: %v", err)
	}
	if e.Seq != 1 || e.SHA256 != good || e.Size != int64(len(data)) || e.Method != "replica" || e.Source != "n2" {
		t.Errorf("Import = %+v", e)
	}

	bad := strings.Repeat("ab", 32)
	_, err = s.Import(ctx, testWL, bytes.NewReader(data[1:]), Entry{SHA256: bad})
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), sum(data[1:])) || !strings.Contains(err.Error(), testWL.String()) {
		t.Errorf("Import with mismatching sha256: error %v; want workload and both digests", err)
	}
	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{1}) {
		t.Errorf("after mismatch entries = %v, want [1]", got)
	}
	checkConsistent(t, s, root)

	// Explicit sequence numbers (replicas).
	rep, err := s.Import(ctx, testWL, bytes.NewReader(data), Entry{Seq: 7, SHA256: good})
	if err != nil || rep.Seq != 7 {
		t.Fatalf("Import seq 7 = %+v, %v", rep, err)
	}
	if again, err := s.Import(ctx, testWL, failReader{t}, Entry{Seq: 7, SHA256: good}); err != nil || again != rep {
		t.Errorf("re-Import of seq 7 with digest = %+v, %v; want existing entry without reading", again, err)
	}
	if again, err := s.Import(ctx, testWL, bytes.NewReader(data), Entry{Seq: 7}); err != nil || again != rep {
		t.Errorf("re-Import of seq 7 without digest = %+v, %v; want existing entry", again, err)
	}
	_, err = s.Import(ctx, testWL, strings.NewReader("different"), Entry{Seq: 7})
	if err == nil || !strings.Contains(err.Error(), good) || !strings.Contains(err.Error(), sum([]byte("different"))) {
		t.Errorf("Import of seq 7 with other content: %v; want error naming both digests", err)
	}
	if e := commitBytes(t, s, testWL, []byte("local")); e.Seq != 8 {
		t.Errorf("Commit after import of seq 7: seq %d, want 8", e.Seq)
	}
	if got := seqsOf(t, s, testWL); !slices.Equal(got, []uint64{8, 7, 1}) {
		t.Errorf("entries = %v, want [8 7 1]", got)
	}
	checkConsistent(t, s, root)
}

// endless is an endless stream of bytes; after calls reads it calls hook.
type endless struct {
	n     int
	after int
	hook  func()
	delay time.Duration
}

func (r *endless) Read(p []byte) (int, error) {
	r.n++
	if r.n == r.after && r.hook != nil {
		r.hook()
	}
	time.Sleep(r.delay)
	p = p[:min(len(p), 64<<10)]
	for i := range p {
		p[i] = byte(r.n + i)
	}
	return len(p), nil
}

func TestImportCancelled(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 3)
	old := commitBytes(t, s, testWL, []byte("old"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := s.Import(ctx, testWL, &endless{after: 20, hook: cancel}, Entry{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Import error = %v, want context.Canceled", err)
	}
	if es, _ := s.List(testWL); len(es) != 1 || es[0] != old {
		t.Errorf("entries after cancelled Import = %+v, want only %+v", es, old)
	}
	checkConsistent(t, s, root)
}

// copyTree copies the regular files and directories under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCrashAtEachStep snapshots the store directory at every step of a
// write (what a crash at that moment would leave on disk), then opens each
// snapshot and checks it is consistent: older entries intact, the new entry
// either fully there or absent, no leftovers, and the next sequence number
// not reused.
type state struct {
	seqs []uint64
	next uint64 // sequence number the next Commit gets
}

func TestCrashAtEachStep(t *testing.T) {
	before, after := state{[]uint64{2, 1}, 3}, state{[]uint64{3, 2}, 4}
	burnt := state{[]uint64{2, 1}, 4} // number recorded, entry not visible
	newData := []byte("the new checkpoint")
	tests := []struct {
		name string
		do   func(t *testing.T, s *Store) error
		want map[string]state // by step; must name every step taken
	}{
		{
			name: "commit",
			do: func(t *testing.T, s *Store) error {
				tmp, err := s.TempPath(testWL)
				if err != nil {
					return err
				}
				if err := os.WriteFile(tmp, newData, 0o600); err != nil {
					return err
				}
				_, err = s.Commit(testWL, tmp, Entry{Method: "cri"})
				return err
			},
			want: map[string]state{
				"staged": before, "seq-temp": before, "seq": burnt, "sidecar-temp": burnt, "sidecar": burnt,
				"renamed": after, "committed": after, "pruned-archive": after,
			},
		},
		{
			name: "import",
			do: func(t *testing.T, s *Store) error {
				_, err := s.Import(context.Background(), testWL, bytes.NewReader(newData), Entry{Method: "cri", SHA256: sum(newData)})
				return err
			},
			want: map[string]state{
				"staged": before, "seq-temp": before, "seq": burnt, "sidecar-temp": burnt, "sidecar": burnt,
				"renamed": after, "committed": after, "pruned-archive": after,
			},
		},
		{
			name: "markbad",
			do:   func(t *testing.T, s *Store) error { return s.MarkBad(testWL, 2, "test") },
			want: map[string]state{"markbad-temp": before},
		},
	}
	for _, mode := range testModes(t) {
		for _, tt := range tests {
			t.Run(mode.name+"/"+tt.name, func(t *testing.T) {
				crashSteps(t, mode.key, tt.do, tt.want, newData)
			})
		}
	}
}

// crashSteps runs do on a store with two entries, snapshotting it at every
// crash point, and checks each snapshot as TestCrashAtEachStep describes.
func crashSteps(t *testing.T, key *seal.Key, do func(*testing.T, *Store) error, want map[string]state, newData []byte) {
	root := filepath.Join(t.TempDir(), "store")
	s := openWith(t, root, Options{Retention: 2, Key: key})
	commitBytes(t, s, testWL, []byte("one"))
	commitBytes(t, s, testWL, []byte("two"))

	snaps := t.TempDir()
	var steps []string
	crashHook = func(step string) {
		steps = append(steps, step)
		copyTree(t, root, filepath.Join(snaps, step))
	}
	err := do(t, s)
	crashHook = nil
	if err != nil {
		t.Fatal(err)
	}
	for step := range want {
		if !slices.Contains(steps, step) {
			t.Errorf("step %q never reached; steps: %v", step, steps)
		}
	}
	for _, step := range steps {
		want, ok := want[step]
		if !ok {
			t.Errorf("step %q not covered by the test table", step)
			continue
		}
		t.Run(step, func(t *testing.T) {
			snap := filepath.Join(snaps, step)
			s := openWith(t, snap, Options{Retention: 2, Key: key})
			checkConsistent(t, s, snap)
			if got := seqsOf(t, s, testWL); !slices.Equal(got, want.seqs) {
				t.Errorf("entries = %v, want %v", got, want.seqs)
			}
			if e, err := s.Get(testWL, 2); err != nil || e.Bad {
				t.Errorf("entry 2 = %+v, %v; want intact and not bad", e, err)
			}
			if e, err := s.Get(testWL, 3); err == nil {
				if b := readArchive(t, s, e); !bytes.Equal(b, newData) || e.Method != "cri" || e.Sealed != (key != nil) {
					t.Errorf("entry 3 visible but wrong: %+v", e)
				}
			}
			if e := commitBytes(t, s, testWL, []byte("next")); e.Seq != want.next {
				t.Errorf("next Commit got seq %d, want %d", e.Seq, want.next)
			}
		})
	}
}

func TestOpenRemovesLeftovers(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 5)
	e1 := commitBytes(t, s, testWL, []byte("one"))
	e2 := commitBytes(t, s, testWL, []byte("two"))
	dir := filepath.Dir(e1.Path)
	leftovers := map[string]string{
		".tmp-PARTIALARCHIVE":        "half an archive",
		".tmp-PARTIALSIDECAR":        `{"seq":`,
		seqName(3, ".json"):          `{"workload":"default/counter-0/app","seq":3}`,
		seqName(4, ".tar"):           "archive without metadata",
		"../" + seqName(9, ".json"):  "not in a workload directory: left alone",
		"../not_a-workload_dir_x.tx": "left alone",
	}
	for name, content := range leftovers {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s = openStore(t, root, 5)
	for name := range leftovers {
		_, err := os.Stat(filepath.Join(dir, name))
		if strings.HasPrefix(name, "../") != (err == nil) {
			t.Errorf("%s: stat after Open: %v", name, err)
		}
	}
	if es, err := s.List(testWL); err != nil || len(es) != 2 || es[0] != e2 || es[1] != e1 {
		t.Errorf("entries after Open = %+v, %v; want the two committed ones", es, err)
	}
	if e := commitBytes(t, s, testWL, []byte("three")); e.Seq <= 2 {
		t.Errorf("next seq %d reuses a committed one", e.Seq)
	}
}

const envKillChild = "CRFAILOVERD_STORE_TEST_KILL_CHILD"

// TestKilledMidImport re-executes the test binary as a child that imports
// an endless slow stream into the store, SIGKILLs it mid-write, then
// reopens the store.
func TestKilledMidImport(t *testing.T) {
	if root := os.Getenv(envKillChild); root != "" {
		s, err := Open(root, 3)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		_, err = s.Import(context.Background(), testWL, &endless{delay: time.Millisecond}, Entry{Method: "replica"})
		fmt.Fprintln(os.Stderr, "child: Import returned:", err)
		os.Exit(3)
	}

	root := t.TempDir()
	s := openStore(t, root, 3)
	old := []Entry{commitBytes(t, s, testWL, []byte("one")), commitBytes(t, s, testWL, []byte("two"))}
	slices.Reverse(old)

	var stderr bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledMidImport$", "-test.count=1")
	cmd.Env = append(os.Environ(), envKillChild+"="+root)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	// Wait until the child has written a good part of the archive.
	dir := filepath.Dir(old[0].Path)
	var partial string
	deadline := time.Now().Add(30 * time.Second)
	for partial == "" {
		if time.Now().After(deadline) {
			t.Fatalf("child wrote no temporary archive in time; stderr:\n%s", stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("child exited early: %v; stderr:\n%s", err, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*"))
		for _, p := range tmps {
			if fi, err := os.Stat(p); err == nil && fi.Size() >= 1<<20 {
				partial = p
			}
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v; stderr:\n%s", err, stderr.String())
	}
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("partial archive %s not left behind by the kill: %v", partial, err)
	}

	s = openStore(t, root, 3)
	if es, err := s.List(testWL); err != nil || !slices.Equal(es, old) {
		t.Errorf("entries after kill = %+v, %v; want %+v", es, err, old)
	}
	if _, err := os.Stat(partial); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("partial archive %s survived Open: %v", partial, err)
	}
	checkConsistent(t, s, root)
	if e := commitBytes(t, s, testWL, []byte("three")); e.Seq != 3 {
		t.Errorf("next seq %d, want 3", e.Seq)
	}
}

// mountTmpfs mounts a tmpfs of the given size on a fresh directory, or
// skips the test.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a %s tmpfs at %s (needs root or CAP_SYS_ADMIN): %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestDiskFull(t *testing.T) {
	root := filepath.Join(mountTmpfs(t, "1m"), "store")
	s := openStore(t, root, 3)
	old := commitBytes(t, s, testWL, bytes.Repeat([]byte("o"), 64<<10))
	big := bytes.Repeat([]byte("big"), (4<<20)/3)

	checkFailed := func(t *testing.T, err error) {
		t.Helper()
		if err == nil {
			t.Fatal("no error writing 4 MiB into a 1 MiB file system")
		}
		msg := err.Error()
		if !strings.Contains(msg, "no space") || !strings.Contains(msg, testWL.String()) || !strings.Contains(msg, root) ||
			!errors.Is(err, syscall.ENOSPC) {
			t.Errorf("error %q: want ENOSPC naming the workload and a path under %s", msg, root)
		}
		if es, _ := s.List(testWL); len(es) != 1 || es[0] != old {
			t.Errorf("entries = %+v, want only %+v", es, old)
		}
		checkConsistent(t, s, root)
	}
	t.Run("import", func(t *testing.T) {
		_, err := s.Import(context.Background(), testWL, bytes.NewReader(big), Entry{})
		checkFailed(t, err)
	})
	t.Run("commit across file systems", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "archive.tar")
		if err := os.WriteFile(src, big, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := s.Commit(testWL, src, Entry{})
		checkFailed(t, err)
		if _, err := os.Stat(src); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("source %s not removed after failed Commit", src)
		}
	})
	// The space is free again.
	if e := commitBytes(t, s, testWL, []byte("small")); e.Seq <= old.Seq {
		t.Errorf("seq %d after %d", e.Seq, old.Seq)
	}
}

func TestCommitAcrossFilesystems(t *testing.T) {
	root := filepath.Join(mountTmpfs(t, "16m"), "store")
	s := openStore(t, root, 3)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB
	src := filepath.Join(t.TempDir(), "archive.tar")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := s.Commit(testWL, src, Entry{Method: "kubelet"})
	if err != nil {
		t.Fatal(err)
	}
	if e.SHA256 != sum(data) || e.Size != int64(len(data)) || !strings.HasPrefix(e.Path, root) {
		t.Errorf("entry %+v", e)
	}
	if _, err := os.Stat(src); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("source %s still there: %v", src, err)
	}
	checkConsistent(t, s, root)
}

func TestConcurrent(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, 100)
	const workers, commits = 6, 8
	var wg sync.WaitGroup
	for i := range workers {
		w := Workload{Namespace: "ns", Pod: fmt.Sprintf("pod-%d", i), Container: "c"}
		wg.Go(func() {
			for j := range commits {
				if _, err := commit(s, w, fmt.Appendf(nil, "%s %d", w, j)); err != nil {
					t.Error(err)
				}
				if _, err := s.List(w); err != nil {
					t.Error(err)
				}
			}
		})
	}
	// Several writers on one workload get distinct sequence numbers.
	var mu sync.Mutex
	var shared []uint64
	for i := range workers {
		wg.Go(func() {
			for j := range commits {
				var e Entry
				var err error
				if j%2 == 0 {
					e, err = commit(s, testWL, fmt.Appendf(nil, "%d %d", i, j))
				} else {
					e, err = s.Import(context.Background(), testWL, strings.NewReader("imported"), Entry{})
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				shared = append(shared, e.Seq)
				mu.Unlock()
				if _, err := s.Workloads(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	slices.Sort(shared)
	for i, seq := range shared {
		if seq != uint64(i+1) {
			t.Fatalf("shared workload got sequence numbers %v; want 1..%d", shared, workers*commits)
		}
	}
	ws, err := s.Workloads()
	if err != nil || len(ws) != workers+1 {
		t.Errorf("Workloads = %v, %v", ws, err)
	}
	for _, w := range ws {
		if got := seqsOf(t, s, w); len(got) != commits && w != testWL {
			t.Errorf("%s: entries %v", w, got)
		}
	}
	checkConsistent(t, s, root)
}
