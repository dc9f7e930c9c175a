package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// testSpec is the spec.dump of an unprivileged container: its own
// namespaces, the runtime's default capabilities and standard mounts.
func testSpec() *specs.Spec {
	caps := []string{"CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Process: &specs.Process{Args: []string{"/counter"}, Cwd: "/", Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/hosts"}},
		Linux:       &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}, {Type: "network"}}},
		Annotations: map[string]string{"io.kubernetes.cri.sandbox-id": "abc", "io.kubernetes.cri.container-type": "container"},
	}
}

// privilegedSpec is what a hostile archive asks for: every capability
// that matters and the node's root file system at /host.
func privilegedSpec() *specs.Spec {
	s := testSpec()
	s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
	return s
}

// writeTestMetadata writes spec.dump and config.dump into dir.
func writeTestMetadata(dir string, spec *specs.Spec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "spec.dump"), b, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.dump"), []byte(`{"rootfsImageName":"localhost:5000/counter:latest"}`), 0o600)
}

// writeTestArchive writes a container checkpoint archive at path: its
// config.dump, spec.dump and a checkpoint/ directory whose pages say label.
func writeTestArchive(path string, spec *specs.Spec, label string) error {
	sb, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		if b == nil {
			_ = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o700})
			return
		}
		_ = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(b))})
		_, _ = tw.Write(b)
	}
	add("config.dump", []byte(`{"rootfsImageName":"localhost:5000/counter:latest"}`))
	add("spec.dump", sb)
	add("checkpoint/", nil)
	add("checkpoint/pages-1.img", []byte(label))
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

// recorder plays the cluster for an agent: it records every reported
// checkpoint in the view it publishes (as the controller does from the
// Raft state), except that a record of tamper is given another sha256 (as
// when the cluster recorded another archive under that number), and keeps
// the bad-copy reports.
type recorder struct {
	board *ownership.Board
	mu    sync.Mutex
	recs  []ownership.Record // newest first
	bad   []ownership.Report
	// tamperFrom: records of this seq and above get a planted sha256 (0: none).
	tamperFrom uint64
	// frozen: the cluster records no more checkpoints (cut off from the
	// quorum).
	frozen bool
}

const plantedSHA = "0000000000000000000000000000000000000000000000000000000000000bad"

func newRecorder(local bool) *recorder {
	r := &recorder{board: ownership.NewBoard("n1")}
	r.publishLocked(local)
	return r
}

func (r *recorder) publishLocked(local bool) {
	recs := make([]ownership.Record, len(r.recs))
	for i, rec := range r.recs {
		if r.tamperFrom > 0 && rec.Seq >= r.tamperFrom {
			rec.SHA256 = plantedSHA
		}
		recs[i] = rec
	}
	r.board.Publish(&ownership.View{Node: "n1", Connected: true, LocalRestore: local,
		Workloads: map[string]ownership.Entry{wl.String(): {Owner: "n1", Epoch: 1, Status: "running", Checkpoints: recs}}})
}

// run reads the agent's reports until ctx ends.
func (r *recorder) run(ctx context.Context, a *Agent) {
	for {
		select {
		case <-ctx.Done():
			return
		case rep := <-a.Reports():
			r.mu.Lock()
			switch rep.Kind {
			case ownership.Checkpointed:
				if r.frozen {
					break
				}
				r.recs = append([]ownership.Record{{Seq: rep.Entry.Seq, SHA256: rep.Entry.SHA256, Size: rep.Entry.Size}}, r.recs...)
				r.publishLocked(true)
			case ownership.BadCopy:
				r.bad = append(r.bad, rep)
			}
			r.mu.Unlock()
		}
	}
}

// tamper plants another sha256 in the records of the newest recorded
// checkpoint and every later one, and returns that checkpoint's seq.
func (r *recorder) tamper() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tamperFrom = r.recs[0].Seq
	r.publishLocked(true)
	return r.tamperFrom
}

func (r *recorder) recorded() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.recs) }

func (r *recorder) badReports() []ownership.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ownership.Report(nil), r.bad...)
}

func startRecorded(t *testing.T, rt *fakeRuntime) (*Agent, *store.Store, *recorder) {
	t.Helper()
	r := newRecorder(true)
	a, st := startAgentWith(t, rt, 10, r.board)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx, a); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, st, r
}

