// Package e2e holds crfailoverd's end-to-end tests: the real daemon binary
// on the real test bed (containerd, runc, CRIU in network-namespace nodes).
// They run with CRF_E2E=1 (make test) and are skipped otherwise.
package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

func TestMain(m *testing.M) {
	testbed.HelperMain()
	os.Exit(m.Run())
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// daemonBinary builds crfailoverd once per test run.
func daemonBinary(t *testing.T, c testbed.Config) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "crfailoverd-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "crfailoverd")
		args := []string{"build", "-o", binPath}
		if os.Getenv("CRF_E2E_RACE") != "" {
			args = append(args, "-race") // the daemon's data races end up in its log
		}
		cmd := exec.Command("go", append(args, "./crfailoverd")...)
		cmd.Dir = c.ModuleDir
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = err
			t.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build crfailoverd: %v", buildErr)
	}
	return binPath
}

// waitUntil polls cond every 100 ms until it returns true or within ends.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", within, what, lastErr)
}

// sample is one reading of the counter.
type sample struct {
	at    time.Time
	value int64
}

// sampler reads the app's counter on a node every 50 ms until stopped.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    chan struct{}
}

func startSampler(b *testbed.Bed, node string) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			v, err := b.Counter(ctx, node)
			cancel()
			if err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, sample{time.Now(), v})
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *sampler) halt() []sample {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample(nil), s.samples...)
}

// before returns the last sample taken before t.
func before(samples []sample, t time.Time) (sample, bool) {
	var out sample
	found := false
	for _, s := range samples {
		if s.at.Before(t) {
			out, found = s, true
		}
	}
	return out, found
}
