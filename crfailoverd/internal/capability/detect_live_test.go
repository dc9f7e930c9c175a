package capability_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
)

// criAsker is what the daemon hands Detect (wire_caps.go does the same).
type criAsker struct{ c *cri.Client }

func (a criAsker) RuntimeVersion(ctx context.Context) (string, string, error) {
	return a.c.RuntimeVersion(ctx)
}

func (a criAsker) CheckpointConfig(ctx context.Context) (capability.RuntimeConfig, error) {
	cfg, err := a.c.CheckpointConfig(ctx)
	return capability.RuntimeConfig(cfg), err
}

func (a criAsker) RestorePodImplemented(ctx context.Context) (bool, error) {
	return a.c.RestorePodImplemented(ctx)
}

// TestDetectLive asks a real runtime: CRF_CAPS_SOCKET names its CRI
// socket, CRF_CAPS_WANT the restore path it must report, CRF_CAPS_CRIU
// the criu binary to ask (optional). Skipped without a socket.
func TestDetectLive(t *testing.T) {
	sock := os.Getenv("CRF_CAPS_SOCKET")
	if sock == "" {
		t.Skip("CRF_CAPS_SOCKET not set")
	}
	c, err := cri.Dial(sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	n, err := capability.Detect(context.Background(), capability.Deps{Runtime: criAsker{c},
		Host: capability.SystemHost{CRIU: os.Getenv("CRF_CAPS_CRIU")}})
	took := time.Since(start)
	if err != nil {
		t.Errorf("Detect: %v", err)
	}
	t.Logf("detect_ms=%d %s", took.Milliseconds(), n.Summary())
	if want := os.Getenv("CRF_CAPS_WANT"); want != "" && string(n.Restore) != want {
		t.Errorf("restore = %q (%s), want %q", n.Restore, n.RestoreReason, want)
	}
	if len(n.CPUFlags) == 0 || n.Kernel == "" {
		t.Errorf("host facts missing: %+v", n)
	}
}
