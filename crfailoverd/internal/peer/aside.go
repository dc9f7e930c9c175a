package peer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrSetAside wraps the failure reported (OnFailed) for an entry a peer
// was set aside for: the caller should send it to another peer.
var ErrSetAside = errors.New("peer set aside")

// Set-aside defaults: the first set-aside lasts AsideBase, each further
// one without a success in between twice as long, up to AsideMax; a peer
// is set aside at once when it refuses an archive for lack of room
// (ResourceExhausted), and after AsideFailures failed pushes in a row
// otherwise.
const (
	AsideBase     = 30 * time.Second
	AsideMax      = 5 * time.Minute
	AsideFailures = 3
)

// Aside tracks which peers cannot take archives for now. It has no clock:
// every call gets the time. Safe for concurrent use.
type Aside struct {
	Base, Max time.Duration // zero: AsideBase, AsideMax
	Failures  int           // zero: AsideFailures

	mu    sync.Mutex
	peers map[string]*asidePeer
}

type asidePeer struct {
	failures int       // failed pushes in a row since the last success or set-aside
	times    int       // set-asides since the last success
	until    time.Time // set aside until then
	reason   string
}

// Record notes the outcome of one push to peer at now. It reports
// whether the outcome sets the peer aside, until when, and why. A
// success resets the peer. Failures that are not the peer's (this node's
// archive is gone, this node is shutting down) count for nothing.
func (a *Aside) Record(peer string, err error, now time.Time) (setAside bool, until time.Time, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.peers == nil {
		a.peers = map[string]*asidePeer{}
	}
	p := a.peers[peer]
	if err == nil {
		delete(a.peers, peer)
		return false, time.Time{}, ""
	}
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, context.Canceled) {
		return false, time.Time{}, ""
	}
	if p == nil {
		p = &asidePeer{}
		a.peers[peer] = p
	}
	p.failures++
	full := status.Code(err) == codes.ResourceExhausted
	if !full && p.failures < a.failuresLimit() {
		return false, time.Time{}, ""
	}
	if full {
		reason = "it refused the archive for lack of room: " + err.Error()
	} else {
		reason = fmt.Sprintf("%d failed pushes in a row, the last: %s", p.failures, err)
	}
	d := a.base()
	for i := 0; i < p.times && d < a.max(); i++ {
		d *= 2
	}
	d = min(d, a.max())
	p.times++
	p.failures = 0
	p.until, p.reason = now.Add(d), reason
	return true, p.until, reason
}

// Until reports whether peer is set aside at now, and until when.
func (a *Aside) Until(peer string, now time.Time) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.peers[peer]; p != nil && now.Before(p.until) {
		return p.until, true
	}
	return time.Time{}, false
}

func (a *Aside) base() time.Duration {
	if a.Base > 0 {
		return a.Base
	}
	return AsideBase
}

func (a *Aside) max() time.Duration {
	if a.Max > 0 {
		return max(a.Max, a.base())
	}
	return max(AsideMax, a.base())
}

func (a *Aside) failuresLimit() int {
	if a.Failures > 0 {
		return a.Failures
	}
	return AsideFailures
}
