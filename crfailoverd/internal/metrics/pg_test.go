package metrics

// Integration tests against a real PostgreSQL, given by CRF_PG_DSN:
//
//	export CRF_PG_DSN="$(bash scripts/pg-test.sh)"
//	go test -race ./crfailoverd/internal/metrics/
//
// Each test works in a schema of its own (search_path), dropped at the end.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

// pgSchema creates a fresh schema and returns a DSN using it and a
// connection of the test's own, also using it.
func pgSchema(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	base := os.Getenv("CRF_PG_DSN")
	if base == "" {
		t.Skip("CRF_PG_DSN is not set: run `export CRF_PG_DSN=\"$(bash scripts/pg-test.sh)\"` to test against PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to CRF_PG_DSN: %v", err)
	}
	schema := "crf_test_" + strings.ReplaceAll(NewID(), "-", "")[:12]
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "SET search_path TO "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
		admin.Close(ctx)
	})
	return withSearchPath(t, base, schema), admin
}

func withSearchPath(t *testing.T, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// withHost returns dsn with its host and port replaced by addr.
func withHost(t *testing.T, dsn, addr string) string {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		host, port, _ := net.SplitHostPort(addr)
		return dsn + " host=" + host + " port=" + port
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

func serverAddr(t *testing.T, dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(cfg.Host, "/") {
		t.Skip("CRF_PG_DSN uses a Unix socket; the proxy tests need TCP")
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// fastRetries shortens the writer's backoff for the test.
func fastRetries(t *testing.T) {
	oldMin, oldMax := minBackoff, maxBackoff
	minBackoff, maxBackoff = 20*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { minBackoff, maxBackoff = oldMin, oldMax })
}

// run starts r.Run and returns a function that stops it and waits.
func run(t *testing.T, r *Recorder) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func queryInt(t *testing.T, c *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := c.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func queryStrings(t *testing.T, c *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func TestPGMigrations(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	ctx := context.Background()

	r := New(Options{DSN: dsn})
	stop := run(t, r)
	waitFor(t, "the first connection", 20*time.Second, func() bool { return r.Stats().DBConnected })
	stop()
	if st := r.Stats(); st.DBConnected || st.LastError != "" {
		t.Fatalf("after Run: %+v", st)
	}

	versions := func() string {
		return strings.Join(queryStrings(t, db, "SELECT version::text || ':' || name FROM schema_migrations ORDER BY version"), "; ")
	}
	want := "1:create the record tables; 2:failover phase durations view"
	if got := versions(); got != want {
		t.Fatalf("schema_migrations: %s, want %s", got, want)
	}
	var applied time.Time
	if err := db.QueryRow(ctx, "SELECT applied_at FROM schema_migrations WHERE version = 1").Scan(&applied); err != nil {
		t.Fatal(err)
	}

	// Column types.
	types := map[string]string{}
	rows, err := db.Query(ctx, `SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name IN ('checkpoints', 'transfers', 'restores', 'failovers')`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var col, typ string
		if err := rows.Scan(&col, &typ); err != nil {
			t.Fatal(err)
		}
		types[col] = typ
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	const tz = "timestamp with time zone"
	wantTypes := map[string]string{
		"checkpoints.id": "uuid", "checkpoints.workload": "text", "checkpoints.node": "text", "checkpoints.method": "text",
		"checkpoints.seq": "bigint", "checkpoints.started_at": tz, "checkpoints.duration_ms": "bigint",
		"checkpoints.bytes": "bigint", "checkpoints.ok": "boolean", "checkpoints.error": "text",
		"transfers.id": "uuid", "transfers.from_node": "text", "transfers.to_node": "text", "transfers.started_at": tz,
		"transfers.duration_ms": "bigint", "transfers.bytes": "bigint",
		"restores.id": "uuid", "restores.node": "text", "restores.checkpoint_seq": "bigint", "restores.checkpoint_age_ms": "bigint",
		"restores.started_at": tz, "restores.duration_ms": "bigint", "restores.outcome": "text", "restores.error": "text",
		"failovers.id": "uuid", "failovers.reason": "text", "failovers.from_node": "text", "failovers.to_node": "text",
		"failovers.detected_at": tz, "failovers.decided_at": tz, "failovers.restored_at": tz, "failovers.epoch": "bigint",
	}
	for _, c := range []string{"freezing_time_us", "frozen_time_us", "memdump_time_us", "memwrite_time_us", "pages_scanned",
		"pages_skipped_parent", "pages_written", "pages_lazy", "page_pipes", "page_pipe_bufs", "irmap_resolve_us",
		"shpages_scanned", "shpages_skipped_parent", "shpages_written"} {
		wantTypes["checkpoints."+c] = "bigint"
	}
	for col, typ := range wantTypes {
		if types[col] != typ {
			t.Errorf("%s: type %q, want %q", col, types[col], typ)
		}
	}
	indexes := queryStrings(t, db, "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1")
	for _, ix := range []string{"checkpoints_workload_started_idx", "transfers_workload_started_idx", "restores_workload_started_idx", "failovers_workload_detected_idx"} {
		if !slices.Contains(indexes, ix) {
			t.Errorf("no index %s (have %v)", ix, indexes)
		}
	}

	// A second Run changes nothing.
	log, logs := testLogger(t)
	r2 := New(Options{DSN: dsn, Log: log})
	stop = run(t, r2)
	waitFor(t, "the second connection", 20*time.Second, func() bool { return r2.Stats().DBConnected })
	stop()
	var applied2 time.Time
	if err := db.QueryRow(ctx, "SELECT applied_at FROM schema_migrations WHERE version = 1").Scan(&applied2); err != nil {
		t.Fatal(err)
	}
	if got := versions(); got != want || !applied2.Equal(applied) {
		t.Fatalf("second run: %s (applied %v, then %v)", got, applied, applied2)
	}
	if strings.Contains(logs.String(), "migrated") {
		t.Fatalf("second run migrated: %s", logs)
	}

	// A new migration is applied alone, once.
	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = append(slices.Clip(saved), migration{3, "test column", "ALTER TABLE checkpoints ADD COLUMN test_extra integer"})
	log, logs = testLogger(t)
	r3 := New(Options{DSN: dsn, Log: log})
	stop = run(t, r3)
	waitFor(t, "the third connection", 20*time.Second, func() bool { return r3.Stats().DBConnected })
	stop()
	if got := versions(); got != want+"; 3:test column" {
		t.Fatalf("after migration 3: %s", got)
	}
	if !strings.Contains(logs.String(), "applied=[3]") {
		t.Fatalf("migration 3 not reported: %s", logs)
	}
	if n := queryInt(t, db, "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND column_name = 'test_extra'"); n != 1 {
		t.Fatal("migration 3 not applied")
	}

	// An older daemon on the newer schema warns and works.
	migrations = saved
	log, logs = testLogger(t)
	r4 := New(Options{DSN: dsn, Log: log})
	stop = run(t, r4)
	r4.Checkpoint(CheckpointRecord{Workload: "ns/p/c", Method: "cri", Seq: 1, OK: true})
	waitFor(t, "a write by an older daemon", 20*time.Second, func() bool { return r4.Stats().Written == 1 })
	stop()
	if !strings.Contains(logs.String(), "unknown_versions=[3]") {
		t.Fatalf("no warning about the newer schema: %s", logs)
	}
}

// TestPGConcurrentMigrations: daemons starting together on an empty
// database migrate it once.
func TestPGConcurrentMigrations(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	var rs []*Recorder
	for i := 0; i < 4; i++ {
		r := New(Options{DSN: dsn})
		rs = append(rs, r)
		run(t, r)
	}
	for i, r := range rs {
		waitFor(t, "recorder "+strconv.Itoa(i)+" connected", 20*time.Second, func() bool { return r.Stats().DBConnected })
		if e := r.Stats().LastError; e != "" {
			t.Errorf("recorder %d: %s", i, e)
		}
	}
	if n := queryInt(t, db, "SELECT count(*) FROM schema_migrations"); n != int64(len(migrations)) {
		t.Fatalf("%d migrations recorded, want %d", n, len(migrations))
	}
}

func TestPGRecords(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	ctx := context.Background()
	r := New(Options{DSN: dsn, Node: "n1", FlushInterval: 20 * time.Millisecond})
	stop := run(t, r)

	t0 := time.Now().Truncate(time.Microsecond) // PostgreSQL keeps microseconds
	stats := &archive.DumpStats{
		FreezingTime: 1100 * time.Microsecond, FrozenTime: 812345 * time.Microsecond,
		MemdumpTime: 700 * time.Millisecond, MemwriteTime: 650 * time.Millisecond,
		PagesScanned: 100000, PagesSkippedParent: 200, PagesWritten: 99000, PagesLazy: 3,
		PagePipes: 4, PagePipeBufs: 5, IrmapResolve: 6 * time.Microsecond,
		ShpagesScanned: 700, ShpagesSkippedParent: 8, ShpagesWritten: 690,
	}
	ck := CheckpointRecord{ID: NewID(), Workload: "ns/app/c", Method: "kubelet", Seq: 12, Start: t0,
		Duration: 1234567 * time.Microsecond, Bytes: 45 << 20, OK: true, Stats: stats}
	ckFail := CheckpointRecord{ID: NewID(), Workload: "ns/app/c", Node: "n2", Method: "cri", Start: t0.Add(time.Second),
		Duration: 30 * time.Second, Error: "rpc error: deadline\x00 exceeded"}
	tr := TransferRecord{ID: NewID(), Workload: "ns/app/c", To: "n2", Seq: 12, Start: t0.Add(2 * time.Second), Duration: 2500 * time.Millisecond, Bytes: 45 << 20, OK: true}
	trFail := TransferRecord{ID: NewID(), Workload: "ns/app/c", To: "n3", Seq: 12, Start: t0.Add(2 * time.Second), Duration: 100 * time.Millisecond, Error: "connection refused"}
	rs := RestoreRecord{ID: NewID(), Workload: "ns/app/c", Node: "n2", Seq: 12, Start: t0.Add(10 * time.Second), Duration: 3 * time.Second,
		CheckpointAge: 8 * time.Second, OK: true, Reason: "node n1 dead"}
	rsFail := RestoreRecord{ID: NewID(), Workload: "ns/app/c", Node: "n3", Seq: 11, Start: t0.Add(9 * time.Second), Duration: time.Second,
		CheckpointAge: 9 * time.Second, Error: "criu: restore failed"}
	fid := FailoverID("ns/app/c", 5)
	detected, decided, restored := t0.Add(5*time.Second), t0.Add(7*time.Second), t0.Add(13*time.Second)
	r.Checkpoint(ck)
	r.Checkpoint(ckFail)
	r.Transfer(tr)
	r.Transfer(trFail)
	r.Restore(rsFail)
	r.Restore(rs)
	// The failover, as seen by three nodes: detection, decision, restore.
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/app/c", From: "n1", Reason: "node n1 dead", Epoch: 5, Detected: detected})
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/app/c", From: "n1", To: "n2", Epoch: 5, Decided: decided})
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/app/c", To: "n2", Restored: restored})
	// A later, redundant detection does not move the detection time.
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/app/c", Detected: detected.Add(time.Second)})
	waitFor(t, "10 records written", 20*time.Second, func() bool { return r.Stats().Written == 10 })
	stop()
	if st := r.Stats(); st.Queued != 0 || st.Dropped != 0 || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}

	// The successful checkpoint, every column.
	var (
		id, workload, node, method string
		seq, durMS, bytes          int64
		started                    time.Time
		ok                         bool
		errText                    *string
		s                          [14]*int64
	)
	err := db.QueryRow(ctx, `SELECT id::text, workload, node, method, seq, started_at, duration_ms, bytes, ok, error,
		freezing_time_us, frozen_time_us, memdump_time_us, memwrite_time_us, pages_scanned, pages_skipped_parent,
		pages_written, pages_lazy, page_pipes, page_pipe_bufs, irmap_resolve_us, shpages_scanned,
		shpages_skipped_parent, shpages_written FROM checkpoints WHERE id = $1`, ck.ID).Scan(
		&id, &workload, &node, &method, &seq, &started, &durMS, &bytes, &ok, &errText,
		&s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6], &s[7], &s[8], &s[9], &s[10], &s[11], &s[12], &s[13])
	if err != nil {
		t.Fatal(err)
	}
	if id != ck.ID || workload != "ns/app/c" || node != "n1" || method != "kubelet" || seq != 12 || !started.Equal(t0) ||
		durMS != 1234 || bytes != 45<<20 || !ok || errText != nil {
		t.Fatalf("checkpoint row: %s %s %s %s %d %v %d %d %v %v", id, workload, node, method, seq, started, durMS, bytes, ok, errText)
	}
	want := []int64{1100, 812345, 700000, 650000, 100000, 200, 99000, 3, 4, 5, 6, 700, 8, 690}
	for i, w := range want {
		if s[i] == nil || *s[i] != w {
			t.Errorf("CRIU column %d: %v, want %d", i, s[i], w)
		}
	}

	// The failed one: no stats, no seq, the error cleaned.
	var nullStats int64
	err = db.QueryRow(ctx, `SELECT node, seq, ok, error, num_nulls(freezing_time_us, frozen_time_us, memdump_time_us, memwrite_time_us,
		pages_scanned, pages_skipped_parent, pages_written, pages_lazy, page_pipes, page_pipe_bufs, irmap_resolve_us,
		shpages_scanned, shpages_skipped_parent, shpages_written) FROM checkpoints WHERE id = $1`, ckFail.ID).Scan(&node, &s[0], &ok, &errText, &nullStats)
	if err != nil {
		t.Fatal(err)
	}
	if node != "n2" || s[0] != nil || ok || errText == nil || *errText != "rpc error: deadline\uFFFD exceeded" || nullStats != 14 {
		t.Fatalf("failed checkpoint row: %s %v %v %v %d", node, s[0], ok, errText, nullStats)
	}

	// Transfers.
	var from, to string
	err = db.QueryRow(ctx, "SELECT from_node, to_node, seq, started_at, duration_ms, bytes, ok FROM transfers WHERE id = $1", tr.ID).
		Scan(&from, &to, &seq, &started, &durMS, &bytes, &ok)
	if err != nil || from != "n1" || to != "n2" || seq != 12 || !started.Equal(tr.Start) || durMS != 2500 || bytes != 45<<20 || !ok {
		t.Fatalf("transfer row: %v %s %s %d %v %d %d %v", err, from, to, seq, started, durMS, bytes, ok)
	}
	err = db.QueryRow(ctx, "SELECT ok, error FROM transfers WHERE id = $1", trFail.ID).Scan(&ok, &errText)
	if err != nil || ok || errText == nil || *errText != "connection refused" {
		t.Fatalf("failed transfer row: %v %v %v", err, ok, errText)
	}

	// Restores.
	var outcome string
	var age int64
	var reason *string
	err = db.QueryRow(ctx, "SELECT node, checkpoint_seq, checkpoint_age_ms, started_at, duration_ms, outcome, error, reason FROM restores WHERE id = $1", rs.ID).
		Scan(&node, &seq, &age, &started, &durMS, &outcome, &errText, &reason)
	if err != nil || node != "n2" || seq != 12 || age != 8000 || !started.Equal(rs.Start) || durMS != 3000 || outcome != "success" || errText != nil || reason == nil || *reason != "node n1 dead" {
		t.Fatalf("restore row: %v %s %d %d %v %d %s %v %v", err, node, seq, age, started, durMS, outcome, errText, reason)
	}
	err = db.QueryRow(ctx, "SELECT outcome, error FROM restores WHERE id = $1", rsFail.ID).Scan(&outcome, &errText)
	if err != nil || outcome != "failure" || errText == nil || *errText != "criu: restore failed" {
		t.Fatalf("failed restore row: %v %s %v", err, outcome, errText)
	}

	// The failover, merged into one row.
	var det, dec, res time.Time
	var epoch int64
	var fromN, toN *string
	var decideMS, restoreMS, totalMS int64
	err = db.QueryRow(ctx, `SELECT epoch, reason, from_node, to_node, detected_at, decided_at, restored_at, decide_ms, restore_ms, total_ms
		FROM failover_durations WHERE id = $1`, fid).Scan(&epoch, &reason, &fromN, &toN, &det, &dec, &res, &decideMS, &restoreMS, &totalMS)
	if err != nil {
		t.Fatal(err)
	}
	if epoch != 5 || reason == nil || *reason != "node n1 dead" || fromN == nil || *fromN != "n1" || toN == nil || *toN != "n2" ||
		!det.Equal(detected) || !dec.Equal(decided) || !res.Equal(restored) || decideMS != 2000 || restoreMS != 6000 || totalMS != 8000 {
		t.Fatalf("failover row: %d %v %v %v %v %v %v %d %d %d", epoch, reason, fromN, toN, det, dec, res, decideMS, restoreMS, totalMS)
	}
	for table, n := range map[string]int64{"checkpoints": 2, "transfers": 2, "restores": 2, "failovers": 1} {
		if got := queryInt(t, db, "SELECT count(*) FROM "+table); got != n {
			t.Errorf("%s: %d rows, want %d", table, got, n)
		}
	}
}

// TestPGRejectedRecord: a record the database refuses is dropped and
// counted; the records around it are written.
func TestPGRejectedRecord(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	r := New(Options{DSN: dsn, FlushInterval: 20 * time.Millisecond})
	a, b := CheckpointRecord{ID: NewID(), Workload: "ns/p/c", OK: true}, CheckpointRecord{ID: NewID(), Workload: "ns/p/c", OK: true}
	r.Checkpoint(a)
	r.enqueue(poison{})
	r.Checkpoint(b)
	stop := run(t, r)
	waitFor(t, "the good records", 20*time.Second, func() bool { return r.Stats().Written == 2 })
	stop()
	st := r.Stats()
	if st.Rejected != 1 || st.Queued != 0 || !strings.Contains(st.LastError, "refused poison") {
		t.Fatalf("stats %+v", st)
	}
	if n := queryInt(t, db, "SELECT count(*) FROM checkpoints WHERE id IN ($1, $2)", a.ID, b.ID); n != 2 {
		t.Fatalf("%d of the 2 good records written", n)
	}
	if v := value(t, scrape(t, r), "crfailoverd_metrics_records_dropped_total", nil); v != 1 {
		t.Fatalf("dropped counter %v", v)
	}
}

// poison is a record the database always refuses (division by zero).
type poison struct{}

func (poison) statement() (string, []any) { return "SELECT 1 / $1::integer", []any{0} }
func (poison) describe() string           { return "poison" }

// TestPGShutdownFlush: records queued when the context ends are written
// within the grace period.
func TestPGShutdownFlush(t *testing.T) {
	dsn, db := pgSchema(t)
	r := New(Options{DSN: dsn, FlushInterval: time.Hour, ShutdownGrace: 10 * time.Second})
	stop := run(t, r)
	waitFor(t, "connected", 20*time.Second, func() bool { return r.Stats().DBConnected })
	for i := 0; i < 3; i++ {
		r.Restore(RestoreRecord{Workload: "ns/p/c", Seq: uint64(i + 1), OK: true})
	}
	stop()
	if n := queryInt(t, db, "SELECT count(*) FROM restores"); n != 3 || r.Stats().Written != 3 {
		t.Fatalf("%d rows (written %d), want 3", n, r.Stats().Written)
	}
}

// TestPGOutage: the connection is cut while records keep coming; they are
// written once it is back, each once.
func TestPGOutage(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	p := newProxy(t, serverAddr(t, dsn))
	log, logs := testLogger(t)
	r := New(Options{DSN: withHost(t, dsn, p.addr()), Node: "n1", BatchSize: 4, FlushInterval: 10 * time.Millisecond, Log: log})
	run(t, r)

	var ids []string
	record := func(i int) {
		id := NewID()
		ids = append(ids, id)
		switch i % 3 {
		case 0:
			r.Checkpoint(CheckpointRecord{ID: id, Workload: "ns/p/c", Method: "cri", Seq: uint64(i), OK: true, Duration: time.Second})
		case 1:
			r.Transfer(TransferRecord{ID: id, Workload: "ns/p/c", To: "n2", Seq: uint64(i), OK: true})
		case 2:
			r.Restore(RestoreRecord{ID: id, Workload: "ns/p/c", Seq: uint64(i), OK: true})
		}
	}
	for i := 0; i < 10; i++ {
		record(i)
	}
	waitFor(t, "10 records written", 20*time.Second, func() bool { return r.Stats().Written == 10 })

	p.cut()
	start := time.Now()
	for i := 10; i < 35; i++ {
		record(i)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("recording during the outage took %s", d)
	}
	waitFor(t, "the writer to notice the outage", 20*time.Second, func() bool {
		st := r.Stats()
		return !st.DBConnected && st.LastError != ""
	})
	time.Sleep(300 * time.Millisecond) // a few reconnection attempts
	if st := r.Stats(); st.Queued != 25 || st.Written != 10 || st.DBConnected {
		t.Fatalf("during the outage: %+v", st)
	}
	if v := value(t, scrape(t, r), "crfailoverd_metrics_db_connected", nil); v != 0 {
		t.Fatal("db_connected gauge is 1 during the outage")
	}
	if v := value(t, scrape(t, r), "crfailoverd_metrics_queue_length", nil); v != 25 {
		t.Fatalf("queue length gauge %v during the outage", v)
	}

	p.restore()
	waitFor(t, "35 records written", 20*time.Second, func() bool { return r.Stats().Written == 35 })
	if st := r.Stats(); st.Queued != 0 || st.Dropped != 0 || !st.DBConnected {
		t.Fatalf("after the outage: %+v", st)
	}
	checkOnce(t, db, ids)
	if !strings.Contains(logs.String(), "database unavailable") {
		t.Errorf("the outage was not logged: %s", logs)
	}
}

// checkOnce checks that each id is stored exactly once, and nothing else.
func checkOnce(t *testing.T, db *pgx.Conn, ids []string) {
	t.Helper()
	got := queryStrings(t, db, `SELECT id::text FROM checkpoints UNION ALL SELECT id::text FROM transfers
		UNION ALL SELECT id::text FROM restores UNION ALL SELECT id::text FROM failovers`)
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("record %s stored %d times", id, count[id])
		}
	}
	if len(got) != len(count) || len(count) != len(ids) {
		t.Errorf("%d rows, %d distinct ids, want %d", len(got), len(count), len(ids))
	}
}

// TestPGLostCommitReply: the server commits a batch but the reply is lost
// with the connection; the batch is retried and nothing is duplicated.
func TestPGLostCommitReply(t *testing.T) {
	dsn, db := pgSchema(t)
	fastRetries(t)
	p := newProxy(t, serverAddr(t, dsn))
	const n = 6
	r := New(Options{DSN: withHost(t, dsn, p.addr()), Node: "n1", BatchSize: n, FlushInterval: time.Hour})
	run(t, r)
	first := NewID()
	r.Checkpoint(CheckpointRecord{ID: first, Workload: "ns/p/c", OK: true})
	for i := 1; i < n; i++ { // a full batch wakes the writer
		r.Checkpoint(CheckpointRecord{ID: NewID(), Workload: "ns/warmup/c", OK: true})
	}
	waitFor(t, "the first batch", 20*time.Second, func() bool { return r.Stats().Written == n })
	if _, err := db.Exec(context.Background(), "DELETE FROM checkpoints WHERE workload = 'ns/warmup/c'"); err != nil {
		t.Fatal(err)
	}

	p.armCommitTrap()
	fid := FailoverID("ns/p/c", 3)
	ids := []string{first, NewID(), NewID(), NewID(), fid}
	t0 := time.Now().Truncate(time.Microsecond)
	r.Checkpoint(CheckpointRecord{ID: ids[1], Workload: "ns/p/c", Method: "cri", Seq: 2, OK: true})
	r.Transfer(TransferRecord{ID: ids[2], Workload: "ns/p/c", To: "n2", Seq: 2, OK: true})
	r.Restore(RestoreRecord{ID: ids[3], Workload: "ns/p/c", Seq: 2, OK: true})
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/p/c", From: "n1", To: "n2", Epoch: 3, Decided: t0})
	r.Failover(FailoverRecord{ID: fid, Workload: "ns/p/c", To: "n2", Restored: t0.Add(time.Second)})
	r.Checkpoint(CheckpointRecord{ID: ids[0], Workload: "ns/p/c", OK: true}) // a duplicate by ID: stored once

	select {
	case <-p.trapped:
	case <-time.After(20 * time.Second):
		t.Fatal("the commit trap did not fire")
	}
	// The server committed, the writer does not know: the rows are
	// there, the records still queued.
	waitFor(t, "the writer to see the failure", 20*time.Second, func() bool { return !r.Stats().DBConnected })
	if got := queryInt(t, db, "SELECT count(*) FROM checkpoints") + queryInt(t, db, "SELECT count(*) FROM transfers") +
		queryInt(t, db, "SELECT count(*) FROM restores") + queryInt(t, db, "SELECT count(*) FROM failovers"); got != int64(len(ids)) {
		t.Fatalf("%d rows after the lost commit reply, want %d (the batch committed)", got, len(ids))
	}
	if st := r.Stats(); st.Queued != n || st.Written != n {
		t.Fatalf("after the lost reply: %+v", st)
	}

	p.restore()
	waitFor(t, "the batch retried", 20*time.Second, func() bool { return r.Stats().Written == 2*n })
	checkOnce(t, db, ids)
	var dec, res time.Time
	if err := db.QueryRow(context.Background(), "SELECT decided_at, restored_at FROM failovers WHERE id = $1", fid).Scan(&dec, &res); err != nil {
		t.Fatal(err)
	}
	if !dec.Equal(t0) || !res.Equal(t0.Add(time.Second)) {
		t.Fatalf("failover after the retry: decided %v restored %v", dec, res)
	}
}

// proxy is a TCP proxy to the PostgreSQL server that the tests can cut,
// and that can lose the reply to a COMMIT.
type proxy struct {
	t       *testing.T
	l       net.Listener
	target  string
	trapped chan struct{} // closed when the commit trap fired

	mu    sync.Mutex
	down  bool
	armed bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, target: target, conns: map[net.Conn]bool{}, trapped: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

// cut closes every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// armCommitTrap: the next COMMIT a client sends reaches the server, whose
// reply is then discarded; the proxy cuts everything (as cut) and closes
// trapped.
func (p *proxy) armCommitTrap() {
	p.mu.Lock()
	p.armed = true
	p.mu.Unlock()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		var swallow atomic.Bool
		p.wg.Add(2)
		go p.fromClient(c, s, &swallow)
		go p.fromServer(c, s, &swallow)
	}
}

func (p *proxy) drop(c, s net.Conn) {
	c.Close()
	s.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

// fromClient forwards the client's messages, watching for a COMMIT (a
// simple-protocol Query message, as pgx sends it).
func (p *proxy) fromClient(c, s net.Conn, swallow *atomic.Bool) {
	defer p.wg.Done()
	defer p.drop(c, s)
	in := bufio.NewReader(c)
	// Untyped messages first: SSL or GSS encryption requests (refused by
	// the test server), then the startup message.
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			return
		}
		body := make([]byte, int(binary.BigEndian.Uint32(hdr[:4]))-8)
		if _, err := io.ReadFull(in, body); err != nil {
			return
		}
		if _, err := s.Write(append(hdr[:], body...)); err != nil {
			return
		}
		if code := binary.BigEndian.Uint32(hdr[4:]); code != 80877103 && code != 80877104 {
			break
		}
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			return
		}
		body := make([]byte, int(binary.BigEndian.Uint32(hdr[1:]))-4)
		if _, err := io.ReadFull(in, body); err != nil {
			return
		}
		if hdr[0] == 'Q' && strings.EqualFold(strings.TrimRight(string(body), "\x00; "), "commit") {
			p.mu.Lock()
			if p.armed {
				p.armed = false
				swallow.Store(true)
			}
			p.mu.Unlock()
		}
		if _, err := s.Write(append(hdr[:], body...)); err != nil {
			return
		}
	}
}

// fromServer forwards the server's replies, except the one to a trapped
// COMMIT: then it cuts everything.
func (p *proxy) fromServer(c, s net.Conn, swallow *atomic.Bool) {
	defer p.wg.Done()
	defer p.drop(c, s)
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 && swallow.Load() {
			// The client has read every earlier reply before sending
			// COMMIT: this is the reply to it. Lose it.
			if !bytes.Contains(buf[:n], []byte("COMMIT")) {
				p.t.Errorf("trapped reply is not COMMIT's: %q", buf[:n])
			}
			p.cut()
			close(p.trapped)
			return
		}
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.t.Logf("proxy: %v", err)
			}
			return
		}
	}
}