// restoredEntry returns the store entry whose archive the runtime restored.
func restoredEntry(t *testing.T, rt *fakeRuntime, st *store.Store) store.Entry {
	t.Helper()
	rt.mu.Lock()
	path := rt.restores[len(rt.restores)-1]
	rt.mu.Unlock()
	es, err := st.List(wl)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Path == path {
			return e
		}
	}
	t.Fatalf("restored %s, which is no entry of the store", path)
	return store.Entry{}
}

// TestLocalRestoreRefusesAnArchiveNotMatchingTheRecord: the cluster
// records other archives under the newest checkpoints' numbers than the
// node's store holds; the restore refuses each of them (marks it bad,
// reports it for its holder record to be dropped, with an error naming the
// workload, the seq and both digests) and restores the newest one that
// matches its record.
func TestLocalRestoreRefusesAnArchiveNotMatchingTheRecord(t *testing.T) {
	rt := newFake()
	a, st, rec := startRecorded(t, rt)
	eventually(t, "3 recorded checkpoints", func() bool { return rec.recorded() >= 3 })
	from := rec.tamper()
	rt.exit()
	eventually(t, "a local restore", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Restores == 1 })
	got := restoredEntry(t, rt, st)
	if got.Seq >= from {
		t.Fatalf("restored #%d, whose record is another archive (planted from #%d on)", got.Seq, from)
	}
	bad := rec.badReports()
	if len(bad) == 0 {
		t.Fatal("no bad-copy report for the mismatching checkpoints")
	}
	es, _ := st.List(wl)
	for _, e := range es {
		if e.Seq < from || e.Seq > bad[0].Record.Seq {
			continue
		}
		if !e.Bad {
			t.Errorf("checkpoint #%d, which does not match its record, is not marked bad", e.Seq)
		}
	}
	b := bad[len(bad)-1]
	if b.Entry.Seq != from || b.Record.Seq != from || b.Record.SHA256 != plantedSHA || b.Workload.ID != wl {
		t.Fatalf("last bad-copy report %+v, want checkpoint #%d of %s against the planted record", b, from, wl)
	}
	for _, want := range []string{wl.String(), "#" + uitoa(from), "sha256 " + b.Entry.SHA256, "records sha256 " + plantedSHA} {
		if !strings.Contains(b.Reason, want) {
			t.Errorf("refusal %q does not name %q", b.Reason, want)
		}
	}
}

// TestLocalRestoreRefusesAPrivilegedArchive: the newest checkpoints'
// archives ask for CAP_SYS_ADMIN and the node's root at /host, which the
// registration does not have: each is refused before the runtime sees
// it (marked bad naming both fields, reported for its holder record to be
// dropped) and the newest unprivileged one is restored.
func TestLocalRestoreRefusesAPrivilegedArchive(t *testing.T) {
	rt := newFake()
	var hostileOn bool
	var mu sync.Mutex
	rt.spec = func(n int) *specs.Spec {
		mu.Lock()
		defer mu.Unlock()
		if hostileOn {
			return privilegedSpec()
		}
		return testSpec()
	}
	a, st, rec := startRecorded(t, rt)
	eventually(t, "3 recorded checkpoints", func() bool { return rec.recorded() >= 3 })
	mu.Lock()
	hostileOn = true
	mu.Unlock()
	n := rec.recorded()
	eventually(t, "2 recorded privileged checkpoints", func() bool { return rec.recorded() >= n+2 })
	rt.exit()
	eventually(t, "a local restore", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Restores == 1 })
	got := restoredEntry(t, rt, st)
	cfg, err := loadWorkloadConfig(a.dataDir, wl)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.checkArchive(context.Background(), cfg, got); err != nil {
		t.Fatalf("restored #%d, a refused archive: %v", got.Seq, err)
	}
	bad := rec.badReports()
	if len(bad) < 2 {
		t.Fatalf("%d bad-copy report(s), want one per privileged checkpoint (at least 2)", len(bad))
	}
	for _, b := range bad {
		for _, want := range []string{"capabilities CAP_SYS_ADMIN beyond", "mount / at /host", "#" + uitoa(b.Entry.Seq), wl.String()} {
			if !strings.Contains(b.Reason, want) {
				t.Errorf("refusal %q does not name %q", b.Reason, want)
			}
		}
		if b.Record.SHA256 != b.Entry.SHA256 || b.Record.Seq != b.Entry.Seq {
			t.Errorf("report %+v: the drop names another record than the refused checkpoint's", b)
		}
		e, err := st.Get(wl, b.Entry.Seq)
		if err != nil || !e.Bad || !strings.Contains(e.BadReason, "CAP_SYS_ADMIN") {
			t.Errorf("refused #%d not marked bad with the reason (%+v, %v)", b.Entry.Seq, e, err)
		}
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.restores) != 1 {
		t.Fatalf("%d runtime restore calls, want 1: refused archives must never reach the runtime", len(rt.restores))
	}
}

