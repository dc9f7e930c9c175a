package metrics

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
)

// closedPortDSN returns a DSN for a loopback port nothing listens on.
func closedPortDSN(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "postgres://postgres@" + addr + "/x?sslmode=disable&connect_timeout=1"
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestQueueDropOldest(t *testing.T) {
	q := newQueue(3)
	recs := make([]dbRecord, 6)
	for i := range recs {
		recs[i] = &CheckpointRecord{ID: fmt.Sprint(i)}
	}
	id := func(r dbRecord) string { return r.(*CheckpointRecord).ID }
	dropped := 0
	for _, r := range recs[:5] {
		dropped += q.push(r)
	}
	if q.len() != 3 || dropped != 2 {
		t.Fatalf("len %d dropped %d, want 3 and 2", q.len(), dropped)
	}
	got := q.pop(2)
	if len(got) != 2 || id(got[0]) != "2" || id(got[1]) != "3" {
		t.Fatalf("pop = %v, want the oldest kept: 2, 3", got)
	}
	// The popped batch fails: back to the front, before 4 and 5.
	dropped = q.push(recs[5])
	if dropped != 0 || q.len() != 2 {
		t.Fatalf("len %d dropped %d after a push", q.len(), dropped)
	}
	if d := q.unpop(got); d != 1 {
		t.Fatalf("unpop dropped %d, want 1 (only one slot free)", d)
	}
	var ids []string
	for _, r := range q.pop(10) {
		ids = append(ids, id(r))
	}
	if strings.Join(ids, ",") != "3,4,5" {
		t.Fatalf("queue holds %v, want 3,4,5 (the oldest, 2, dropped)", ids)
	}
	if q.len() != 0 || len(q.pop(1)) != 0 {
		t.Fatal("queue not empty")
	}
	// Wrap around many times.
	for i := 0; i < 100; i++ {
		q.push(&CheckpointRecord{ID: fmt.Sprint(i)})
		if i%2 == 0 {
			q.pop(1)
		}
	}
	ids = ids[:0]
	for _, r := range q.pop(10) {
		ids = append(ids, id(r))
	}
	if strings.Join(ids, ",") != "97,98,99" {
		t.Fatalf("after wrapping: %v", ids)
	}
}

func TestRecorderQueueBoundsAndDrops(t *testing.T) {
	r := New(Options{DSN: closedPortDSN(t), QueueSize: 5, Node: "n1"})
	for i := 1; i <= 8; i++ {
		r.Checkpoint(CheckpointRecord{Workload: "ns/p/c", Seq: uint64(i), OK: true})
	}
	st := r.Stats()
	if st.Queued != 5 || st.Dropped != 3 || st.DBConnected || !st.DBEnabled {
		t.Fatalf("stats %+v, want 5 queued, 3 dropped, enabled, not connected", st)
	}
	r.mu.Lock()
	var seqs []uint64
	for _, rec := range r.q.pop(10) {
		c := rec.(*CheckpointRecord)
		seqs = append(seqs, c.Seq)
		if c.Node != "n1" || !isUUID(c.ID) || c.Start.IsZero() {
			t.Errorf("record not completed: %+v", c)
		}
	}
	r.mu.Unlock()
	if fmt.Sprint(seqs) != "[4 5 6 7 8]" {
		t.Fatalf("queue kept %v, want the newest [4 5 6 7 8]", seqs)
	}
	fams := scrape(t, r)
	if v := value(t, fams, "crfailoverd_metrics_records_dropped_total", nil); v != 3 {
		t.Fatalf("dropped counter %v, want 3", v)
	}

	// Without a DSN nothing is queued, but Prometheus and events work.
	r2 := New(Options{})
	r2.Checkpoint(CheckpointRecord{Workload: "ns/p/c", OK: true, Duration: time.Second})
	if st := r2.Stats(); st.Queued != 0 || st.DBEnabled {
		t.Fatalf("no DSN: stats %+v", st)
	}
	if len(r2.Events(0, 0)) != 1 {
		t.Fatal("no DSN: no event")
	}
}

// scrape fetches the recorder's endpoint and parses the text format.
func scrape(t *testing.T, r *Recorder) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return fams
}

// metric returns the metric of family name with exactly the given labels.
func metric(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

// value returns a counter's or gauge's value.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := metric(t, fams, name, labels)
	switch fams[name].GetType() {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	}
	t.Fatalf("%s is a %s", name, fams[name].GetType())
	return 0
}

