package peer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// ReplicatorOptions configures a Replicator. Zero values get defaults.
type ReplicatorOptions struct {
	// Clients returns the client of a peer (the daemon caches them).
	Clients func(peer string) (*Client, error)
	// MaxConcurrent bounds pushes in flight over all peers (default 4).
	MaxConcurrent int
	// Timeout bounds one push attempt (default 10 minutes).
	Timeout time.Duration
	// MaxTries is how many attempts an entry gets per peer (default 5).
	MaxTries int
	// Backoff is the delay before the first retry; it doubles with each
	// further one, up to a minute (default 1 second).
	Backoff time.Duration
	// OnReplicated is called when the peer has committed the entry; the
	// daemon records the new holder in Raft. It runs on the peer's worker,
	// so it delays that peer's next push (only).
	OnReplicated func(e store.Entry, peer string, took time.Duration, bytes int64)
	// OnFailed is called when the Replicator gives up on an entry for a
	// peer: after MaxTries failed attempts, or at once when the local
	// archive is gone. Attempts that will be retried, and entries
	// superseded by a newer one, are only logged.
	OnFailed func(e store.Entry, peer string, err error)
	// Log receives per-attempt failures (nil: discarded).
	Log *slog.Logger
	// Aside sets aside peers that cannot take archives (nil: one with
	// the defaults: 30 s after a ResourceExhausted refusal or 3 failed
	// pushes in a row, doubling up to 5 minutes, reset on a success).
	// While a peer is set aside its queue waits, and the entries it held
	// are reported to OnFailed with an error wrapping ErrSetAside, so the
	// caller can send them to other peers (see SetAside).
	Aside *Aside
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Replicator pushes local checkpoints to peers. Each peer has its own
// queue, worked by its own goroutine one push at a time, so a slow or dead
// peer delays only itself; a semaphore bounds the pushes in flight over
// all peers. A queue holds at most one entry per workload: a newer entry
// replaces a waiting older one ("latest wins"), so a peer that fell behind
// catches up with the newest checkpoint only.
type Replicator struct {
	o   ReplicatorOptions
	sem chan struct{}

	mu     sync.Mutex
	queues map[string]*queue
	ctx    context.Context // Run's, while it runs
	wg     sync.WaitGroup  // workers
}

// queue is one peer's backlog. Fields are guarded by Replicator.mu.
type queue struct {
	peer     string
	waiting  []*job // at most one per workload, oldest arrival first
	inflight *job
	working  bool          // a worker goroutine owns the queue
	wake     chan struct{} // capacity 1: nudges a worker waiting out a backoff
}

// job is an entry to push to one peer.
type job struct {
	e     store.Entry
	tries int       // failed attempts so far
	after time.Time // not before this (backoff)
}

// NewReplicator returns a Replicator; pushes start once Run runs.
func NewReplicator(o ReplicatorOptions) *Replicator {
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 4
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.MaxTries <= 0 {
		o.MaxTries = 5
	}
	if o.Backoff <= 0 {
		o.Backoff = time.Second
	}
	if o.OnReplicated == nil {
		o.OnReplicated = func(store.Entry, string, time.Duration, int64) {}
	}
	if o.OnFailed == nil {
		o.OnFailed = func(store.Entry, string, error) {}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Aside == nil {
		o.Aside = &Aside{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Replicator{o: o, sem: make(chan struct{}, o.MaxConcurrent), queues: map[string]*queue{}}
}

// Enqueue schedules e to be pushed to each of targets. For a peer that
// already waits for (or is receiving) the same or a newer entry of the
// workload, it does nothing; a waiting older entry is replaced.
func (r *Replicator) Enqueue(e store.Entry, targets []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range targets {
		q := r.queues[p]
		if q == nil {
			q = &queue{peer: p, wake: make(chan struct{}, 1)}
			r.queues[p] = q
		}
		if q.add(e) {
			r.startLocked(q)
		}
	}
}

// Run pushes until ctx ends, then returns once in-flight pushes have
// stopped. Entries not yet replicated, including interrupted ones, stay
// queued for a later Run. Run must not be called again before it has
// returned.
func (r *Replicator) Run(ctx context.Context) {
	r.mu.Lock()
	if r.ctx != nil {
		r.mu.Unlock()
		panic("peer: Replicator.Run called while running")
	}
	r.ctx = ctx
	for _, q := range r.queues {
		if len(q.waiting) > 0 {
			r.startLocked(q)
		}
	}
	r.mu.Unlock()

	<-ctx.Done()
	r.mu.Lock()
	r.ctx = nil // no new workers from here on
	r.mu.Unlock()
	r.wg.Wait()
}

// SetAside reports whether peer is set aside now (it refused archives
// for lack of room, or failed pushes in a row), and until when: choose
// another peer for new replicas meanwhile.
func (r *Replicator) SetAside(peer string) (until time.Time, ok bool) {
	return r.o.Aside.Until(peer, r.o.Now())
}

// Pending returns, per peer with a backlog, the entries waiting or being
// pushed.
func (r *Replicator) Pending() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]int{}
	for p, q := range r.queues {
		n := len(q.waiting)
		if q.inflight != nil {
			n++
		}
		if n > 0 {
			m[p] = n
		}
	}
	return m
}

// add queues e unless the queue already covers it; it reports whether the
// queue changed.
func (q *queue) add(e store.Entry) bool {
	if q.inflight != nil && q.inflight.e.Workload == e.Workload && q.inflight.e.Seq >= e.Seq {
		return false
	}
	for i, j := range q.waiting {
		if j.e.Workload == e.Workload {
			if j.e.Seq >= e.Seq {
				return false
			}
			q.waiting[i] = &job{e: e} // latest wins, keeping the workload's place in line
			return true
		}
	}
	q.waiting = append(q.waiting, &job{e: e})
	return true
}

// next returns the index of the first job due at now, or -1 and how long
// until one is due (0: the queue is empty).
func (q *queue) next(now time.Time) (int, time.Duration) {
	var wait time.Duration
	for i, j := range q.waiting {
		d := j.after.Sub(now)
		if d <= 0 {
			return i, 0
		}
		if wait == 0 || d < wait {
			wait = d
		}
	}
	return -1, wait
}

// superseded reports whether a newer entry of e's workload is waiting.
func (q *queue) superseded(e store.Entry) bool {
	for _, j := range q.waiting {
		if j.e.Workload == e.Workload && j.e.Seq > e.Seq {
			return true
		}
	}
	return false
}

// startLocked starts q's worker if Run is running and there is none, and
// nudges an existing one. The caller holds r.mu.
func (r *Replicator) startLocked(q *queue) {
	if r.ctx == nil || r.ctx.Err() != nil {
		return
	}
	if !q.working {
		q.working = true
		r.wg.Add(1)
		go r.work(r.ctx, q)
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// work pushes q's jobs one at a time until the queue is empty or ctx ends.
func (r *Replicator) work(ctx context.Context, q *queue) {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		now := r.o.Now()
		i, wait := q.next(now)
		if until, aside := r.o.Aside.Until(q.peer, now); aside && i >= 0 {
			i, wait = -1, until.Sub(now) // set aside: its queue waits
		}
		if (i < 0 && wait == 0) || ctx.Err() != nil {
			q.working = false // under the same lock as the check: Enqueue starts a new worker
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if i < 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-q.wake:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}

		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		// Take the job only now that a slot is ours, so that entries
		// enqueued while waiting for it can still replace it.
		r.mu.Lock()
		i, _ = q.next(r.o.Now())
		if _, aside := r.o.Aside.Until(q.peer, r.o.Now()); aside {
			i = -1
		}
		if i < 0 {
			r.mu.Unlock()
			<-r.sem
			continue
		}
		j := q.waiting[i]
		q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
		q.inflight = j
		r.mu.Unlock()

		took, err := r.push(ctx, q.peer, j.e)
		<-r.sem
		r.finish(ctx, q, j, took, err)
	}
}

// push makes one attempt to push e to peer.
func (r *Replicator) push(ctx context.Context, peer string, e store.Entry) (time.Duration, error) {
	c, err := r.o.Clients(peer)
	if err != nil {
		return 0, fmt.Errorf("get client for %s: %w", peer, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	start := time.Now()
	err = c.Push(ctx, e, nil)
	return time.Since(start), err
}

// finish records the outcome of pushing j to q's peer.
func (r *Replicator) finish(ctx context.Context, q *queue, j *job, took time.Duration, err error) {
	log := r.o.Log.With(slog.String("peer", q.peer), slog.String("workload", j.e.Workload.String()), slog.Uint64("seq", j.e.Seq))
	r.mu.Lock()
	q.inflight = nil
	if err == nil {
		r.o.Aside.Record(q.peer, nil, r.o.Now())
		r.mu.Unlock()
		log.Debug("replicated checkpoint", slog.Duration("took", took), slog.Int64("bytes", j.e.Size))
		r.o.OnReplicated(j.e, q.peer, took, j.e.Size)
		return
	}
	if ctx.Err() != nil { // shutting down: keep the entry for a later Run
		if !q.superseded(j.e) {
			q.waiting = append([]*job{j}, q.waiting...)
		}
		r.mu.Unlock()
		return
	}
	j.tries++
	superseded := q.superseded(j.e)
	setAside, until, why := r.o.Aside.Record(q.peer, err, r.o.Now())
	if setAside {
		// Hand this entry and every waiting one back, for other peers.
		moved := q.waiting
		if !superseded {
			moved = append([]*job{j}, moved...)
		}
		q.waiting = nil
		r.mu.Unlock()
		log.Warn("peer set aside; its replicas go to other peers meanwhile", slog.String("reason", why),
			slog.Time("until", until), slog.Int("entries", len(moved)))
		for _, m := range moved {
			r.o.OnFailed(m.e, q.peer, fmt.Errorf("replicate %s seq %d to %s: %w until %s: %s", m.e.Workload, m.e.Seq, q.peer,
				ErrSetAside, until.UTC().Format(time.RFC3339), why))
		}
		return
	}
	giveUp := !superseded && (j.tries >= r.o.MaxTries || errors.Is(err, fs.ErrNotExist))
	var retryIn time.Duration
	if !superseded && !giveUp {
		retryIn = r.backoff(j.tries)
		j.after = r.o.Now().Add(retryIn)
		q.waiting = append([]*job{j}, q.waiting...)
	}
	r.mu.Unlock()

	switch {
	case superseded:
		log.Info("replication attempt failed; a newer checkpoint replaces it", slog.Int("try", j.tries), slog.String("err", err.Error()))
	case giveUp:
		log.Warn("giving up replicating checkpoint", slog.Int("try", j.tries), slog.String("err", err.Error()))
		r.o.OnFailed(j.e, q.peer, fmt.Errorf("replicate %s seq %d to %s: gave up after %d tries: %w", j.e.Workload, j.e.Seq, q.peer, j.tries, err))
	default:
		log.Warn("replication attempt failed; will retry", slog.Int("try", j.tries), slog.Duration("retry_in", retryIn), slog.String("err", err.Error()))
	}
}

// backoff returns the delay after the given number of failed tries.
func (r *Replicator) backoff(tries int) time.Duration {
	limit := max(time.Minute, r.o.Backoff)
	d := r.o.Backoff
	for i := 1; i < tries && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}
