package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

var wid = store.Workload{Namespace: "ns", Pod: "web", Container: "app"}

type fakeProposer struct {
	mu   sync.Mutex
	cmds []state.Command
	err  error
}

func (p *fakeProposer) Apply(_ context.Context, cmd state.Command) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmds = append(p.cmds, cmd)
	return p.err
}

type fakeQueue struct {
	mu   sync.Mutex
	jobs []string
}

func (q *fakeQueue) Enqueue(e store.Entry, targets []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.jobs = append(q.jobs, fmt.Sprintf("#%d->%s", e.Seq, strings.Join(targets, ",")))
}

func (q *fakeQueue) get() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.jobs...)
}

type fakeMembers map[string]bool

func (m fakeMembers) Alive() map[string]bool { return m }

type fakePeer struct {
	sha      string // the digest of what it sends (default: the recorded one)
	name     string
	fetchErr error
	pushErr  error
}

func (p fakePeer) Push(context.Context, store.Entry, func(int64)) error { return p.pushErr }
func (p fakePeer) Fetch(_ context.Context, _ *store.Store, w store.Workload, seq uint64, _ peer.Expect) (store.Entry, error) {
	if p.fetchErr != nil {
		return store.Entry{}, p.fetchErr
	}
	if p.sha != "" {
		return store.Entry{Workload: w, Seq: seq, Source: p.name, SHA256: p.sha, Size: 1}, nil
	}
	return store.Entry{Workload: w, Seq: seq, Source: p.name, SHA256: "s3", Size: 1}, nil
}

func newRepl(members fakeMembers, peers map[string]fakePeer, p *fakeProposer, evs *[]event.Event) (*Replication, *fakeQueue) {
	var mu sync.Mutex
	r := New(Options{Node: "n1", Factor: 1, Proposer: p, Members: members, Log: slog.New(slog.DiscardHandler),
		Peer: func(n string) (Peer, error) {
			pe, ok := peers[n]
			if !ok {
				return nil, fmt.Errorf("no RPC address known for node %s", n)
			}
			return pe, nil
		},
		Events: func(e event.Event) { mu.Lock(); *evs = append(*evs, e); mu.Unlock() }})
	q := &fakeQueue{}
	r.UseQueue(q)
	return r, q
}

func runFor(t *testing.T, r *Replication) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRecordCommitsThenReplicatesToAlivePeers(t *testing.T) {
	p := &fakeProposer{}
	var evs []event.Event
	// n2 is dead: it is never a target.
	r, q := newRepl(fakeMembers{"n1": true, "n3": true}, nil, p, &evs)
	runFor(t, r)
	r.Record(discovery.Workload{ID: wid}, 2, store.Entry{Workload: wid, Seq: 7, SHA256: "abc", Size: 10})
	poll.True(t, 5*time.Second, "enqueued", func() bool { return len(q.get()) == 1 })
	if got := q.get()[0]; got != "#7->n3" {
		t.Fatalf("queued %s, want #7 to n3 (the only live peer)", got)
	}
	p.mu.Lock()
	cc, ok := p.cmds[0].(*state.CommitCheckpoint)
	p.mu.Unlock()
	if !ok || cc.Epoch != 2 || cc.Node != "n1" || cc.Checkpoint.Seq != 7 || cc.Checkpoint.SHA256 != "abc" || len(cc.Checkpoint.Holders) != 1 {
		t.Fatalf("commit %+v", p.cmds[0])
	}
}

func TestInOrderFollowsTheRecordsBeforeIt(t *testing.T) {
	p := &fakeProposer{}
	var evs []event.Event
	r, _ := newRepl(fakeMembers{"n1": true}, nil, p, &evs)
	r.Record(discovery.Workload{ID: wid}, 1, store.Entry{Workload: wid, Seq: 1})
	r.Record(discovery.Workload{ID: wid}, 1, store.Entry{Workload: wid, Seq: 2})
	r.InOrder("report application failure", &state.AppFailed{ID: wid.String(), Node: "n1", Epoch: 1, Reason: "probe"})
	runFor(t, r)
	poll.True(t, 5*time.Second, "three commits", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.cmds) == 3 })
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.cmds[2].(*state.AppFailed); !ok {
		t.Fatalf("commits %T %T %T: the failure report must follow the checkpoints queued before it", p.cmds[0], p.cmds[1], p.cmds[2])
	}
}

