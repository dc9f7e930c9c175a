//go:build race

package failover

// raceEnabled: the race detector slows the simulation about tenfold; it
// runs fewer seeds then (its goroutines are exercised all the same).
const raceEnabled = true
