package metrics

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// eventRing keeps the most recent events.
type eventRing struct {
	mu      sync.Mutex
	buf     []Event
	n       int    // events held
	next    int    // index the next event goes to
	seq     uint64 // Seq of the newest event
	changed chan struct{}
}

func newEventRing(size int) *eventRing {
	return &eventRing{buf: make([]Event, size), changed: make(chan struct{})}
}

func (e *eventRing) add(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	e.mu.Lock()
	e.seq++
	ev.Seq = e.seq
	e.buf[e.next] = ev
	e.next = (e.next + 1) % len(e.buf)
	if e.n < len(e.buf) {
		e.n++
	}
	close(e.changed) // wake the waiters
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

func (e *eventRing) last() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seq
}

func (e *eventRing) since(after uint64, limit int) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sinceLocked(after, limit)
}

func (e *eventRing) sinceLocked(after uint64, limit int) []Event {
	if after >= e.seq || e.n == 0 {
		return nil
	}
	// The held events have the Seqs oldest..e.seq.
	oldest := e.seq - uint64(e.n) + 1
	first := after + 1
	if first < oldest {
		first = oldest
	}
	count := int(e.seq - first + 1)
	if limit > 0 && count > limit {
		count = limit
	}
	out := make([]Event, count)
	start := (e.next - int(e.seq-first+1) + len(e.buf)) % len(e.buf)
	for i := range out {
		out[i] = e.buf[(start+i)%len(e.buf)]
	}
	return out
}

func (e *eventRing) wait(ctx context.Context, after uint64) []Event {
	for {
		e.mu.Lock()
		if e.seq > after {
			out := e.sinceLocked(after, 0)
			e.mu.Unlock()
			return out
		}
		ch := e.changed
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

// Events made from records.

func checkpointEvent(rec *CheckpointRecord) Event {
	f := map[string]string{
		"id":          rec.ID,
		"node":        rec.Node,
		"method":      rec.Method,
		"duration_ms": ms(rec.Duration),
	}
	if rec.Seq > 0 {
		f["seq"] = strconv.FormatUint(rec.Seq, 10)
	}
	if !rec.OK {
		f["error"] = rec.Error
		return Event{Kind: "checkpoint-failed", Workload: rec.Workload, Fields: f,
			Message: fmt.Sprintf("checkpoint of %s via %s failed after %s: %s", rec.Workload, orDash(rec.Method), short(rec.Duration), rec.Error)}
	}
	f["bytes"] = strconv.FormatInt(rec.Bytes, 10)
	msg := fmt.Sprintf("checkpoint %s #%d via %s: %s, %s", rec.Workload, rec.Seq, orDash(rec.Method), short(rec.Duration), size(rec.Bytes))
	if s := rec.Stats; s != nil {
		f["frozen_ms"] = ms(s.FrozenTime)
		f["pages_written"] = strconv.FormatUint(s.PagesWritten, 10)
		msg += fmt.Sprintf(", frozen %s, %d pages written", short(s.FrozenTime), s.PagesWritten)
	}
	return Event{Kind: "checkpoint", Workload: rec.Workload, Fields: f, Message: msg}
}

func transferEvent(rec *TransferRecord) Event {
	f := map[string]string{
		"id":          rec.ID,
		"from":        rec.From,
		"to":          rec.To,
		"seq":         strconv.FormatUint(rec.Seq, 10),
		"duration_ms": ms(rec.Duration),
	}
	if !rec.OK {
		f["error"] = rec.Error
		return Event{Kind: "transfer-failed", Workload: rec.Workload, Fields: f,
			Message: fmt.Sprintf("transfer of %s #%d to %s failed: %s", rec.Workload, rec.Seq, rec.To, rec.Error)}
	}
	f["bytes"] = strconv.FormatInt(rec.Bytes, 10)
	return Event{Kind: "transfer", Workload: rec.Workload, Fields: f,
		Message: fmt.Sprintf("transfer of %s #%d to %s: %s in %s", rec.Workload, rec.Seq, rec.To, size(rec.Bytes), short(rec.Duration))}
}

func restoreEvent(rec *RestoreRecord) Event {
	f := map[string]string{
		"id":          rec.ID,
		"node":        rec.Node,
		"seq":         strconv.FormatUint(rec.Seq, 10),
		"duration_ms": ms(rec.Duration),
		"outcome":     outcome(rec.OK),
	}
	if rec.CheckpointAge > 0 {
		f["checkpoint_age_ms"] = ms(rec.CheckpointAge)
	}
	if rec.Reason != "" {
		f["reason"] = rec.Reason
	}
	why := ""
	if rec.Reason != "" {
		why = " (" + rec.Reason + ")"
	}
	if !rec.OK {
		f["error"] = rec.Error
		return Event{Kind: "restore-failed", Workload: rec.Workload, Fields: f,
			Message: fmt.Sprintf("restore of %s #%d on %s failed after %s%s: %s", rec.Workload, rec.Seq, rec.Node, short(rec.Duration), why, rec.Error)}
	}
	age := ""
	if rec.CheckpointAge > 0 {
		age = ", checkpoint " + short(rec.CheckpointAge) + " old"
	}
	return Event{Kind: "restore", Workload: rec.Workload, Fields: f,
		Message: fmt.Sprintf("restored %s #%d on %s in %s%s%s", rec.Workload, rec.Seq, rec.Node, short(rec.Duration), age, why)}
}

func failoverEvent(rec *FailoverRecord) Event {
	f := map[string]string{"id": rec.ID, "epoch": strconv.FormatUint(rec.Epoch, 10)}
	for k, v := range map[string]string{"from": rec.From, "to": rec.To, "reason": rec.Reason, "error": rec.Error} {
		if v != "" {
			f[k] = v
		}
	}
	for k, t := range map[string]time.Time{"detected": rec.Detected, "decided": rec.Decided, "restored": rec.Restored} {
		if !t.IsZero() {
			f[k] = t.UTC().Format(time.RFC3339Nano)
		}
	}
	var msg string
	switch {
	case rec.Error != "":
		msg = fmt.Sprintf("failover of %s (epoch %d) failed: %s", rec.Workload, rec.Epoch, rec.Error)
	case !rec.Restored.IsZero():
		msg = fmt.Sprintf("failover of %s (epoch %d): running on %s", rec.Workload, rec.Epoch, orDash(rec.To))
		if !rec.Detected.IsZero() {
			msg += fmt.Sprintf(", %s after detection", short(rec.Restored.Sub(rec.Detected)))
		}
	case !rec.Decided.IsZero():
		msg = fmt.Sprintf("failover of %s (epoch %d): placed on %s", rec.Workload, rec.Epoch, orDash(rec.To))
		if rec.From != "" {
			msg += " instead of " + rec.From
		}
	default:
		msg = fmt.Sprintf("failover of %s (epoch %d): failure detected", rec.Workload, rec.Epoch)
		if rec.From != "" {
			msg += " on " + rec.From
		}
	}
	if rec.Reason != "" {
		msg += " (" + rec.Reason + ")"
	}
	return Event{Kind: "failover", Workload: rec.Workload, Fields: f, Message: msg}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// short formats d with millisecond precision at most.
func short(d time.Duration) string {
	if d >= time.Second {
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func size(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
