package testbed

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// RequireE2E skips t unless end-to-end tests on the real runtime were asked
// for (CRF_E2E=1, which `make test` sets), and returns the bed's
// configuration.
func RequireE2E(t testing.TB) Config {
	t.Helper()
	if os.Getenv("CRF_E2E") == "" {
		t.Skip("end-to-end test on the real runtime: set CRF_E2E=1 (make test does)")
	}
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// UpT starts a bed of n nodes for a test and tears it down when the test
// ends, failing the test if anything is left behind. On failure it logs
// the end of every node's logs.
func UpT(t testing.TB, c Config, n int) *Bed {
	t.Helper()
	unlock, err := LockBed(c, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := Up(ctx, c, n, TestWriter{t})
	if err != nil {
		unlock()
	}
	if err != nil {
		t.Fatalf("bed up: %v", err)
	}
	t.Cleanup(func() {
		for _, n := range b.Nodes() {
			if log, err := os.ReadFile(n.DaemonLog()); err == nil && strings.Contains(string(log), "WARNING: DATA RACE") {
				t.Errorf("crfailoverd on %s reported a data race (built with CRF_E2E_RACE=1)", n.Name)
				i := strings.Index(string(log), "WARNING: DATA RACE")
				t.Log(string(log[i:min(len(log), i+6000)]))
			}
		}
		if t.Failed() {
			b.DumpLogs(t)
		}
		if err := Down(context.Background(), c, TestWriter{t}); err != nil {
			t.Errorf("bed down: %v", err)
		}
		if left := Leftovers(c); len(left) > 0 {
			t.Errorf("teardown left behind: %s", strings.Join(left, "; "))
		}
		unlock()
	})
	return b
}

// TestWriter writes to a test's log.
type TestWriter struct{ T testing.TB }

func (w TestWriter) Write(p []byte) (int, error) {
	w.T.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// DumpLogs logs the end of every node's logs.
func (b *Bed) DumpLogs(t testing.TB) {
	for _, n := range b.Nodes() {
		for _, what := range []string{"containerd", "crio", "kubelet-emulator", "kubelet", "crfailoverd"} {
			if tail, err := tailImportant(n.logPath(what), 60); err == nil {
				t.Logf("--- %s %s log (last lines above debug level):\n%s", n.Name, what, tail)
			}
		}
	}
}

// tailImportant is the last n lines of a log without its debug lines and
// Raft's retries towards an unreachable peer, which otherwise fill the
// tail of a node that saw another die.
func tailImportant(path string, n int) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.Contains(l, "level=DEBUG") || strings.Contains(l, "raft: failed to heartbeat") || strings.Contains(l, "raft: failed to appendEntries") {
			continue
		}
		keep = append(keep, l)
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n"), nil
}
