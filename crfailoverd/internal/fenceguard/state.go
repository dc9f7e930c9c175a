package fenceguard

import (
	"fmt"
	"time"
)

// State is what the guard knows: the deadline it was last given and the
// copies it guards. It does no I/O: the server feeds it renewals, the
// monotonic time and what /proc says of a copy.
type State struct {
	// Deadline on CLOCK_MONOTONIC, in nanoseconds; 0: never given (no
	// daemon had quorum contact since the guard started), nothing is
	// killed.
	Deadline int64
	Copies   []Copy
	// Stopping: asked to exit once nothing is left to guard.
	Stopping bool
	// ParkDir is the last one a renewal gave.
	ParkDir string
	// signalled are the copies killed (or refused) since the deadline
	// passed, so that each is handled once.
	signalled map[key]bool
}

// Apply takes a renewal. The deadline changes only with real quorum
// contact (a daemon that never had contact since its start cannot extend
// the one its predecessor gave); the renewal's copies are added to the
// known ones, and copies whose process is gone (alive false) are dropped.
// It reports whether the deadline changed.
func (s *State) Apply(r Renewal, alive func(Copy) bool) bool {
	changed := false
	if r.Contact && r.Deadline > 0 {
		changed = r.Deadline != s.Deadline
		s.Deadline = r.Deadline
		s.Stopping = false
	}
	if r.Stop {
		s.Stopping = true
	}
	if r.ParkDir != "" {
		s.ParkDir = r.ParkDir
	}
	seen := make(map[key]bool, len(s.Copies)+len(r.Copies))
	var out []Copy
	for _, c := range append(append([]Copy(nil), s.Copies...), r.Copies...) {
		if c.PID <= 0 {
			continue
		}
		if seen[c.key()] {
			// The same process listed again: the newer listing's
			// manifest wins (a copy handed to kubelet gains one).
			for i := range out {
				if out[i].key() == c.key() && c.Manifest != "" {
					out[i].Manifest = c.Manifest
				}
			}
			continue
		}
		seen[c.key()] = true
		if alive(c) {
			out = append(out, c)
		}
	}
	s.Copies = out
	for k := range s.signalled {
		if !seen[k] {
			delete(s.signalled, k)
		}
	}
	return changed
}

// Expired reports whether the deadline has passed at now.
func (s *State) Expired(now int64) bool { return s.Deadline != 0 && now >= s.Deadline }

// LateBy is how long ago the deadline passed (negative: not yet).
func (s *State) LateBy(now int64) time.Duration { return time.Duration(now - s.Deadline) }

// Due returns the copies to kill at now: all the known ones not handled
// yet, once the deadline has passed; none before.
func (s *State) Due(now int64) []Copy {
	if !s.Expired(now) {
		return nil
	}
	var due []Copy
	for _, c := range s.Copies {
		if !s.signalled[c.key()] {
			due = append(due, c)
		}
	}
	return due
}

// Handled records that c was killed, or refused, for this expiry.
func (s *State) Handled(c Copy) {
	if s.signalled == nil {
		s.signalled = map[key]bool{}
	}
	s.signalled[c.key()] = true
}

// Done reports whether a stopping guard may exit at now: no deadline (no
// copy was ever guarded by quorum contact), no copy left, or the deadline
// passed and every copy was handled.
func (s *State) Done(now int64) bool {
	if !s.Stopping {
		return false
	}
	return s.Deadline == 0 || len(s.Copies) == 0 || (s.Expired(now) && len(s.Due(now)) == 0)
}

// Observed is what /proc says of a copy's PID now.
type Observed struct {
	StartTime uint64
	Cgroup    string
}

// Verify refuses to kill a PID that no longer is the copy the daemon
// listed: another start time (the PID was reused) or another cgroup. The
// error names what was refused and why.
func Verify(c Copy, o Observed) error {
	switch {
	case c.PID <= 1:
		return fmt.Errorf("refused to kill %s: pid %d is no container's", c, c.PID)
	case o.StartTime != c.StartTime:
		return fmt.Errorf("refused to kill %s: the process has start time %d, the daemon listed %d (the PID was reused)", c, o.StartTime, c.StartTime)
	case o.Cgroup != c.Cgroup:
		return fmt.Errorf("refused to kill %s: the process is in cgroup %q, the daemon listed %q", c, o.Cgroup, c.Cgroup)
	}
	return nil
}

// DeadlineFrom is the deadline a daemon sends: its last quorum contact
// plus the lease minus Margin, on the monotonic clock whose reading now is
// monoNow (wallNow is the same instant on Go's clock, which carries a
// monotonic reading). ok is false when there was no contact (lastQuorum
// zero): then the daemon must not send a deadline.
func DeadlineFrom(lastQuorum, wallNow time.Time, monoNow int64, lease time.Duration) (deadline int64, ok bool) {
	if lastQuorum.IsZero() {
		return 0, false
	}
	return monoNow + int64(lastQuorum.Add(lease-Margin).Sub(wallNow)), true
}
