package agent

import (
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// RestorePolicy bounds the attempts to bring a failed workload back.
type RestorePolicy struct {
	MaxAttempts    int
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// Next decides restore attempt number attempt (0-based) of a workload:
// which checkpoint to use and how long to wait first, or to give up. The
// first attempt uses the newest checkpoint at once; each later one the
// next older (wrapping around), after an exponential backoff. candidates
// are the usable checkpoints, newest first. It does no I/O.
func (p RestorePolicy) Next(attempt int, candidates []store.Entry) (e store.Entry, wait time.Duration, giveUp bool) {
	if len(candidates) == 0 || attempt >= p.MaxAttempts {
		return store.Entry{}, 0, true
	}
	if attempt > 0 {
		wait = p.BackoffInitial
		for i := 1; i < attempt && wait < p.BackoffMax; i++ {
			wait *= 2
		}
		wait = min(wait, p.BackoffMax)
	}
	return candidates[attempt%len(candidates)], wait, false
}

// health counts liveness probe results: failed reports true once
// threshold failures in a row have been seen.
type health struct {
	threshold int
	failures  int
}

func (h *health) observe(ok bool) (failed bool) {
	if ok {
		h.failures = 0
		return false
	}
	h.failures++
	return h.failures >= h.threshold
}

// nextDue is when the checkpoint after one that started at start is due:
// intervals run start to start, and an overrun starts the next at once.
func nextDue(start, now time.Time, interval time.Duration) time.Time {
	due := start.Add(interval)
	if due.Before(now) {
		return now
	}
	return due
}
