package metrics

import (
	"math"
	"time"
)

// dbRecord is a record waiting for the database: one statement that is
// idempotent (a retried statement does not insert twice).
type dbRecord interface {
	statement() (sql string, args []any)
	describe() string // for logs: kind and ID
}

const insertCheckpoint = `INSERT INTO checkpoints (
    id, workload, node, method, seq, started_at, duration_ms, bytes, ok, error,
    freezing_time_us, frozen_time_us, memdump_time_us, memwrite_time_us,
    pages_scanned, pages_skipped_parent, pages_written, pages_lazy, page_pipes, page_pipe_bufs,
    irmap_resolve_us, shpages_scanned, shpages_skipped_parent, shpages_written
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)
ON CONFLICT (id) DO NOTHING`

func (rec *CheckpointRecord) statement() (string, []any) {
	args := []any{
		rec.ID, clean(rec.Workload), clean(rec.Node), clean(rec.Method), seqOrNil(rec.Seq),
		rec.Start, rec.Duration.Milliseconds(), rec.Bytes, rec.OK, errOrNil(rec.OK, rec.Error),
	}
	if s := rec.Stats; s != nil {
		args = append(args,
			s.FreezingTime.Microseconds(), s.FrozenTime.Microseconds(),
			s.MemdumpTime.Microseconds(), s.MemwriteTime.Microseconds(),
			i64(s.PagesScanned), i64(s.PagesSkippedParent), i64(s.PagesWritten), i64(s.PagesLazy),
			i64(s.PagePipes), i64(s.PagePipeBufs), s.IrmapResolve.Microseconds(),
			i64(s.ShpagesScanned), i64(s.ShpagesSkippedParent), i64(s.ShpagesWritten),
		)
	} else {
		args = append(args, make([]any, 14)...) // NULLs
	}
	return insertCheckpoint, args
}

func (rec *CheckpointRecord) describe() string { return "checkpoint " + rec.ID }

const insertTransfer = `INSERT INTO transfers (
    id, workload, seq, from_node, to_node, started_at, duration_ms, bytes, ok, error
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING`

func (rec *TransferRecord) statement() (string, []any) {
	return insertTransfer, []any{
		rec.ID, clean(rec.Workload), seqOrNil(rec.Seq), clean(rec.From), clean(rec.To),
		rec.Start, rec.Duration.Milliseconds(), rec.Bytes, rec.OK, errOrNil(rec.OK, rec.Error),
	}
}

func (rec *TransferRecord) describe() string { return "transfer " + rec.ID }

const insertRestore = `INSERT INTO restores (
    id, workload, node, checkpoint_seq, checkpoint_age_ms, started_at, duration_ms, outcome, error, reason
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING`

func (rec *RestoreRecord) statement() (string, []any) {
	var age any // NULL when unknown
	if rec.CheckpointAge > 0 {
		age = rec.CheckpointAge.Milliseconds()
	}
	return insertRestore, []any{
		rec.ID, clean(rec.Workload), clean(rec.Node), seqOrNil(rec.Seq), age,
		rec.Start, rec.Duration.Milliseconds(), outcome(rec.OK), errOrNil(rec.OK, rec.Error), strOrNil(rec.Reason),
	}
}

func (rec *RestoreRecord) describe() string { return "restore " + rec.ID }

// upsertFailover fills in a failover row: the earliest detection, the
// latest decision and restore, and any other value the record knows. A
// record applied twice leaves the row as it was.
const upsertFailover = `INSERT INTO failovers AS f (
    id, workload, epoch, reason, from_node, to_node, detected_at, decided_at, restored_at, error
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO UPDATE SET
    workload    = CASE WHEN EXCLUDED.workload <> '' THEN EXCLUDED.workload ELSE f.workload END,
    epoch       = COALESCE(EXCLUDED.epoch, f.epoch),
    reason      = COALESCE(EXCLUDED.reason, f.reason),
    from_node   = COALESCE(EXCLUDED.from_node, f.from_node),
    to_node     = COALESCE(EXCLUDED.to_node, f.to_node),
    detected_at = LEAST(EXCLUDED.detected_at, f.detected_at),
    decided_at  = GREATEST(EXCLUDED.decided_at, f.decided_at),
    restored_at = GREATEST(EXCLUDED.restored_at, f.restored_at),
    error       = COALESCE(EXCLUDED.error, f.error),
    updated_at  = now()`

func (rec *FailoverRecord) statement() (string, []any) {
	var epoch any
	if rec.Epoch != 0 {
		epoch = i64(rec.Epoch)
	}
	return upsertFailover, []any{
		rec.ID, clean(rec.Workload), epoch, strOrNil(rec.Reason), strOrNil(rec.From), strOrNil(rec.To),
		timeOrNil(rec.Detected), timeOrNil(rec.Decided), timeOrNil(rec.Restored), strOrNil(rec.Error),
	}
}

func (rec *FailoverRecord) describe() string { return "failover " + rec.ID }

// i64 converts a counter to bigint, saturating.
func i64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func seqOrNil(seq uint64) any {
	if seq == 0 {
		return nil
	}
	return i64(seq)
}

func strOrNil(s string) any {
	if s == "" {
		return nil
	}
	return clean(s)
}

// errOrNil is the error column: NULL for a success, the error (or
// "unknown error") for a failure.
func errOrNil(ok bool, msg string) any {
	if ok && msg == "" {
		return nil
	}
	if msg == "" {
		return "unknown error"
	}
	return clean(msg)
}

func timeOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}
