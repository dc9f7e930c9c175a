package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// restorePaths are the restore paths crfailoverd_restore_capable always
// exports (the capability package's paths other than "none").
var restorePaths = []string{"create", "restore-pod", "native"}

// capGauges say what the node's runtime can do:
// crfailoverd_checkpoint_capable 0/1 and crfailoverd_restore_capable{path}
// 1 for the path the node restores by, 0 for the others (all 0: the node
// cannot restore).
type capGauges struct {
	checkpoint prometheus.Gauge
	restore    *prometheus.GaugeVec // {path}

	mu    sync.Mutex
	extra string // a path outside restorePaths currently exported
}

func newCapGauges(ns string) *capGauges {
	g := &capGauges{
		checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "checkpoint_capable",
			Help: "1 when this node's runtime can checkpoint containers, else 0.",
		}),
		restore: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "restore_capable",
			Help: "1 for the path this node's runtime restores checkpoints by (create, restore-pod, native), 0 for the others; all 0 when it cannot restore.",
		}, []string{"path"}),
	}
	for _, p := range restorePaths {
		g.restore.WithLabelValues(p).Set(0)
	}
	return g
}

func (g *capGauges) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.checkpoint, g.restore}
}

func (g *capGauges) set(checkpoint bool, path string) {
	if checkpoint {
		g.checkpoint.Set(1)
	} else {
		g.checkpoint.Set(0)
	}
	if path == "none" {
		path = ""
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	known := path == ""
	for _, p := range restorePaths {
		if p == path {
			known = true
			g.restore.WithLabelValues(p).Set(1)
		} else {
			g.restore.WithLabelValues(p).Set(0)
		}
	}
	if g.extra != "" && g.extra != path {
		g.restore.DeleteLabelValues(g.extra)
		g.extra = ""
	}
	if !known {
		g.restore.WithLabelValues(path).Set(1)
		g.extra = path
	}
}

// SetCapabilities sets the capability gauges: whether the node's runtime
// can checkpoint, and the path it restores by ("none" or "" when it
// cannot). The daemon calls it at each change of its capabilities.
func (r *Recorder) SetCapabilities(checkpoint bool, restorePath string) {
	if r == nil {
		return
	}
	r.prom.caps.set(checkpoint, restorePath)
}
