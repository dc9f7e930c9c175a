// Package notify is a change signal that wakes every waiter: each call to
// Wait returns a channel that Signal closes, and Signal replaces it with a
// fresh one. Unlike a buffered channel of capacity 1, one signal is seen by
// every goroutine that waits for it, and a waiter that took its channel
// before a change never misses that change.
package notify

import "sync"

// Signal is a broadcast change notification; the zero value is ready.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// Wait returns a channel that is closed at the next Signal.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Signal wakes every goroutine waiting on a channel Wait returned.
func (s *Signal) Signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
	}
	s.ch = make(chan struct{})
}
