package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockBed takes the machine-wide bed lock (one bed per machine: beds share
// the bridge, namespaces and registry port). Test programs hold it for the
// whole test (wait=true queues them); nodebed takes it only while it works
// (wait=false fails at once when a test holds it). The returned function
// releases it.
func LockBed(c Config, wait bool) (func(), error) {
	path := filepath.Clean(c.Dir) + ".lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("bed lock: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bed lock: %w", err)
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, fmt.Errorf("another program holds the test bed (lock %s): wait for the running tests to end", path)
		}
		return nil, fmt.Errorf("bed lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
