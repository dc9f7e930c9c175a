package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
)

func TestPIDFromInfo(t *testing.T) {
	tests := []struct {
		name    string
		info    map[string]string
		want    int
		wantErr string
	}{
		{"containerd", map[string]string{"info": `{"sandboxID":"s","pid":4242,"removing":false}`}, 4242, ""},
		{"CRI-O", map[string]string{"info": `{"sandboxID":"s","pid":77,"runtimeSpec":{}}`}, 77, ""},
		{"no info", map[string]string{}, 0, `no "info"`},
		{"exited: pid 0", map[string]string{"info": `{"pid":0}`}, 0, "gives pid 0"},
		{"malformed", map[string]string{"info": `{`}, 0, "verbose status info"},
	}
	for _, tt := range tests {
		got, err := pidFromInfo(tt.info)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: %d, %v; want %d, %q", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewFenceGuardOnlyInClusterMode(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	board := ownership.NewBoard("n1")
	tests := []struct {
		name    string
		enabled bool
		guard   bool
		want    int
	}{
		{"single node", false, true, 0},
		{"cluster, guard on (default)", true, true, 1},
		{"cluster, guard off", true, false, 0},
	}
	for _, tt := range tests {
		c := config.Default()
		c.Cluster.Enabled, c.Cluster.FenceGuard = tt.enabled, tt.guard
		if got := len(newFenceGuard(c, board, nil, log)); got != tt.want {
			t.Errorf("%s: %d components, want %d", tt.name, got, tt.want)
		}
	}
	if !config.Default().Cluster.FenceGuard {
		t.Error("cluster.fence_guard is off by default")
	}
}