func TestRecordRefusedIsNotReplicated(t *testing.T) {
	p := &fakeProposer{err: fmt.Errorf("commit: %w", state.ErrStale)}
	var evs []event.Event
	r, q := newRepl(fakeMembers{"n1": true, "n2": true}, nil, p, &evs)
	runFor(t, r)
	r.Record(discovery.Workload{ID: wid}, 1, store.Entry{Workload: wid, Seq: 1})
	poll.True(t, 5*time.Second, "proposed", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.cmds) == 1 })
	time.Sleep(20 * time.Millisecond)
	if jobs := q.get(); len(jobs) != 0 {
		t.Fatalf("a checkpoint the cluster refused was replicated: %v", jobs)
	}
}

func TestReplicatedRecordsTheHolder(t *testing.T) {
	p := &fakeProposer{}
	var evs []event.Event
	r, _ := newRepl(fakeMembers{}, nil, p, &evs)
	runFor(t, r)
	r.Replicated(store.Entry{Workload: wid, Seq: 4, SHA256: "sha-4", Size: 400}, "n2", time.Second, 99)
	r.ReplicateFailed(store.Entry{Workload: wid, Seq: 5}, "n3", errors.New("peer n3: connection refused"))
	poll.True(t, 5*time.Second, "the holder recorded", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return len(p.cmds) == 1 })
	time.Sleep(20 * time.Millisecond) // nothing else may follow
	p.mu.Lock()
	defer p.mu.Unlock()
	if h, ok := p.cmds[0].(*state.AddHolder); !ok || h.Node != "n2" || h.Seq != 4 || h.ID != wid.String() || h.SHA256 != "sha-4" || h.Size != 400 {
		t.Fatalf("proposed %+v, want AddHolder n2 #4 with sha256 sha-4 and 400 bytes", p.cmds[0])
	}
	if len(p.cmds) != 1 {
		t.Fatalf("a failed replica was recorded: %+v", p.cmds)
	}
	if len(evs) != 2 || evs[0].Kind != event.Replicated || evs[0].Bytes != 99 || evs[1].Kind != event.ReplicateFailed || !strings.Contains(evs[1].Err, "refused") {
		t.Fatalf("events %+v", evs)
	}
}

func TestFetchTriesHoldersInTurn(t *testing.T) {
	w := state.Workload{ID: wid.String(), Checkpoints: []state.Checkpoint{{Seq: 3, SHA256: "s3", Size: 1, Holders: []string{"n1", "n2", "n3", "n4"}}}}
	cases := []struct {
		name  string
		peers map[string]fakePeer
		seq   uint64
		from  string
		want  string
	}{
		{"the first holder answers", map[string]fakePeer{"n2": {name: "n2"}, "n3": {name: "n3"}}, 3, "n2", ""},
		{"a dead holder is skipped", map[string]fakePeer{"n2": {name: "n2", fetchErr: errors.New("connection refused")}, "n3": {name: "n3"}}, 3, "n3", ""},
		{"no holder gives it: every reason named", map[string]fakePeer{"n2": {fetchErr: errors.New("connection refused")}, "n3": {fetchErr: errors.New("sha256 mismatch")}}, 3, "",
			"from n2: connection refused"},
		{"an unknown sequence number", map[string]fakePeer{"n2": {}}, 9, "", "no other holder is recorded"},
		{"a holder sending another archive is refused, the next one used", map[string]fakePeer{"n2": {name: "n2", sha: "evil"}, "n3": {name: "n3"}}, 3, "n3", ""},
		{"every holder sending another archive", map[string]fakePeer{"n2": {sha: "evil"}, "n3": {sha: "evil"}}, 3, "", "the state records s3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var evs []event.Event
			r, _ := newRepl(fakeMembers{}, tc.peers, &fakeProposer{}, &evs)
			e, err := r.Fetch(context.Background(), w, tc.seq)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want %q", err, tc.want)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("checkpoint #%d", tc.seq)) {
					t.Fatalf("err %v does not name the checkpoint", err)
				}
				return
			}
			if err != nil || e.Source != tc.from {
				t.Fatalf("fetched %+v, %v; want it from %s", e, err, tc.from)
			}
		})
	}
}

func TestPushNamesTheCheckpointAndTarget(t *testing.T) {
	var evs []event.Event
	r, _ := newRepl(fakeMembers{}, map[string]fakePeer{"n2": {pushErr: errors.New("stream reset")}}, &fakeProposer{}, &evs)
	err := r.Push(context.Background(), "n2", store.Entry{Workload: wid, Seq: 8})
	if err == nil || !strings.Contains(err.Error(), "send checkpoint #8 to n2") {
		t.Fatalf("err %v", err)
	}
	if err := r.Push(context.Background(), "n9", store.Entry{Seq: 8}); err == nil || !strings.Contains(err.Error(), "n9") {
		t.Fatalf("push to an unknown node: %v", err)
	}
}
