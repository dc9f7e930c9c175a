package metrics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Writer timing. Variables so that tests can shorten them.
var (
	minBackoff     = time.Second
	maxBackoff     = 30 * time.Second
	connectTimeout = 10 * time.Second
	writeTimeout   = 30 * time.Second // one batch, or the migrations
	pingInterval   = 15 * time.Second // checks an idle connection
)

// Run is the PostgreSQL writer. It connects (retrying with a backoff
// doubling from 1s to 30s), migrates the schema, then writes the queued
// records in batches, one transaction each, until ctx ends; then it keeps
// flushing for at most Options.ShutdownGrace. A batch that fails is put
// back at the front of the queue and retried on a new connection. Without
// a DSN it only waits for ctx. Calls to Run are serialized.
func (r *Recorder) Run(ctx context.Context) {
	if r == nil || r.o.DSN == "" {
		<-ctx.Done()
		return
	}
	r.runMu.Lock()
	defer r.runMu.Unlock()

	cfg, err := pgx.ParseConfig(r.o.DSN)
	if err != nil {
		// pgx's parse errors do not repeat the password.
		r.setError(fmt.Errorf("metrics database: bad DSN: %w", err))
		r.log.Error("metrics: bad PostgreSQL DSN; records are not stored", "err", err)
		<-ctx.Done()
		return
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > connectTimeout {
		cfg.ConnectTimeout = connectTimeout
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "crfailoverd"
	}

	// Database work outlives ctx by the grace period at most: it runs
	// under dbCtx, cancelled ShutdownGrace after ctx ends, so that the
	// batch in flight and the final flush can complete.
	dbCtx, cancelDB := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDB()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(r.o.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelDB()
		case <-dbCtx.Done(): // Run returned
		}
	})
	defer stopGrace()

	w := &writer{r: r, cfg: cfg, backoff: minBackoff}
	defer w.disconnect()
	tick := time.NewTicker(r.o.FlushInterval)
	defer tick.Stop()
	for ctx.Err() == nil {
		if w.conn == nil {
			if err := w.connect(ctx, dbCtx); err != nil {
				w.failed("connect", err)
				w.sleep(ctx)
				continue
			}
			// Write what waited for the connection at once.
		} else {
			select {
			case <-ctx.Done():
			case <-r.wake:
			case <-tick.C:
			}
		}
		if err := w.flush(dbCtx); err != nil {
			w.failed("write", err)
			w.disconnect()
			w.sleep(ctx)
			continue
		}
		w.failures = 0 // connected, and writing works
		if err := w.pingIfIdle(dbCtx); err != nil {
			w.failed("ping", err)
			w.disconnect()
		}
	}

	// ctx ended: flush what is left within the grace period, connecting
	// once if needed.
	if r.Stats().Queued == 0 {
		return
	}
	if w.conn == nil {
		if err := w.connect(dbCtx, dbCtx); err != nil {
			w.failed("connect", err)
		}
	}
	if w.conn != nil {
		if err := w.flush(dbCtx); err != nil {
			w.failed("write", err)
		}
	}
	if n := r.Stats().Queued; n > 0 {
		r.log.Warn("metrics: records not written at shutdown", "records", n)
	}
}

// writer is Run's state.
type writer struct {
	r        *Recorder
	cfg      *pgx.ConnConfig
	conn     *pgx.Conn
	backoff  time.Duration
	failures int       // consecutive failures (only the first is logged as a warning)
	lastUse  time.Time // of conn
}

// connect opens a connection and migrates the schema. The dial obeys
// ctx; the migrations, once connected, run under dbCtx.
func (w *writer) connect(ctx, dbCtx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, w.cfg)
	if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(dbCtx, writeTimeout)
	defer cancel()
	done, unknown, err := migrate(mctx, conn, migrations)
	if err != nil {
		closeConn(conn)
		return err
	}
	if len(done) > 0 {
		w.r.log.Info("metrics: database schema migrated", "applied", done)
	}
	if len(unknown) > 0 {
		w.r.log.Warn("metrics: the database schema is newer than this daemon", "unknown_versions", unknown)
	}
	w.conn, w.lastUse = conn, time.Now()
	w.r.setConnected(true)
	if w.failures > 0 {
		w.r.log.Info("metrics: connected to the database", "after_failures", w.failures)
	} else {
		w.r.log.Debug("metrics: connected to the database")
	}
	return nil
}

