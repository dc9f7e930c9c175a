package notify

import (
	"sync"
	"testing"
	"time"
)

func TestSignalWakesEveryWaiter(t *testing.T) {
	var s Signal
	const n = 5
	var started, woke sync.WaitGroup
	started.Add(n)
	woke.Add(n)
	for range n {
		ch := s.Wait()
		go func() {
			started.Done()
			<-ch
			woke.Done()
		}()
	}
	started.Wait()
	s.Signal()
	done := make(chan struct{})
	go func() { woke.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("not every waiter woke up after one Signal")
	}
}

func TestWaitAfterSignalBlocksUntilNext(t *testing.T) {
	var s Signal
	first := s.Wait()
	s.Signal()
	select {
	case <-first:
	default:
		t.Fatal("channel taken before Signal is not closed")
	}
	second := s.Wait()
	select {
	case <-second:
		t.Fatal("channel taken after Signal is already closed")
	default:
	}
	s.Signal()
	<-second
}
