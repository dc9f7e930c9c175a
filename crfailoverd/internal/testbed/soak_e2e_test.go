package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestE2ESoak runs the nemesis soak (issue 15) on a 5-node bed for
// CRF_SOAK_DURATION (seed CRF_SOAK_SEED, default 1) and fails with every
// problem the checker found. It prints the "E2E soak: " line.
func TestE2ESoak(t *testing.T) {
	c := requireE2E(t)
	v := os.Getenv("CRF_SOAK_DURATION")
	if v == "" {
		t.Skip("the nemesis soak runs when CRF_SOAK_DURATION is set (make e2e: 2m, make soak: 10m)")
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 30*time.Second {
		t.Fatalf("CRF_SOAK_DURATION=%q: want a duration of at least 30s", v)
	}
	seed := int64(1)
	if s := os.Getenv("CRF_SOAK_SEED"); s != "" {
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("CRF_SOAK_SEED=%q: want an integer", s)
		}
	}
	bin := buildDaemon(t, c)
	c.DataTmpfs = SoakDataTmpfs
	b := upBed(t, c, 5)
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Minute)
	defer cancel()
	// Kept after the test (the bed's teardown leaves it): the report, the
	// timeline and the logs.
	out := filepath.Join(c.Dir, fmt.Sprintf("soak-%d", seed))
	t.Logf("soak output in %s", out)
	r, _, err := b.Soak(ctx, SoakConfig{Seed: seed, Duration: d, Kubelet: c.Kubelet, Out: out, Bin: bin}, TestWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("E2E soak: %s flavor=%s\n", r.Line(), b.Flavor())
	t.Logf("E2E soak: %s flavor=%s", r.Line(), b.Flavor())
	t.Logf("recovery per fault kind:\n%s", r.KindTable())
	for _, p := range r.Problems() {
		t.Error(p)
	}
}