// TestPlacementChecksTheRecord: a placement whose record names another
// archive is refused (marked bad, reported, the error naming workload,
// seq and both digests); one whose checkpoint the cluster does not record
// is refused without marking it bad; one that matches is restored.
func TestPlacementChecksTheRecord(t *testing.T) {
	rt := newFake()
	a, st, rec := startRecorded(t, rt)
	eventually(t, "2 recorded checkpoints", func() bool { return rec.recorded() >= 2 })
	cfg, err := a.RecordConfig(context.Background(), nextWorkload(t, a))
	if err != nil {
		t.Fatal(err)
	}
	es, _ := st.List(wl)
	planted, good := es[0], es[1]

	_, err = a.Restore(context.Background(), ownership.Placement{Entry: good, Config: cfg, Epoch: 3, Reason: "test"})
	if err == nil || !strings.Contains(err.Error(), "not recorded in the cluster state") {
		t.Fatalf("a placement without a record: %v", err)
	}
	if e, _ := st.Get(wl, good.Seq); e.Bad {
		t.Fatalf("a checkpoint the cluster does not record yet was marked bad: %s", e.BadReason)
	}

	_, err = a.Restore(context.Background(), ownership.Placement{Entry: planted, Record: ownership.Record{Seq: planted.Seq, SHA256: plantedSHA, Size: planted.Size},
		Config: cfg, Epoch: 3, Reason: "test"})
	for _, want := range []string{wl.String(), "#" + uitoa(planted.Seq), "sha256 " + planted.SHA256, "records sha256 " + plantedSHA} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a placement of another archive: %v; want it to name %q", err, want)
		}
	}
	if e, _ := st.Get(wl, planted.Seq); !e.Bad {
		t.Fatal("the mismatching archive is not marked bad")
	}
	eventually(t, "the bad copy reported", func() bool { b := rec.badReports(); return len(b) == 1 && b[0].Record.Seq == planted.Seq })

	rt.mu.Lock()
	n := len(rt.restores)
	rt.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d runtime restore(s) of refused placements", n)
	}
	if _, err := a.Restore(context.Background(), ownership.Placement{Entry: good, Record: ownership.Record{Seq: good.Seq, SHA256: good.SHA256, Size: good.Size},
		Config: cfg, Epoch: 3, Reason: "test"}); err != nil {
		t.Fatalf("a placement matching its record: %v", err)
	}
}

func uitoa(n uint64) string { return strconv.FormatUint(n, 10) }