func histogram(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) (count uint64, sum float64) {
	t.Helper()
	if typ := fams[name].GetType(); typ != dto.MetricType_HISTOGRAM {
		t.Fatalf("%s is a %s, want a histogram", name, typ)
	}
	h := metric(t, fams, name, labels).GetHistogram()
	return h.GetSampleCount(), h.GetSampleSum()
}

func TestPrometheus(t *testing.T) {
	r := New(Options{DSN: closedPortDSN(t), Node: "n1"})
	stats := &archive.DumpStats{FrozenTime: 800 * time.Millisecond, PagesWritten: 1234}
	r.Checkpoint(CheckpointRecord{Workload: "ns/a/c", Method: "kubelet", Seq: 1, Duration: 1500 * time.Millisecond, Bytes: 1000, OK: true, Stats: stats})
	r.Checkpoint(CheckpointRecord{Workload: "ns/a/c", Method: "kubelet", Seq: 2, Duration: 500 * time.Millisecond, Bytes: 2000, OK: true})
	r.Checkpoint(CheckpointRecord{Workload: "ns/b/c", Method: "cri", Seq: 1, Duration: 250 * time.Millisecond, Bytes: 300, OK: true})
	r.Checkpoint(CheckpointRecord{Workload: "ns/a/c", Method: "kubelet", Duration: 30 * time.Second, Error: "timeout"})
	r.Transfer(TransferRecord{Workload: "ns/a/c", To: "n2", Seq: 1, Duration: 2 * time.Second, Bytes: 1000, OK: true})
	r.Transfer(TransferRecord{Workload: "ns/a/c", To: "n3", Seq: 1, Duration: time.Second, Error: "refused"})
	r.Restore(RestoreRecord{Workload: "ns/a/c", Seq: 2, Duration: 3 * time.Second, OK: true})
	r.Restore(RestoreRecord{Workload: "ns/b/c", Seq: 1, Duration: time.Second, Error: "criu failed"})
	id := FailoverID("ns/a/c", 7)
	r.Failover(FailoverRecord{ID: id, Workload: "ns/a/c", From: "n1", To: "n2", Epoch: 7, Decided: time.Now()})
	r.Failover(FailoverRecord{ID: id, Workload: "ns/a/c", To: "n2", Epoch: 7, Restored: time.Now()})
	r.Failover(FailoverRecord{Workload: "ns/b/c", From: "n1", To: "n3", Epoch: 3, Decided: time.Now()})
	r.SetGauges(4, 3, "Leader", true)

	fams := scrape(t, r)
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }

	if n, s := histogram(t, fams, "crfailoverd_checkpoint_duration_seconds", map[string]string{"method": "kubelet"}); n != 2 || !near(s, 2) {
		t.Errorf("kubelet checkpoint histogram: count %d sum %v, want 2 and 2s", n, s)
	}
	if n, s := histogram(t, fams, "crfailoverd_checkpoint_duration_seconds", map[string]string{"method": "cri"}); n != 1 || !near(s, 0.25) {
		t.Errorf("cri checkpoint histogram: count %d sum %v", n, s)
	}
	// Buckets: the 0.25s CRI checkpoint falls in le=0.25, not le=0.1.
	for _, b := range metric(t, fams, "crfailoverd_checkpoint_duration_seconds", map[string]string{"method": "cri"}).GetHistogram().GetBucket() {
		want := uint64(0)
		if b.GetUpperBound() >= 0.25 {
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("cri bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	if n, s := histogram(t, fams, "crfailoverd_transfer_duration_seconds", nil); n != 1 || !near(s, 2) {
		t.Errorf("transfer histogram: count %d sum %v", n, s)
	}
	if n, s := histogram(t, fams, "crfailoverd_restore_duration_seconds", map[string]string{"outcome": "success"}); n != 1 || !near(s, 3) {
		t.Errorf("restore success histogram: count %d sum %v", n, s)
	}
	if n, s := histogram(t, fams, "crfailoverd_restore_duration_seconds", map[string]string{"outcome": "failure"}); n != 1 || !near(s, 1) {
		t.Errorf("restore failure histogram: count %d sum %v", n, s)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"crfailoverd_checkpoints_total", map[string]string{"outcome": "success"}, 3},
		{"crfailoverd_checkpoints_total", map[string]string{"outcome": "failure"}, 1},
		{"crfailoverd_checkpoint_failures_total", nil, 1},
		{"crfailoverd_checkpoint_bytes_total", nil, 3300},
		{"crfailoverd_transfer_failures_total", nil, 1},
		{"crfailoverd_transfer_bytes_total", nil, 1000},
		{"crfailoverd_restore_failures_total", nil, 1},
		{"crfailoverd_failovers_total", nil, 2}, // two failovers, one updated
		{"crfailoverd_metrics_records_dropped_total", nil, 0},
		{"crfailoverd_metrics_records_written_total", nil, 0},
		{"crfailoverd_workloads", nil, 4},
		{"crfailoverd_cluster_members_alive", nil, 3},
		{"crfailoverd_fenced", nil, 1},
		{"crfailoverd_raft_state", map[string]string{"state": "leader"}, 1},
		{"crfailoverd_raft_state", map[string]string{"state": "follower"}, 0},
		{"crfailoverd_raft_state", map[string]string{"state": "candidate"}, 0},
		{"crfailoverd_metrics_queue_length", nil, 11},
		{"crfailoverd_metrics_db_connected", nil, 0},
	} {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("the default registry lacks the Go collector")
	}

	// The state changes: the old one goes to 0; an unknown state is shown
	// while current; no state at all leaves every state at 0.
	r.SetGauges(2, 1, "Follower", false)
	fams = scrape(t, r)
	if value(t, fams, "crfailoverd_raft_state", map[string]string{"state": "leader"}) != 0 ||
		value(t, fams, "crfailoverd_raft_state", map[string]string{"state": "follower"}) != 1 ||
		value(t, fams, "crfailoverd_fenced", nil) != 0 || value(t, fams, "crfailoverd_workloads", nil) != 2 {
		t.Error("gauges not updated")
	}
	r.SetGauges(2, 1, "Weird", false)
	fams = scrape(t, r)
	if value(t, fams, "crfailoverd_raft_state", map[string]string{"state": "weird"}) != 1 ||
		value(t, fams, "crfailoverd_raft_state", map[string]string{"state": "follower"}) != 0 {
		t.Error("unknown state not exported")
	}
	r.SetGauges(2, 1, "", false)
	fams = scrape(t, r)
	for _, m := range fams["crfailoverd_raft_state"].GetMetric() {
		if m.GetGauge().GetValue() != 0 || m.GetLabel()[0].GetValue() == "weird" {
			t.Errorf("no state: %v", m)
		}
	}
}

func TestCustomRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(Options{Registry: reg})
	if r.Registry() != reg {
		t.Fatal("registry not used")
	}
	r.Checkpoint(CheckpointRecord{Method: "cri", OK: true})
	fams := scrape(t, r)
	if _, ok := fams["go_goroutines"]; ok {
		t.Error("a caller's registry got the Go collector")
	}
	if value(t, fams, "crfailoverd_checkpoints_total", map[string]string{"outcome": "success"}) != 1 {
		t.Error("checkpoint not counted")
	}
	r.Handler() // a second handler on the same registry must not panic
}

func TestEvents(t *testing.T) {
	r := New(Options{EventBuffer: 5, Node: "n1"})
	if ev := r.Events(0, 0); len(ev) != 0 || r.LastEventSeq() != 0 {
		t.Fatalf("events before any: %v", ev)
	}
	for i := 1; i <= 8; i++ {
		r.Note("note", "ns/p/c", fmt.Sprintf("note %d", i), map[string]string{"i": fmt.Sprint(i)})
	}
	seqs := func(evs []Event) string {
		var s []string
		for _, e := range evs {
			s = append(s, fmt.Sprint(e.Seq))
		}
		return strings.Join(s, ",")
	}
	if got := seqs(r.Events(0, 0)); got != "4,5,6,7,8" {
		t.Fatalf("Events(0) = %s, want the 5 retained", got)
	}
	if got := seqs(r.Events(6, 0)); got != "7,8" {
		t.Fatalf("Events(6) = %s", got)
	}
	if got := seqs(r.Events(2, 2)); got != "4,5" {
		t.Fatalf("Events(2, limit 2) = %s", got)
	}
	if got := r.Events(8, 0); len(got) != 0 {
		t.Fatalf("Events(8) = %v", got)
	}
	if got := r.Events(100, 0); len(got) != 0 {
		t.Fatalf("Events(100) = %v", got)
	}
	ev := r.Events(7, 1)[0]
	if ev.Message != "note 8" || ev.Kind != "note" || ev.Workload != "ns/p/c" || ev.Fields["i"] != "8" || ev.Time.IsZero() {
		t.Fatalf("event %+v", ev)
	}

	// Records make one-line events.
	r.Checkpoint(CheckpointRecord{Workload: "ns/p/c", Method: "kubelet", Seq: 3, Duration: 1234 * time.Millisecond, Bytes: 3 << 20, OK: true,
		Stats: &archive.DumpStats{FrozenTime: 900 * time.Millisecond, PagesWritten: 42}})
	r.Checkpoint(CheckpointRecord{Workload: "ns/p/c", Method: "cri", Error: "no such container"})
	r.Transfer(TransferRecord{Workload: "ns/p/c", To: "n2", Seq: 3, Bytes: 1 << 20, Duration: time.Second, OK: true})
	r.Restore(RestoreRecord{Workload: "ns/p/c", Seq: 3, Duration: 2 * time.Second, CheckpointAge: 5 * time.Second, OK: true, Reason: "node n0 dead"})
	r.Failover(FailoverRecord{Workload: "ns/p/c", From: "n0", To: "n1", Epoch: 2, Decided: time.Now(), Reason: "node dead"})
	evs := r.Events(8, 0)
	want := []struct{ kind, msg string }{
		{"checkpoint", "checkpoint ns/p/c #3 via kubelet: 1.23s, 3.0 MiB, frozen 900ms, 42 pages written"},
		{"checkpoint-failed", "checkpoint of ns/p/c via cri failed after 0s: no such container"},
		{"transfer", "transfer of ns/p/c #3 to n2: 1.0 MiB in 1s"},
		{"restore", "restored ns/p/c #3 on n1 in 2s, checkpoint 5s old (node n0 dead)"},
		{"failover", "failover of ns/p/c (epoch 2): placed on n1 instead of n0 (node dead)"},
	}
	if len(evs) != len(want) {
		t.Fatalf("got %d events, want %d", len(evs), len(want))
	}
	for i, w := range want {
		if evs[i].Kind != w.kind || evs[i].Message != w.msg {
			t.Errorf("event %d: %s %q, want %s %q", i, evs[i].Kind, evs[i].Message, w.kind, w.msg)
		}
		if strings.Contains(evs[i].Message, "\n") {
			t.Errorf("event %d spans lines", i)
		}
	}
	if evs[0].Fields["bytes"] != fmt.Sprint(3<<20) || evs[0].Fields["seq"] != "3" || evs[3].Fields["checkpoint_age_ms"] != "5000" {
		t.Errorf("fields: %v %v", evs[0].Fields, evs[3].Fields)
	}
}

