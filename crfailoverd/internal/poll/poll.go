// Package poll waits in tests for a condition with a deadline, instead of
// sleeping for a guessed time.
package poll

import (
	"testing"
	"time"
)

// Every is how often Until looks.
const Every = 10 * time.Millisecond

// Until checks cond every Every until it holds, and fails t after timeout
// with what and the last reason cond gave.
func Until(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: not yet: %s", timeout, what, why)
		}
		time.Sleep(Every)
	}
}

// True is Until for a condition without a reason.
func True(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Until(t, timeout, what, func() (bool, string) { return cond(), "condition false" })
}