// checkedArchive stores an archive of the files (name to content, JSON
// of a value that is not a []byte) under method and checks it as the
// agent does before a restore.
func checkedArchive(t *testing.T, method string, files map[string]any) error {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b, ok := files[n].([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(files[n]); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Import(context.Background(), wl, bytes.NewReader(buf.Bytes()), store.Entry{Seq: 1, Method: method, Created: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{store: st}
	cfg := workloadConfig{Sandbox: &runtimeapi.PodSandboxConfig{}, Container: &runtimeapi.ContainerConfig{Image: &runtimeapi.ImageSpec{Image: "localhost:5000/counter:latest"}}}
	return a.checkArchive(context.Background(), cfg, e)
}

// TestCheckArchiveNeverSkipsOnTheArchivesWord: a container checkpoint
// whose spec calls itself a sandbox's is checked as the container's; a
// pod-level archive's sandbox spec is checked against the registration's
// sandbox; two sandboxes, or specs of two pods, in one pod's archive are
// refused.
func TestCheckArchiveNeverSkipsOnTheArchivesWord(t *testing.T) {
	config := []byte(`{"id":"ctr1","rootfsImageName":"localhost:5000/counter:latest"}`)
	asSandbox := func(s *specs.Spec) *specs.Spec {
		s.Annotations["io.kubernetes.cri.container-type"] = "sandbox"
		return s
	}
	otherPod := testSpec()
	otherPod.Annotations["io.kubernetes.cri.sandbox-id"] = "def"
	for _, tc := range []struct {
		name   string
		method string
		files  map[string]any
		want   []string // parts of the refusal; none: passes
	}{
		{name: "a container checkpoint", method: MethodCRI, files: map[string]any{"spec.dump": testSpec(), "config.dump": config}},
		{name: "a privileged container checkpoint calling itself a sandbox", method: MethodCRI,
			files: map[string]any{"spec.dump": asSandbox(privilegedSpec()), "config.dump": config},
			want:  []string{"capabilities CAP_SYS_ADMIN beyond", "mount / at /host (type bind) not in the registration"}},
		{name: "a pod-level archive with its sandbox", method: MethodCRIPod,
			files: map[string]any{"app/spec.dump": testSpec(), "app/config.dump": config, "pause/spec.dump": asSandbox(testSpec())}},
		{name: "a pod-level archive with a privileged sandbox", method: MethodCRIPod,
			files: map[string]any{"app/spec.dump": testSpec(), "app/config.dump": config, "pause/spec.dump": asSandbox(privilegedSpec())},
			want:  []string{"pause: capabilities CAP_SYS_ADMIN beyond", "pause: mount / at /host (type bind) not in the registration"}},
		{name: "a pod-level archive with two sandboxes", method: MethodCRIPod,
			files: map[string]any{"app/spec.dump": testSpec(), "app/config.dump": config, "p1/spec.dump": asSandbox(testSpec()), "p2/spec.dump": asSandbox(testSpec())},
			want:  []string{"2 sandbox specs (in p1, p2) in the archive of one pod"}},
		{name: "a pod-level archive with specs of two pods", method: MethodCRIPod,
			files: map[string]any{"app/spec.dump": testSpec(), "app/config.dump": config, "other/spec.dump": otherPod, "other/config.dump": config},
			want:  []string{"other: runtime file /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/hosts at /etc/hosts of another sandbox or container abc", "specs of 2 sandboxes (abc, def)"}},
		{name: "a pod-level archive of only a sandbox", method: MethodCRIPod,
			files: map[string]any{"pause/spec.dump": asSandbox(testSpec())}, want: []string{"no container spec.dump and config.dump"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkedArchive(t, tc.method, tc.files)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("passed, want a refusal saying %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestLocalRestoreOfOwnUnrecordedCheckpoint: a node whose newest
// checkpoints the cluster has not recorded (cut off from the quorum)
// restores its own newest one locally, the store's checksum being the
// record, without waiting for the cluster.
func TestLocalRestoreOfOwnUnrecordedCheckpoint(t *testing.T) {
	rt := newFake()
	a, st, rec := startRecorded(t, rt)
	eventually(t, "2 recorded checkpoints", func() bool { return rec.recorded() >= 2 })
	rec.mu.Lock()
	rec.frozen = true
	recorded := rec.recs[0].Seq
	rec.mu.Unlock()
	eventually(t, "2 checkpoints the cluster does not record", func() bool {
		es, _ := st.List(wl)
		return len(es) > 0 && es[0].Seq >= recorded+2
	})
	rt.exit()
	eventually(t, "a local restore", func() bool { s := a.Status(); return len(s.Workloads) == 1 && s.Workloads[0].Restores == 1 })
	got := restoredEntry(t, rt, st)
	if got.Seq <= recorded {
		t.Errorf("restored #%d, the newest the cluster records; want this node's own newer checkpoint", got.Seq)
	}
	if bad := rec.badReports(); len(bad) != 0 {
		t.Errorf("bad-copy reports for unrecorded own checkpoints: %+v", bad)
	}
}

// TestLocalFault: a wrong or missing data key, an I/O error and a
// cancelled restore are the node's faults (the checkpoint is passed over,
// not marked bad); a digest mismatch, a walker's refusal and an excess are
// the archive's.
func TestLocalFault(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"wrong key", live, fmt.Errorf("verify: %w", seal.ErrWrongKey), true},
		{"no key", live, fmt.Errorf("verify: %w", store.ErrNoKey), true},
		{"I/O error", live, fmt.Errorf("verify: %w", &fs.PathError{Op: "read", Path: "/x", Err: syscall.EIO}), true},
		{"cancelled", done, errors.New("walk: context canceled"), true},
		{"digest mismatch", live, fmt.Errorf("verify: %w", store.ErrDigest), false},
		{"walker refusal", live, &archive.MemberError{Name: "../x", Err: archive.ErrUnsafeName}, false},
		{"excess", live, errors.New("the archive asks for more than the workload's registration: privileged"), false},
	} {
		if got := localFault(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: localFault(%v) = %t, want %t", tc.name, tc.err, got, tc.want)
		}
	}
}
