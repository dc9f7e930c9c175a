package metrics

import (
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// durationBuckets cover sub-second to tens-of-seconds operations (seconds).
var durationBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120}

// raftStates are the states crfailoverd_raft_state always exports.
var raftStates = []string{"follower", "candidate", "leader", "shutdown"}

type promMetrics struct {
	reg *prometheus.Registry

	checkpointDuration *prometheus.HistogramVec // {method}
	transferDuration   prometheus.Histogram
	restoreDuration    *prometheus.HistogramVec // {outcome}

	checkpoints        *prometheus.CounterVec // {outcome}
	checkpointFailures prometheus.Counter
	restoreFailures    prometheus.Counter
	transferFailures   prometheus.Counter
	failovers          prometheus.Counter
	dropped            prometheus.Counter
	checkpointBytes    prometheus.Counter
	transferBytes      prometheus.Counter
	written            prometheus.Counter

	workloads    prometheus.Gauge
	membersAlive prometheus.Gauge
	raftState    *prometheus.GaugeVec // {state}
	fenced       prometheus.Gauge
	dbConnected  prometheus.Gauge
	caps         *capGauges

	mu         sync.Mutex
	extraState string // a state outside raftStates currently exported
}

func newPromMetrics(reg *prometheus.Registry, queueLength func() float64) *promMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	const ns = "crfailoverd"
	m := &promMetrics{
		reg: reg,
		checkpointDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "checkpoint_duration_seconds",
			Help:    "Duration of successful checkpoint calls (kubelet or CRI), by method.",
			Buckets: durationBuckets,
		}, []string{"method"}),
		transferDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "transfer_duration_seconds",
			Help:    "Duration of successful checkpoint archive transfers to peers.",
			Buckets: durationBuckets,
		}),
		restoreDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "restore_duration_seconds",
			Help:    "Duration of restores, by outcome (success or failure).",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "checkpoints_total",
			Help: "Checkpoint attempts, by outcome (success or failure).",
		}, []string{"outcome"}),
		checkpointFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "checkpoint_failures_total",
			Help: "Failed checkpoint attempts.",
		}),
		restoreFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "restore_failures_total",
			Help: "Failed restore attempts.",
		}),
		transferFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "transfer_failures_total",
			Help: "Failed checkpoint archive transfers to peers.",
		}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "failovers_total",
			Help: "Failovers recorded by this node (each failover counted once).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "metrics_records_dropped_total",
			Help: "Metrics records dropped before reaching PostgreSQL (queue full, or refused by the database).",
		}),
		checkpointBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "checkpoint_bytes_total",
			Help: "Bytes of the checkpoint archives taken.",
		}),
		transferBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "transfer_bytes_total",
			Help: "Bytes of checkpoint archives transferred to peers.",
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "metrics_records_written_total",
			Help: "Metrics records committed to PostgreSQL.",
		}),
		workloads: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "workloads",
			Help: "Workloads this node checkpoints.",
		}),
		membersAlive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "cluster_members_alive",
			Help: "Cluster members this node sees alive.",
		}),
		raftState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "raft_state",
			Help: "1 for this node's current Raft state, 0 for the others.",
		}, []string{"state"}),
		fenced: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "fenced",
			Help: "1 when this node is fenced (cut off from the quorum), else 0.",
		}),
		dbConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "metrics_db_connected",
			Help: "1 when the metrics writer is connected to PostgreSQL, else 0.",
		}),
		caps: newCapGauges(ns),
	}
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Name: "metrics_queue_length",
		Help: "Metrics records waiting to be written to PostgreSQL.",
	}, queueLength)
	for _, o := range []string{OutcomeSuccess, OutcomeFailure} {
		m.checkpoints.WithLabelValues(o)
	}
	for _, s := range raftStates {
		m.raftState.WithLabelValues(s).Set(0)
	}
	reg.MustRegister(
		m.checkpointDuration, m.transferDuration, m.restoreDuration,
		m.checkpoints, m.checkpointFailures, m.restoreFailures, m.transferFailures,
		m.failovers, m.dropped, m.checkpointBytes, m.transferBytes, m.written,
		m.workloads, m.membersAlive, m.raftState, m.fenced, m.dbConnected, queue,
	)
	reg.MustRegister(m.caps.collectors()...)
	return m
}

func outcome(ok bool) string {
	if ok {
		return OutcomeSuccess
	}
	return OutcomeFailure
}

func (m *promMetrics) checkpoint(rec *CheckpointRecord) {
	m.checkpoints.WithLabelValues(outcome(rec.OK)).Inc()
	if !rec.OK {
		m.checkpointFailures.Inc()
		return
	}
	method := rec.Method
	if method == "" {
		method = "unknown"
	}
	m.checkpointDuration.WithLabelValues(method).Observe(rec.Duration.Seconds())
	if rec.Bytes > 0 {
		m.checkpointBytes.Add(float64(rec.Bytes))
	}
}

func (m *promMetrics) transfer(rec *TransferRecord) {
	if !rec.OK {
		m.transferFailures.Inc()
		return
	}
	m.transferDuration.Observe(rec.Duration.Seconds())
	if rec.Bytes > 0 {
		m.transferBytes.Add(float64(rec.Bytes))
	}
}

func (m *promMetrics) restore(rec *RestoreRecord) {
	m.restoreDuration.WithLabelValues(outcome(rec.OK)).Observe(rec.Duration.Seconds())
	if !rec.OK {
		m.restoreFailures.Inc()
	}
}

func (m *promMetrics) failover(isNew bool) {
	if isNew {
		m.failovers.Inc()
	}
}

func (m *promMetrics) setGauges(workloads, membersAlive int, raftState string, fenced bool) {
	m.workloads.Set(float64(workloads))
	m.membersAlive.Set(float64(membersAlive))
	if fenced {
		m.fenced.Set(1)
	} else {
		m.fenced.Set(0)
	}
	state := strings.ToLower(strings.TrimSpace(raftState))
	m.mu.Lock()
	defer m.mu.Unlock()
	known := false
	for _, s := range raftStates {
		if s == state {
			known = true
			m.raftState.WithLabelValues(s).Set(1)
		} else {
			m.raftState.WithLabelValues(s).Set(0)
		}
	}
	if m.extraState != "" && m.extraState != state {
		m.raftState.DeleteLabelValues(m.extraState)
		m.extraState = ""
	}
	if !known && state != "" {
		m.raftState.WithLabelValues(state).Set(1)
		m.extraState = state
	}
}

func (m *promMetrics) setConnected(ok bool) {
	if ok {
		m.dbConnected.Set(1)
	} else {
		m.dbConnected.Set(0)
	}
}

// Handler serves the recorder's registry in the Prometheus exposition
// formats (text by default).
func (r *Recorder) Handler() http.Handler {
	return promhttp.HandlerFor(r.prom.reg, promhttp.HandlerOpts{
		Registry:          r.prom.reg, // counts the handler's own errors
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: false,
	})
}
