package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// pgTest runs scripts/pg-test.sh (start or stop) and returns what it
// prints: the DSN of the throwaway PostgreSQL on 127.0.0.1.
func pgTest(t *testing.T, c testbed.Config, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"scripts/pg-test.sh"}, args...)...)
	cmd.Dir = c.ModuleDir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/pg-test.sh %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

// forwardIntoNetns makes addr (on the host's loopback) answer on the same
// address inside a node's network namespace, so the daemon there reaches
// the host's PostgreSQL. It returns when the test ends.
func forwardIntoNetns(t *testing.T, netns, addr string) {
	t.Helper()
	ln, err := testbed.ListenInNetns(netns, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
}

// TestE2EMetrics runs the daemon with metrics into a real PostgreSQL:
// checkpoint rows with CRIU statistics, a restore row, rows made during a
// database outage arriving afterwards without duplicates, and the
// Prometheus endpoint parsed with the text-format parser.
func TestE2EMetrics(t *testing.T) {
	c := testbed.RequireE2E(t)
	bin := daemonBinary(t, c)
	dsn := pgTest(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// A schema of this test's own.
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	schema := fmt.Sprintf("e2e_%d", time.Now().UnixNano())
	if _, err := db.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	db.Close(ctx)
	t.Cleanup(func() {
		if db, err := pgx.Connect(context.Background(), pgTest(t, c)); err == nil {
			_, _ = db.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
			db.Close(context.Background())
		}
	})
	u, _ := url.Parse(dsn)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	daemonDSN := u.String()

	b := testbed.UpT(t, c, 1)
	n1, _ := b.Node("n1")
	forwardIntoNetns(t, n1.Netns, u.Host)
	if err := b.RunCounter(ctx, "n1", map[string]string{"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "1"}); err != nil {
		t.Fatal(err)
	}
	prom := net.JoinHostPort(n1.Addr.String(), "9100")
	cfg, err := b.DaemonConfig("n1", "cri", fmt.Sprintf("\n[metrics]\npostgres_dsn = %q\nprometheus_addr = %q\n", daemonDSN, prom))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartDaemon(ctx, "n1", bin, cfg); err != nil {
		t.Fatal(err)
	}
	cl, _ := b.Admin("n1")

	count := func(query string) int {
		t.Helper()
		db, err := pgx.Connect(ctx, daemonDSN)
		if err != nil {
			return -1
		}
		defer db.Close(ctx)
		var n int
		if err := db.QueryRow(ctx, query).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	waitUntil(t, 60*time.Second, "3 checkpoint rows with CRIU statistics", func() (bool, error) {
		return count("SELECT count(*) FROM checkpoints WHERE ok AND frozen_time_us > 0 AND pages_written > 0 AND memdump_time_us IS NOT NULL") >= 3, nil
	})

	// Database outage: checkpointing goes on, the rows arrive afterwards.
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := st.Workloads[0].Checkpoints
	pgTest(t, c, "stop")
	time.Sleep(4 * time.Second)
	st, err = cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	during := st.Workloads[0].Checkpoints
	if during < before+3 {
		t.Errorf("checkpoints during the database outage: %d -> %d, want at least 3 more", before, during)
	}
	pgTest(t, c)
	waitUntil(t, 60*time.Second, "the rows of the outage to arrive", func() (bool, error) {
		return count("SELECT count(*) FROM checkpoints WHERE ok") >= during, nil
	})
	if dup := count("SELECT count(*) - count(DISTINCT (workload, seq)) FROM checkpoints WHERE ok"); dup != 0 {
		t.Errorf("%d duplicate checkpoint rows", dup)
	}

	// A local restore makes a restore row.
	resp, err := http.Get(n1.AppURL() + "/kill")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitUntil(t, 60*time.Second, "a restore row", func() (bool, error) {
		return count("SELECT count(*) FROM restores WHERE outcome = 'success' AND checkpoint_seq > 0") >= 1, nil
	})

	// Prometheus, parsed with the text-format parser.
	mresp, err := http.Get("http://" + prom + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(mresp.Body)
	mresp.Body.Close()
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	var okTotal float64
	if f, ok := fams["crfailoverd_checkpoints_total"]; ok {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "success" {
					okTotal = m.GetCounter().GetValue()
				}
			}
		}
	}
	if okTotal < float64(during) {
		t.Errorf("crfailoverd_checkpoints_total{outcome=\"success\"} = %v, want at least %d", okTotal, during)
	}
	for _, name := range []string{"crfailoverd_checkpoint_duration_seconds", "crfailoverd_restore_duration_seconds", "crfailoverd_metrics_records_dropped_total", "crfailoverd_workloads"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	rows, restores := count("SELECT count(*) FROM checkpoints"), count("SELECT count(*) FROM restores")
	if !t.Failed() {
		fmt.Printf("E2E metrics: runtime=%s checkpoint_rows=%d restore_rows=%d db_outage_survived=true\n", b.Flavor(), rows, restores)
	}
}
