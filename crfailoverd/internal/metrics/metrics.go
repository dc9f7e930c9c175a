// Package metrics records what the daemon does, for operators and for the
// evaluation of checkpoint/restore: checkpoints (with CRIU's dump
// statistics), archive transfers to peers, restores and failovers.
//
// A [Recorder] feeds three sinks:
//
//   - PostgreSQL (optional, pgx/v5): records are queued in memory and a
//     single writer ([Recorder.Run]) inserts them in batches, one
//     transaction per batch. The schema is created and migrated when the
//     writer connects. The queue is bounded: when it is full the oldest
//     record is dropped and counted. The database being down, slow or
//     unreachable never blocks the caller; the writer reconnects with
//     backoff and retries the batch it was writing. Every record carries a
//     UUID and is inserted with ON CONFLICT, so a batch retried after a
//     lost commit reply is not inserted twice.
//   - Prometheus: histograms, counters and gauges in a registry served by
//     [Recorder.Handler].
//   - A ring of recent events, read by `crfailoverd events [--follow]`
//     through [Recorder.Events] and [Recorder.WaitEvents].
//
// Every recording method returns at once and is safe for concurrent use;
// the recording and reading methods of a nil *Recorder do nothing.
package metrics

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

// Defaults for the zero values of [Options].
const (
	DefaultQueueSize     = 10000
	DefaultBatchSize     = 500
	DefaultFlushInterval = time.Second
	DefaultShutdownGrace = 5 * time.Second
	DefaultEventBuffer   = 1000
)

// Outcomes, as stored in the restores table and in the outcome labels.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// Options configure a [Recorder].
type Options struct {
	// DSN is the PostgreSQL connection string (URL or key=value form).
	// "" disables the PostgreSQL sink; Prometheus and events stay on.
	DSN string
	// QueueSize bounds the records waiting for the database
	// (DefaultQueueSize when <= 0). The batch being written is kept apart
	// and can add at most BatchSize records while it is in flight.
	QueueSize int
	// BatchSize is the most records written in one transaction
	// (DefaultBatchSize when <= 0).
	BatchSize int
	// FlushInterval is how long a record may wait before the writer
	// flushes a partial batch (DefaultFlushInterval when <= 0).
	FlushInterval time.Duration
	// ShutdownGrace is how long Run keeps flushing after its context
	// ends (DefaultShutdownGrace when <= 0).
	ShutdownGrace time.Duration
	// EventBuffer is how many recent events are kept (DefaultEventBuffer
	// when <= 0).
	EventBuffer int
	// Node is this node's name, used for records that leave theirs empty.
	Node string
	// Log receives the writer's connection and error reports (nil: none).
	Log *slog.Logger
	// Registry is where the Prometheus metrics are registered; nil creates
	// a new registry that also holds the Go runtime and process
	// collectors.
	Registry *prometheus.Registry
}

// CheckpointRecord is one checkpoint attempt of a workload on a node.
type CheckpointRecord struct {
	// ID identifies the record: "" for a new random UUID, a UUID, or any
	// other string, which is mapped to a UUID derived from it (see [IDFor]).
	ID       string
	Workload string // namespace/pod/container
	Node     string // "" for Options.Node
	Method   string // "kubelet", "cri", ...
	Seq      uint64 // the checkpoint's sequence number (0 when it failed)
	Start    time.Time
	Duration time.Duration // of the kubelet/CRI checkpoint call
	Bytes    int64         // archive size
	OK       bool
	Error    string
	Stats    *archive.DumpStats // CRIU's stats-dump, nil when not available
}

// TransferRecord is one transfer of a checkpoint archive to a peer.
type TransferRecord struct {
	ID       string
	Workload string
	From     string // "" for Options.Node
	To       string
	Seq      uint64
	Start    time.Time
	Duration time.Duration
	Bytes    int64
	OK       bool
	Error    string
}

// RestoreRecord is one restore attempt of a workload on a node.
type RestoreRecord struct {
	ID            string
	Workload      string
	Node          string // "" for Options.Node
	Seq           uint64 // the checkpoint used
	Start         time.Time
	Duration      time.Duration
	CheckpointAge time.Duration // Start minus the checkpoint's creation time (<= 0: unknown)
	OK            bool
	Error         string
	Reason        string // why it was restored
}