func (w *writer) disconnect() {
	if w.conn != nil {
		closeConn(w.conn)
		w.conn = nil
	}
	w.r.setConnected(false)
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// failed records an error; the first of a series is logged as a warning,
// the next ones at debug level.
func (w *writer) failed(what string, err error) {
	w.failures++
	err = fmt.Errorf("metrics database %s: %w", what, err)
	w.r.setError(err)
	if w.failures == 1 {
		w.r.log.Warn("metrics: database unavailable; records are queued and retried", "err", err, "queued", w.r.Stats().Queued)
	} else {
		w.r.log.Debug("metrics: database still unavailable", "err", err, "failures", w.failures)
	}
}

// sleep waits for the backoff (or ctx) and doubles it.
func (w *writer) sleep(ctx context.Context) {
	t := time.NewTimer(w.backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	w.backoff = min(2*w.backoff, maxBackoff)
}

func (w *writer) pingIfIdle(ctx context.Context) error {
	if w.conn == nil || time.Since(w.lastUse) < pingInterval {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := w.conn.Ping(ctx); err != nil {
		return err
	}
	w.lastUse = time.Now()
	return nil
}

// flush writes batches until the queue is empty. On an error the batch
// goes back to the front of the queue.
func (w *writer) flush(ctx context.Context) error {
	r := w.r
	for {
		r.mu.Lock()
		batch := r.q.pop(r.o.BatchSize)
		r.inflight = len(batch)
		r.mu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		written, rest, err := w.write(ctx, batch)
		r.mu.Lock()
		r.inflight = 0
		r.written += uint64(written)
		dropped := r.q.unpop(rest)
		r.dropped += uint64(dropped)
		r.mu.Unlock()
		if written > 0 {
			r.prom.written.Add(float64(written))
		}
		if dropped > 0 {
			r.prom.dropped.Add(float64(dropped))
		}
		if err != nil {
			return err
		}
		w.backoff = minBackoff
		w.lastUse = time.Now()
	}
}

// write writes batch in one transaction. It returns how many records were
// committed and those to retry. When the database refuses a record's data
// (see refused), the records are written one by one and those refused are
// dropped, so that one bad record cannot block the queue.
func (w *writer) write(ctx context.Context, batch []dbRecord) (written int, rest []dbRecord, err error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	err = writeTx(ctx, w.conn, batch)
	if err == nil {
		return len(batch), nil, nil
	}
	if !refused(ctx, w.conn, err) {
		return 0, batch, err
	}
	// Find the records at fault, writing each alone.
	for i, rec := range batch {
		sql, args := rec.statement()
		_, err := w.conn.Exec(ctx, sql, args...)
		switch {
		case err == nil:
			written++
		case refused(ctx, w.conn, err):
			w.r.reject(rec, err)
		default:
			return written, batch[i:], err
		}
	}
	return written, nil, nil
}

func writeTx(ctx context.Context, conn *pgx.Conn, batch []dbRecord) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var b pgx.Batch
		for _, rec := range batch {
			sql, args := rec.statement()
			b.Queue(sql, args...)
		}
		return tx.SendBatch(ctx, &b).Close()
	})
}

// refused reports whether err says a statement cannot succeed however
// often it is retried: the server refused its data (SQLSTATE class 22,
// data exception, or 23, integrity constraint violation) and the
// connection is still usable. Connection losses, timeouts and the server's
// other errors (missing table, read-only or full database, shutdown, ...)
// are worth retrying.
func refused(ctx context.Context, conn *pgx.Conn, err error) bool {
	if conn.IsClosed() || ctx.Err() != nil {
		return false
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) != 5 {
		return false
	}
	return pe.Code[:2] == "22" || pe.Code[:2] == "23"
}

func (r *Recorder) reject(rec dbRecord, err error) {
	r.mu.Lock()
	r.rejected++
	r.mu.Unlock()
	r.prom.dropped.Inc()
	r.setError(fmt.Errorf("metrics database refused %s: %w", rec.describe(), err))
	r.log.Error("metrics: the database refused a record; dropped", "record", rec.describe(), "err", err)
}

func (r *Recorder) setConnected(ok bool) {
	r.mu.Lock()
	r.connected = ok
	r.mu.Unlock()
	r.prom.setConnected(ok)
}

func (r *Recorder) setError(err error) {
	r.mu.Lock()
	r.lastErr, r.lastErrAt = err.Error(), time.Now()
	r.mu.Unlock()
}
