package replication

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// asideQueue is a fakeQueue that also sets peers aside.
type asideQueue struct {
	fakeQueue
	mu    sync.Mutex
	aside map[string]bool
}

func (q *asideQueue) SetAside(p string) (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.aside[p] {
		return time.Date(2026, 12, 1, 10, 0, 30, 0, time.UTC), true
	}
	return time.Time{}, false
}

// A set-aside peer gets no new replicas, and the replicas handed back for
// it go to the peers chosen without it that do not hold them: the factor
// is kept while another peer can take the archive.
func TestSetAsidePeerIsReplacedToKeepTheFactor(t *testing.T) {
	e := store.Entry{Workload: wid, Seq: 7, SHA256: "abc", Size: 10}
	alive := fakeMembers{"n1": true, "n2": true, "n3": true, "n4": true}
	// The two targets by rendezvous when every peer can take archives.
	base := peer.Targets(wid.String(), "n1", []string{"n2", "n3", "n4"}, 2)
	full, kept := base[0], base[1]
	spare := ""
	for _, n := range []string{"n2", "n3", "n4"} {
		if !slices.Contains(base, n) {
			spare = n
		}
	}
	st := state.New()
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		st.Nodes[n] = &state.Node{Name: n}
	}
	st.Workloads[wid.String()] = &state.Workload{ID: wid.String(), Owner: "n1", Epoch: 1, Status: state.StatusRunning,
		Checkpoints: []state.Checkpoint{{Seq: 7, SHA256: "abc", Size: 10, Holders: []string{"n1"}}}}
	for _, tc := range []struct {
		name    string
		aside   []string
		holders []string // of #7 besides n1 when it is handed back
		err     error    // the failure handed back for full
		targets []string // of a new checkpoint
		move    bool     // the handed-back one is enqueued again, to the targets that do not hold it
	}{
		{"none set aside", nil, nil, nil, base, false},
		{"full set aside: the spare takes its slot", []string{full}, nil, fmt.Errorf("replicate: %w until 10:00:30Z: full", peer.ErrSetAside),
			peer.Targets(wid.String(), "n1", []string{kept, spare}, 2), true},
		{"the spare already holds it", []string{full}, []string{spare}, fmt.Errorf("replicate: %w", peer.ErrSetAside),
			peer.Targets(wid.String(), "n1", []string{kept, spare}, 2), true},
		{"an ordinary give-up is not moved", []string{full}, nil, fmt.Errorf("gave up after 5 tries"),
			peer.Targets(wid.String(), "n1", []string{kept, spare}, 2), false},
		{"two set aside: one target left", []string{full, spare}, nil, fmt.Errorf("replicate: %w", peer.ErrSetAside),
			[]string{kept}, true},
		// No other target: back to the same peer, whose queue waits out
		// the set-aside (it was dropped for good).
		{"the only other target holds it: it waits for the same peer", []string{full, spare}, []string{kept}, fmt.Errorf("replicate: %w", peer.ErrSetAside),
			[]string{kept}, true},
		{"every other peer set aside: it waits for the same peer", []string{full, spare, kept}, nil, fmt.Errorf("replicate: %w", peer.ErrSetAside),
			nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := st.Clone()
			cp := &s.Workloads[wid.String()].Checkpoints[0]
			for _, h := range tc.holders {
				cp.Holders = append(cp.Holders, h)
				slices.Sort(cp.Holders)
			}
			q := &asideQueue{aside: map[string]bool{}}
			for _, n := range tc.aside {
				q.aside[n] = true
			}
			r := New(Options{Node: "n1", Factor: 2, Proposer: &fakeProposer{}, Members: alive, State: fixedState{s}, Log: slog.New(slog.DiscardHandler)})
			r.UseQueue(q)
			cc := &state.CommitCheckpoint{ID: wid.String(), Node: "n1", Checkpoint: r.Checkpoint(store.Entry{Workload: wid, Seq: 8, SHA256: "def"})}
			if got := r.targets(wid.String(), cc); !slices.Equal(got, tc.targets) {
				t.Errorf("targets %v, want %v", got, tc.targets)
			}
			if tc.err == nil {
				return
			}
			r.ReplicateFailed(e, full, tc.err)
			var want []string
			if tc.move {
				// A target already sending it is no harm: the queue keeps one.
				var to []string
				for _, n := range tc.targets {
					if !slices.Contains(tc.holders, n) {
						to = append(to, n)
					}
				}
				if len(to) == 0 {
					to = []string{full}
				}
				want = []string{"#7->" + strings.Join(to, ",")}
			}
			if got := q.get(); !slices.Equal(got, want) {
				t.Errorf("enqueued %v, want %v", got, want)
			}
		})
	}
}