// FailoverRecord is a failover of a workload from one node to another.
// The same failover is usually recorded several times as it progresses
// (detected, decided, restored), possibly by different nodes: records with
// the same ID update one row, each filling in what it knows. Zero times
// and empty strings leave the stored values alone. [FailoverID] gives the
// ID every node derives for the same workload and epoch.
type FailoverRecord struct {
	ID       string
	Workload string
	Reason   string
	From, To string
	Epoch    uint64
	Detected time.Time // the failure was detected (zero: unknown)
	Decided  time.Time // the new placement was decided (zero: not yet)
	Restored time.Time // the workload runs again (zero: not yet, or never)
	Error    string    // why the failover failed, if it did
}

// Event is one entry of the recent-events ring.
type Event struct {
	Seq      uint64            `json:"seq"` // increasing, starts at 1
	Time     time.Time         `json:"time"`
	Kind     string            `json:"kind"`
	Workload string            `json:"workload,omitempty"`
	Message  string            `json:"message"` // one human-readable line
	Fields   map[string]string `json:"fields,omitempty"`
}

// Stats describe the PostgreSQL sink.
type Stats struct {
	DBEnabled   bool      `json:"db_enabled"`   // a DSN was configured
	DBConnected bool      `json:"db_connected"` // the writer holds a working connection
	Queued      int       `json:"queued"`       // records not yet written (including the batch in flight)
	Written     uint64    `json:"written"`      // records committed
	Dropped     uint64    `json:"dropped"`      // records dropped because the queue was full
	Rejected    uint64    `json:"rejected"`     // records the database refused (bad data), dropped
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Recorder records checkpoints, transfers, restores and failovers.
type Recorder struct {
	o    Options
	log  *slog.Logger
	prom *promMetrics
	ev   *eventRing

	mu          sync.Mutex
	q           queue
	inflight    int // records taken by the writer, not yet committed
	written     uint64
	dropped     uint64
	rejected    uint64
	connected   bool
	lastErr     string
	lastErrAt   time.Time
	failoverIDs *seenSet
	deadAt      map[string]time.Time // node -> when a node-dead event reported it

	wake  chan struct{} // the queue holds a full batch
	runMu sync.Mutex    // one Run at a time
}

// New returns a recorder. Nothing touches the database until Run.
func New(o Options) *Recorder {
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = DefaultShutdownGrace
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &Recorder{
		o:           o,
		log:         log,
		ev:          newEventRing(o.EventBuffer),
		q:           newQueue(o.QueueSize),
		failoverIDs: newSeenSet(4096),
		deadAt:      map[string]time.Time{},
		wake:        make(chan struct{}, 1),
	}
	r.prom = newPromMetrics(o.Registry, r.queueLength)
	return r
}

// Registry returns the registry holding the recorder's metrics, for
// callers that add their own.
func (r *Recorder) Registry() *prometheus.Registry { return r.prom.reg }

// Checkpoint records a checkpoint attempt.
func (r *Recorder) Checkpoint(rec CheckpointRecord) {
	if r == nil {
		return
	}
	rec.ID = normalizeID(rec.ID)
	if rec.Node == "" {
		rec.Node = r.o.Node
	}
	if rec.Start.IsZero() {
		rec.Start = time.Now().Add(-rec.Duration)
	}
	r.prom.checkpoint(&rec)
	r.ev.add(checkpointEvent(&rec))
	r.enqueue(&rec)
}

// Transfer records a transfer of an archive to a peer.
func (r *Recorder) Transfer(rec TransferRecord) {
	if r == nil {
		return
	}
	rec.ID = normalizeID(rec.ID)
	if rec.From == "" {
		rec.From = r.o.Node
	}
	if rec.Start.IsZero() {
		rec.Start = time.Now().Add(-rec.Duration)
	}
	r.prom.transfer(&rec)
	r.ev.add(transferEvent(&rec))
	r.enqueue(&rec)
}

// Restore records a restore attempt.
func (r *Recorder) Restore(rec RestoreRecord) {
	if r == nil {
		return
	}
	rec.ID = normalizeID(rec.ID)
	if rec.Node == "" {
		rec.Node = r.o.Node
	}
	if rec.Start.IsZero() {
		rec.Start = time.Now().Add(-rec.Duration)
	}
	r.prom.restore(&rec)
	r.ev.add(restoreEvent(&rec))
	r.enqueue(&rec)
}

// Failover records a failover, or updates the failover with the same ID.
// crfailoverd_failovers_total counts the IDs this recorder has not seen
// before (it remembers the last few thousand).
func (r *Recorder) Failover(rec FailoverRecord) {
	if r == nil {
		return
	}
	rec.ID = normalizeID(rec.ID)
	r.mu.Lock()
	isNew := r.failoverIDs.add(rec.ID)
	r.mu.Unlock()
	r.prom.failover(isNew)
	r.ev.add(failoverEvent(&rec))
	r.enqueue(&rec)
}

// Note adds an event to the ring only (not to the database): things worth
// showing in `crfailoverd events` that are not records, such as a node
// found dead. fields may be nil.
func (r *Recorder) Note(kind, workload, message string, fields map[string]string) {
	if r == nil {
		return
	}
	var f map[string]string
	if len(fields) > 0 {
		f = make(map[string]string, len(fields))
		for k, v := range fields {
			f[k] = v
		}
	}
	r.ev.add(Event{Kind: kind, Workload: workload, Message: message, Fields: f})
}

// SetGauges sets the state gauges; the daemon calls it periodically.
// raftState is the Raft state ("Leader", "Follower", "Candidate",
// "Shutdown", in any case; "" when there is no cluster).
func (r *Recorder) SetGauges(workloads, membersAlive int, raftState string, fenced bool) {
	if r == nil {
		return
	}
	r.prom.setGauges(workloads, membersAlive, raftState, fenced)
}

// Events returns the retained events with a Seq above after, oldest
// first, at most limit of them (all when limit <= 0). When events after
// `after` were already evicted, it starts with the oldest retained one.
func (r *Recorder) Events(after uint64, limit int) []Event {
	if r == nil {
		return nil
	}
	return r.ev.since(after, limit)
}

// WaitEvents waits until there is an event with a Seq above after, or ctx
// ends, and returns the events above after (none when ctx ended first).
func (r *Recorder) WaitEvents(ctx context.Context, after uint64) []Event {
	if r == nil {
		<-ctx.Done()
		return nil
	}
	return r.ev.wait(ctx, after)
}

// LastEventSeq returns the Seq of the newest event (0 when none yet), so
// a follower can start with the events that come next.
func (r *Recorder) LastEventSeq() uint64 {
	if r == nil {
		return 0
	}
	return r.ev.last()
}

// Stats reports the state of the PostgreSQL sink.
func (r *Recorder) Stats() Stats {
	if r == nil {
		return Stats{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{
		DBEnabled:   r.o.DSN != "",
		DBConnected: r.connected,
		Queued:      r.q.len() + r.inflight,
		Written:     r.written,
		Dropped:     r.dropped,
		Rejected:    r.rejected,
		LastError:   r.lastErr,
		LastErrorAt: r.lastErrAt,
	}
}

// enqueue queues a record for the database, dropping the oldest one when
// the queue is full.
func (r *Recorder) enqueue(rec dbRecord) {
	if r.o.DSN == "" {
		return
	}
	r.mu.Lock()
	dropped := r.q.push(rec)
	if dropped > 0 {
		r.dropped += uint64(dropped)
	}
	full := r.q.len() >= r.o.BatchSize
	r.mu.Unlock()
	if dropped > 0 {
		r.prom.dropped.Add(float64(dropped))
	}
	if full {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

func (r *Recorder) queueLength() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return float64(r.q.len() + r.inflight)
}

// seenSet remembers the last n strings added.
type seenSet struct {
	m    map[string]struct{}
	ring []string
	next int
}

func newSeenSet(n int) *seenSet {
	return &seenSet{m: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add adds s and reports whether it was new.
func (s *seenSet) add(v string) bool {
	if _, ok := s.m[v]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.m, old)
	}
	s.ring[s.next] = v
	s.next = (s.next + 1) % len(s.ring)
	s.m[v] = struct{}{}
	return true
}

// clean makes s acceptable to PostgreSQL's text type: valid UTF-8 without
// NUL characters.
func clean(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