func TestWaitEvents(t *testing.T) {
	r := New(Options{})
	r.Note("a", "", "first", nil)

	// An event is already there: no wait.
	if evs := r.WaitEvents(context.Background(), 0); len(evs) != 1 || evs[0].Message != "first" {
		t.Fatalf("WaitEvents(0) = %v", evs)
	}

	// Nothing new: wait until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if evs := r.WaitEvents(ctx, 1); evs != nil {
		t.Fatalf("WaitEvents with nothing new = %v", evs)
	}
	if ctx.Err() == nil {
		t.Fatal("WaitEvents returned before ctx ended")
	}
	cancel()

	// Several followers are woken by one event.
	var wg sync.WaitGroup
	got := make([][]Event, 3)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got[i] = r.WaitEvents(ctx, 1)
		}()
	}
	time.Sleep(20 * time.Millisecond)
	r.Note("b", "", "second", nil)
	wg.Wait()
	for i, evs := range got {
		if len(evs) != 1 || evs[0].Seq != 2 || evs[0].Message != "second" {
			t.Errorf("follower %d got %v", i, evs)
		}
	}
	if r.LastEventSeq() != 2 {
		t.Errorf("LastEventSeq %d", r.LastEventSeq())
	}
}

// TestNeverBlocks: whether nothing listens at the database's address or
// something accepts connections and never answers, recording returns at
// once and the records wait in the queue.
func TestNeverBlocks(t *testing.T) {
	blackhole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blackhole.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := blackhole.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()

	for _, tc := range []struct{ name, dsn string }{
		{"closed port", closedPortDSN(t)},
		{"silent server", "postgres://postgres@" + blackhole.Addr().String() + "/x?sslmode=disable&connect_timeout=30"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Options{DSN: tc.dsn, QueueSize: 1000, BatchSize: 10, FlushInterval: 10 * time.Millisecond, ShutdownGrace: 200 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Run(ctx); close(done) }()
			time.Sleep(50 * time.Millisecond) // the writer is connecting

			const n = 3000
			var slowest time.Duration
			start := time.Now()
			for i := 0; i < n; i++ {
				t0 := time.Now()
				r.Checkpoint(CheckpointRecord{Workload: "ns/p/c", Seq: uint64(i + 1), OK: true, Duration: time.Second})
				if d := time.Since(t0); d > slowest {
					slowest = d
				}
			}
			total := time.Since(start)
			// Generous bounds for -race on a loaded machine; a blocking
			// call would wait for the 1s+ connect timeout.
			if total > 2*time.Second || slowest > 500*time.Millisecond {
				t.Fatalf("%d records took %s, the slowest %s", n, total, slowest)
			}
			st := r.Stats()
			if st.Queued != 1000 || st.Dropped != n-1000 || st.DBConnected || st.Written != 0 {
				t.Fatalf("stats %+v, want 1000 queued, %d dropped, not connected", st, n-1000)
			}
			if tc.name == "closed port" {
				waitFor(t, "a connection error", 5*time.Second, func() bool { return r.Stats().LastError != "" })
			}
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after its context ended")
			}
		})
	}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if !isUUID(id) || id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) || strings.ToLower(id) != id {
			t.Fatalf("bad random UUID %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate %s", id)
		}
		seen[id] = true
	}
	a, b := IDFor("x", "y"), IDFor("x", "y")
	if a != b || !isUUID(a) || a[14] != '8' {
		t.Fatalf("IDFor: %s %s", a, b)
	}
	if IDFor("ab", "c") == IDFor("a", "bc") || FailoverID("ns/p/c", 1) == FailoverID("ns/p/c", 2) {
		t.Fatal("IDFor collides")
	}
	if e1, e2 := normalizeID(""), normalizeID(""); e1 == e2 || !isUUID(e1) {
		t.Fatal("empty IDs not random")
	}
	if got := normalizeID("0F8FAD5B-D9CB-469F-A165-70867728950E"); got != "0f8fad5b-d9cb-469f-a165-70867728950e" {
		t.Fatalf("UUID not kept: %s", got)
	}
	if got := normalizeID("my-failover"); got != IDFor("my-failover") {
		t.Fatalf("other string: %s", got)
	}
	for _, bad := range []string{"0f8fad5b-d9cb-469f-a165-70867728950", "0f8fad5bxd9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-70867728950g"} {
		if isUUID(bad) {
			t.Errorf("isUUID(%q)", bad)
		}
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"plain":        "plain",
		"nul\x00byte":  "nul\uFFFDbyte",
		"bad\xffutf8":  "bad\uFFFDutf8",
		"ünïcode ok ✓": "ünïcode ok ✓",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNilRecorder(t *testing.T) {
	var r *Recorder
	r.Checkpoint(CheckpointRecord{})
	r.Transfer(TransferRecord{})
	r.Restore(RestoreRecord{})
	r.Failover(FailoverRecord{})
	r.Note("k", "", "m", nil)
	r.SetGauges(1, 1, "leader", false)
	if r.Events(0, 0) != nil || r.Stats() != (Stats{}) || r.LastEventSeq() != 0 {
		t.Fatal("nil recorder returned something")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.Run(ctx)
	if r.WaitEvents(ctx, 0) != nil {
		t.Fatal("nil WaitEvents")
	}
}

func TestStatements(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	c := &CheckpointRecord{ID: NewID(), Workload: "ns/p/c", Node: "n1", Method: "cri", Start: start, Duration: 1500 * time.Millisecond, OK: true,
		Stats: &archive.DumpStats{FreezingTime: 3 * time.Millisecond, PagesScanned: math.MaxUint64}}
	sql, args := c.statement()
	if strings.Count(sql, "$") != len(args) || len(args) != 24 {
		t.Fatalf("checkpoint: %d args for %d placeholders", len(args), strings.Count(sql, "$"))
	}
	if args[4] != nil || args[6] != int64(1500) || args[9] != nil || args[10] != int64(3000) || args[14] != int64(math.MaxInt64) {
		t.Fatalf("checkpoint args %v", args)
	}
	c.Stats, c.OK = nil, false
	_, args = c.statement()
	for i := 10; i < 24; i++ {
		if args[i] != nil {
			t.Fatalf("no stats: arg %d = %v", i, args[i])
		}
	}
	if args[9] != "unknown error" {
		t.Fatalf("failure without a message: %v", args[9])
	}
	for _, rec := range []dbRecord{&TransferRecord{}, &RestoreRecord{}, &FailoverRecord{}} {
		sql, args := rec.statement()
		if strings.Count(sql, "$") != len(args) {
			t.Errorf("%T: %d args for %d placeholders", rec, len(args), strings.Count(sql, "$"))
		}
	}
}

func TestClusterEvent(t *testing.T) {
	r := New(Options{DSN: closedPortDSN(t), Node: "n2"})
	dead := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	placed, restored := dead.Add(2*time.Second), dead.Add(5*time.Second)
	r.ClusterEvent(event.Event{Kind: "node-dead", Node: "n1", At: dead})
	r.ClusterEvent(event.Event{Kind: "placed", Workload: "ns/p/c", From: "n1", To: "n2", Seq: 4, Epoch: 6, Reason: "node n1 dead", At: placed})
	r.ClusterEvent(event.Event{Kind: "restored", Workload: "ns/p/c", Node: "n2", To: "n2", Seq: 4, Epoch: 6, Reason: "node n1 dead", Took: 1500 * time.Millisecond, At: restored})
	r.ClusterEvent(event.Event{Kind: "restore-failed", Workload: "ns/q/c", Node: "n2", Seq: 1, Epoch: 2, Took: time.Second, Err: "boom", At: restored})
	r.ClusterEvent(event.Event{Kind: "replicated", Workload: "ns/p/c", Node: "n2", To: "n3", Seq: 5, Took: time.Second, Bytes: 99, At: restored})
	r.ClusterEvent(event.Event{Kind: "replicate-failed", Workload: "ns/p/c", Node: "n2", To: "n1", Seq: 5, Err: "unreachable", At: restored})
	r.ClusterEvent(event.Event{Kind: "something-new", Workload: "ns/p/c", Reason: "why"})

	r.mu.Lock()
	recs := r.q.pop(100)
	r.mu.Unlock()
	// The restores themselves are the agent's records (Restore), not the
	// cluster events': these give the failover rows and transfers only.
	if len(recs) != 5 {
		t.Fatalf("%d records queued, want 5", len(recs))
	}
	fid := FailoverID("ns/p/c", 6)
	if f := recs[0].(*FailoverRecord); f.ID != fid || !f.Detected.Equal(dead) || !f.Decided.Equal(placed) || f.From != "n1" || f.To != "n2" || f.Epoch != 6 {
		t.Errorf("placed: %+v", f)
	}
	if f := recs[1].(*FailoverRecord); f.ID != fid || !f.Restored.Equal(restored) || !f.Decided.IsZero() {
		t.Errorf("restored failover: %+v", f)
	}
	if f := recs[2].(*FailoverRecord); f.ID != FailoverID("ns/q/c", 2) || f.Error != "restore on n2 failed: boom" {
		t.Errorf("failed failover: %+v", f)
	}
	if tr := recs[3].(*TransferRecord); !tr.OK || tr.From != "n2" || tr.To != "n3" || tr.Bytes != 99 || tr.Seq != 5 {
		t.Errorf("replicated: %+v", tr)
	}
	if tr := recs[4].(*TransferRecord); tr.OK || tr.Error != "unreachable" || tr.To != "n1" {
		t.Errorf("replicate-failed: %+v", tr)
	}
	var kinds []string
	for _, e := range r.Events(0, 0) {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, ","); got != "node-dead,failover,failover,restore-failed,failover,transfer,transfer-failed,something-new" {
		t.Errorf("events: %s", got)
	}
	if evs := r.Events(0, 1); evs[0].Message != "node n1 is dead" {
		t.Errorf("node-dead message %q", evs[0].Message)
	}
	fams := scrape(t, r)
	if v := value(t, fams, "crfailoverd_failovers_total", nil); v != 2 {
		t.Errorf("failovers_total %v, want 2 (ns/p/c epoch 6, ns/q/c epoch 2)", v)
	}
}
