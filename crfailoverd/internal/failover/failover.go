// Package failover is the cluster leader's decision logic: from the
// replicated state and the leader's view of the members it computes which
// workloads to place on another node, which restores to declare timed out
// and which workloads to give up. It is pure (no I/O, no clock, no
// goroutines): the same inputs always give the same commands, so the rules
// can be tested by the thousand.
//
// # Rules, per workload (failed and retrying ones only by rule 9)
//
//  1. Owner alive and running: nothing.
//  2. Owner dead (in View.DeadSince, not alive): once it has been dead for
//     FenceDelay (time for a cut-off owner to notice it lost the quorum and
//     for its copy to be gone), and once this leader has led for its
//     leader wait (LeaderSince + max(FenceDelay, LeaderDelay); no wait when
//     LeaderSince is zero), place the workload on another node. Until
//     then, nothing, whatever its status. The leader wait covers an owner
//     that kept quorum contact through the previous leader until this one
//     won, while this leader's gossip had declared it dead long before.
//  3. Owner neither alive nor in DeadSince (this leader's gossip has never
//     seen it: the leader restarted after the owner died, or its gossip has
//     not joined yet): nothing, whatever its status; never "dead long ago".
//     The owner may be alive, in contact with the quorum and running its
//     copy. The workload moves once the leader's gossip sees the owner
//     (dead: rule 2; alive: the other rules), or under a leader that saw
//     it; an owner that died before every live node's gossip started holds
//     its workloads until it comes back or a view of the members lists it.
//  4. App-failed, owner alive (the owner reported that the application
//     failed and its copy is gone): place it on another node; if no other
//     node can take it, back on the owner. At once, also within the leader
//     wait: there is no copy left to fence.
//  5. Restoring, owner alive, and the owner reported the attempt failed:
//     place it on the next candidate (the owner only as a last resort, from
//     another checkpoint). Restoring with no report for RestoreTimeout:
//     record the attempt as failed (RestoreDone{OK: false}); the next call
//     moves it. Both at once, also within the leader wait: a failed
//     attempt left no copy, and a restoring owner's copy is gone by the
//     restore deadline (see the contract).
//  6. Candidates: checkpoints newest first, except those marked bad
//     (state.MarkCheckpointBad: before placing an app-failed workload
//     whose copy was restored from checkpoint C and failed on its own, a
//     state.FailKind.Own kind, within state.QuickFailWindow of its
//     restore, the leader marks C bad: it caught the application dying;
//     a lost, fenced or killed copy, a failed migration or a failure of
//     unknown kind marks nothing); for each, its holders that are
//     alive and known nodes and can restore it (state.CanRestore: the
//     runtime that took it, a restore path, the CPU features it needs),
//     except (node, checkpoint) pairs already tried and the failing owner;
//     among them the node owning the fewest workloads, then the first by
//     name. When the checkpoint's only alive untried holders cannot
//     restore it, an alive node that can and does not hold it is a
//     candidate too (it fetches the archive from a holder), chosen the
//     same way. A node that cannot restore a checkpoint is never placed
//     with it, the owner as a last resort included.
//  7. After MaxAttempts failed attempts, or when no untried (node,
//     checkpoint) pair is left at all: give up (for a dead owner, only
//     once rule 2 allows a move).
//  8. When the only untried pairs left are on nodes that cannot restore
//     them, the workload is not given up but reported (state.Unplaceable,
//     once per distinct reason): "no node can restore it: " with every
//     other node and why. It moves as soon as a node that can restore it
//     holds or can fetch a checkpoint of it (a node reports new
//     capabilities, say).
//  9. A failed workload (given up) whose last change is at least
//     Policy.RetryFailed old is retried when a candidate exists now (rule
//     6, every (node, checkpoint) pair counted untried), in two steps.
//     First state.RetryWorkload: a new epoch, no owner, status retrying,
//     Tried cleared (a new round of MaxAttempts). A failed workload may
//     still have a copy somewhere: one started by hand whose registration
//     is not committed yet, or one a node waits on (View.Admit says Wait,
//     not Stop, for a workload the cluster gave up). Under retrying, every
//     node stops any copy of it and its registration is refused. Then,
//     once the retry is max(FenceDelay, LeaderDelay) old (its At) and this
//     leader has led for its leader wait (rule 2's reasoning: a node with
//     quorum contact applies the retry and stops its copy within
//     StopLatency of its next discovery; a node without it stops all its
//     copies within the lease of its last contact), the Place on the best
//     candidate then, or GiveUp again when none is left. Bad checkpoints
//     stay passed over, so a retry never restores one. A node holding a
//     checkpoint that came back, or a node that can now restore one,
//     brings it back. Without a candidate it stays failed, silently.
//
// A workload whose only untried candidates are on nodes that are not alive
// is left alone: those nodes may come back (a power cut), and giving up
// would turn a short outage into a permanent failure. When a node is gone
// for good, removing it from the state (state.RemoveNode) drops it from
// the holders, and the workload is then given up if nothing else is left.
//
// # Safety contract with the nodes
//
// Decide only keeps "never two live copies" together with these node-side
// rules and bounds, which the simulation in this package's tests models. A
// copy "is gone" once it is really removed: a copy told to stop is gone
// within StopLatency (the time to remove a pod: 500 ms).
//
//   - A node stops its copy of a workload when the state says another node
//     or another epoch owns it.
//   - A node that has had no quorum contact (no leader heard) for more
//     than half the lease, or whose own gossip sees no quorum of the
//     voters alive (as after a restart, before its gossip joined), starts
//     no copy, and stops all its copies at its next discovery pass (at
//     most a second later): for a lease of at least 2 s they start to stop
//     within the lease of the last contact. Heartbeats of a deposed leader
//     that has not yet noticed it lost the quorum count as contact; Raft
//     stops them (LeaderLeaseTimeout) before a new leader can be elected
//     (HeartbeatTimeout, at least as long).
//   - The leader's gossip declares a node dead no sooner than MinDetect
//     after it last heard it.
//   - Hence, with lease >= 2 s:
//     FenceDelay  >= lease - MinDetect + StopLatency, and
//     LeaderDelay >= lease + StopLatency (= FenceDelay + MinDetect):
//     the owner's last quorum contact may be as late as this leader's
//     election, through the previous leader, however long ago this
//     leader's gossip declared it dead. Restores are taken to start at
//     once; the time a restore really takes is margin on top.
//   - A node reports AppFailed, or a failed restore, only once its copy is
//     gone (not while it is still stopping).
//   - A restoring owner whose RestoreDone has not been committed by
//     Since+RestoreTimeout-margin stops its restored copy (and does not
//     start one after that), with a margin of at least StopLatency plus
//     the clock skew to the leader: the leader then records the attempt as
//     failed and moves on.
package failover

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// View is what the leader knows of the members, and when.
type View struct {
	Now       time.Time
	Alive     map[string]bool      // nodes memberlist sees alive (members of the cluster)
	DeadSince map[string]time.Time // when each non-alive node was declared dead; a node in neither map was never seen (rule 3: wait)
	// LeaderSince is when this leader won its term (the leader wait of rule
	// 2 counts from it); zero: no leader wait.
	LeaderSince time.Time
}

// Policy tunes the decisions.
type Policy struct {
	// FenceDelay is how long after a node is declared dead its workloads
	// are moved: at least lease - MinDetect + StopLatency (see the package
	// doc), the time for a node cut off from the quorum to have stopped
	// its copies.
	FenceDelay time.Duration
	// LeaderDelay is how long after View.LeaderSince a leader moves no
	// workload of a dead owner (the wait is never shorter than FenceDelay):
	// at least lease + StopLatency, i.e. FenceDelay + MinDetect, as the
	// owner may have kept quorum contact through the previous leader until
	// this one won.
	LeaderDelay time.Duration
	// MaxAttempts is how many failed restore attempts (len(Tried)) are
	// made before giving up; 0 means no limit.
	MaxAttempts int
	// RestoreTimeout: a restoring owner that reports nothing for this long
	// counts as a failed attempt, so a hung restore moves on; 0 disables
	// the timeout.
	RestoreTimeout time.Duration
	// RetryFailed: a failed workload given up at least this long ago is
	// placed again when a candidate exists (rule 9); 0 never retries.
	RetryFailed time.Duration
}

// leaderReady is when rule 2's leader wait ends (zero: no wait).
func (v View) leaderReady(p Policy) time.Time {
	if v.LeaderSince.IsZero() {
		return time.Time{}
	}
	return v.LeaderSince.Add(max(p.FenceDelay, p.LeaderDelay))
}

// Decide looks at the state and the view and returns the commands the
// leader should propose, sorted by workload ID, at most one per workload,
// all with At = v.Now. It does not change s.
func Decide(s *state.State, v View, p Policy) []state.Command {
	d := decider{s: s, v: v, p: p, owned: map[string]int{}}
	ids := make([]string, 0, len(s.Workloads))
	for id, w := range s.Workloads {
		ids = append(ids, id)
		if w.Owner != "" {
			d.owned[w.Owner]++
		}
	}
	slices.Sort(ids)
	var out []state.Command
	for _, id := range ids {
		w := s.Workloads[id]
		cmd := d.decide(w)
		if cmd == nil {
			continue
		}
		if pl, ok := cmd.(*state.Place); ok {
			// Later placements in this pass see the load this one adds.
			d.owned[w.Owner]--
			d.owned[pl.Owner]++
		}
		out = append(out, cmd)
	}
	return out
}

type decider struct {
	s     *state.State
	v     View
	p     Policy
	owned map[string]int // node -> workloads it owns (placements of this pass included)
}

// decide applies the rules to one workload.
func (d *decider) decide(w *state.Workload) state.Command {
	switch w.Status {
	case state.StatusFailed:
		return d.retry(w)
	case state.StatusRetrying:
		return d.place(w)
	}
	if mark := d.quickFail(w); mark != nil {
		return mark // before any placement, which then passes over it
	}
	if !d.v.Alive[w.Owner] {
		dead, seen := d.v.DeadSince[w.Owner]
		switch {
		case !seen:
			return nil // rule 3: never seen, it may be alive and running its copy
		case d.v.Now.Sub(dead) < d.p.FenceDelay:
			return nil // let a cut-off owner fence itself first
		case d.v.Now.Before(d.v.leaderReady(d.p)):
			return nil // it may have had quorum contact until this leader won
		}
		return d.move(w, fmt.Sprintf("node %s dead since %s", w.Owner, dead.UTC().Format(time.RFC3339Nano)), false)
	}
	switch w.Status {
	case state.StatusAppFailed:
		return d.move(w, fmt.Sprintf("application failed on %s: %s", w.Owner, w.Reason), true)
	case state.StatusRestoring:
		if w.AttemptFailed() {
			last := w.Tried[len(w.Tried)-1]
			return d.move(w, fmt.Sprintf("restore of #%d on %s failed: %s", last.Seq, last.Node, last.Error), true)
		}
		if d.p.RestoreTimeout > 0 && !d.v.Now.Before(w.Since.Add(d.p.RestoreTimeout)) {
			return &state.RestoreDone{At: d.v.Now, ID: w.ID, Node: w.Owner, Epoch: w.Epoch, Seq: w.Seq,
				Error: fmt.Sprintf("restore timed out: no report within %s", d.p.RestoreTimeout)}
		}
	}
	return nil
}

// retry starts the retry of a failed workload (rule 9): RetryWorkload
// once RetryFailed has passed and a candidate exists, or nil.
func (d *decider) retry(w *state.Workload) state.Command {
	if d.p.RetryFailed <= 0 || d.v.Now.Sub(w.Since) < d.p.RetryFailed {
		return nil
	}
	fresh := *w
	fresh.Tried = nil // RetryWorkload starts a new round
	if c := d.candidate(&fresh, false); c.node == "" {
		return nil
	}
	return &state.RetryWorkload{At: d.v.Now, ID: w.ID, Epoch: w.Epoch + 1,
		Reason: fmt.Sprintf("retry after giving up %s ago (%s)", d.v.Now.Sub(w.Since).Round(time.Second), w.LastError)}
}

// retryWait is how long a retrying workload waits before it is placed:
// as long as the leader wait of rule 2, for the same reason.
func (p Policy) retryWait() time.Duration { return max(p.FenceDelay, p.LeaderDelay) }

// place ends the retry of a retrying workload (rule 9): once the retry has
// been committed for the fence wait (and this leader has led for its own
// wait), Place on a candidate, or GiveUp again when none is left.
func (d *decider) place(w *state.Workload) state.Command {
	if d.v.Now.Sub(w.Since) < d.p.retryWait() || d.v.Now.Before(d.v.leaderReady(d.p)) {
		return nil // a copy on some node may not have stopped yet
	}
	c := d.candidate(w, false)
	if c.node == "" {
		return &state.GiveUp{At: d.v.Now, ID: w.ID, Epoch: w.Epoch,
			// Not w.Reason: it holds the last error, which would nest once
			// more at every round.
			Reason: fmt.Sprintf("retry found no candidate left after the fence wait (%s)", holders(w.Checkpoints))}
	}
	return &state.Place{At: d.v.Now, ID: w.ID, Owner: c.node, Epoch: w.Epoch + 1, Seq: c.seq, Reason: w.Reason}
}

// quickFail returns MarkCheckpointBad for an app-failed workload whose
// copy, restored from a checkpoint not yet marked, failed on its own
// within state.QuickFailWindow of its restore (rule 6), or nil.
func (d *decider) quickFail(w *state.Workload) state.Command {
	if w.Status != state.StatusAppFailed || w.RestoredFrom == 0 || !w.FailKind.Own() {
		return nil
	}
	ran := w.Since.Sub(w.RestoredAt)
	if ran < 0 || ran >= state.QuickFailWindow {
		return nil
	}
	cp := w.Checkpoint(w.RestoredFrom)
	if cp == nil || cp.Bad != "" {
		return nil
	}
	return &state.MarkCheckpointBad{At: d.v.Now, ID: w.ID, Seq: cp.Seq, SHA256: cp.SHA256,
		Why: fmt.Sprintf("the copy restored from it on %s at epoch %d failed on its own (%s) %s after its restore: %s",
			w.Owner, w.Epoch, w.FailKind, ran.Round(time.Millisecond), w.Reason)}
}

// move places w on the best candidate, gives it up, reports it
// unplaceable, or (when only nodes that are not alive could take it)
// leaves it for now. ownerLast allows the owner itself when no other node
// can take it.
func (d *decider) move(w *state.Workload, reason string, ownerLast bool) state.Command {
	if d.p.MaxAttempts > 0 && len(w.Tried) >= d.p.MaxAttempts {
		return &state.GiveUp{At: d.v.Now, ID: w.ID, Epoch: w.Epoch,
			Reason: fmt.Sprintf("%s; gave up after %d failed restore attempts: %s", reason, len(w.Tried), tries(w.Tried))}
	}
	c := d.candidate(w, ownerLast)
	switch {
	case c.node != "":
		return &state.Place{At: d.v.Now, ID: w.ID, Owner: c.node, Epoch: w.Epoch + 1, Seq: c.seq, Reason: reason}
	case c.waiting && !c.incapable:
		// Only holders that are not alive can take it: say so, once.
		msg := reason + "; waiting for " + strings.Join(c.waitingOn, ", ") + " to come back; no node can restore it: no alive node holds a checkpoint of it"
		if w.LastError == msg {
			return nil
		}
		return &state.Unplaceable{At: d.v.Now, ID: w.ID, Epoch: w.Epoch, Reason: msg}
	case len(w.Checkpoints) == 0:
		return &state.GiveUp{At: d.v.Now, ID: w.ID, Epoch: w.Epoch, Reason: reason + "; no checkpoint of it exists"}
	case c.incapable:
		msg := reason + "; " + d.noNodeCanRestore(w)
		if c.waiting {
			// Say why it waits: only holders that are not alive can take it.
			msg = reason + "; waiting for " + strings.Join(c.waitingOn, ", ") + " to come back; " + d.noNodeCanRestore(w)
		}
		if w.LastError == msg {
			return nil // said so already
		}
		return &state.Unplaceable{At: d.v.Now, ID: w.ID, Epoch: w.Epoch, Reason: msg}
	}
	msg := fmt.Sprintf("%s; no untried copy of a checkpoint left (%s)", reason, holders(w.Checkpoints))
	if len(w.Tried) > 0 {
		msg += "; tried " + tries(w.Tried)
	}
	return &state.GiveUp{At: d.v.Now, ID: w.ID, Epoch: w.Epoch, Reason: msg}
}

// choice is the outcome of candidate.
type choice struct {
	node string
	seq  uint64
	// waiting: an untried holder that can restore exists but is not
	// alive. incapable: an untried holder was passed over because it
	// cannot restore the checkpoint. waitingOn names those holders.
	waiting, incapable bool
	waitingOn          []string
}

// candidate picks where to restore w (rule 6).
func (d *decider) candidate(w *state.Workload, ownerLast bool) choice {
	type pair struct {
		node string
		seq  uint64
	}
	tried := make(map[pair]bool, len(w.Tried))
	for _, t := range w.Tried {
		tried[pair{t.Node, t.Seq}] = true
	}
	var out choice
	var last pair // the owner, as a last resort
	for i := range w.Checkpoints {
		cp := &w.Checkpoints[i]
		if cp.Bad != "" {
			continue // rule 6: never restored again
		}
		best, source := "", false // source: an alive holder that cannot restore it can send it
		for _, h := range cp.Holders {
			if tried[pair{h, cp.Seq}] || d.s.Nodes[h] == nil {
				continue
			}
			if ok, _ := d.s.CanRestore(h, cp); !ok {
				out.incapable = true
				source = source || d.v.Alive[h]
				continue
			}
			switch {
			case !d.v.Alive[h]:
				out.waiting = true
				if !slices.Contains(out.waitingOn, h) {
					out.waitingOn = append(out.waitingOn, h)
				}
			case h == w.Owner:
				if ownerLast && last.node == "" {
					last = pair{h, cp.Seq}
				}
			case d.less(h, best):
				best = h
			}
		}
		if best == "" && source {
			// No holder can restore it: a node that can fetches it.
			for _, n := range sortedNames(d.s.Nodes) {
				switch {
				case n == w.Owner || !d.v.Alive[n] || tried[pair{n, cp.Seq}] || slices.Contains(cp.Holders, n):
				case d.less(n, best):
					if ok, _ := d.s.CanRestore(n, cp); ok {
						best = n
					}
				}
			}
		}
		if best != "" {
			out.node, out.seq = best, cp.Seq
			return out
		}
	}
	if last.node != "" {
		out.node, out.seq = last.node, last.seq
	}
	return out
}

// less reports whether node n is a better choice than best ("" is the
// worst): fewer workloads owned, then the first by name.
func (d *decider) less(n, best string) bool {
	return best == "" || d.owned[n] < d.owned[best] || (d.owned[n] == d.owned[best] && n < best)
}

// noNodeCanRestore names every node and why it cannot take w now:
// judged with w's newest checkpoint it holds, or else w's newest. The
// owner is named only when it is alive (an app-failed owner that cannot
// restore its own checkpoint).
func (d *decider) noNodeCanRestore(w *state.Workload) string {
	var parts []string
	for _, n := range sortedNames(d.s.Nodes) {
		if n == w.Owner && !d.v.Alive[n] {
			continue
		}
		cp := judgedWith(w.Checkpoints, n)
		why := ""
		switch ok, reason := d.s.CanRestore(n, cp); {
		case cp.Bad != "":
			why = fmt.Sprintf("#%d is marked bad (%s)", cp.Seq, cp.Bad)
		case !ok:
			why = reason
		case !d.v.Alive[n]:
			why = "not alive"
		case !slices.Contains(cp.Holders, n):
			why = "holds no checkpoint of it, and no alive holder can send one"
		default:
			why = fmt.Sprintf("its restore of #%d was tried", cp.Seq)
		}
		parts = append(parts, n+": "+why)
	}
	if len(parts) == 0 {
		return "no node can restore it: no other node"
	}
	return "no node can restore it: " + strings.Join(parts, "; ")
}

// judgedWith is the checkpoint noNodeCanRestore judges node n with: the
// newest that n holds and that is not marked bad, else the newest n holds,
// else the newest not marked bad, else the newest. cps is not empty.
func judgedWith(cps []state.Checkpoint, n string) *state.Checkpoint {
	held, good := -1, -1
	for i := range cps {
		h := slices.Contains(cps[i].Holders, n)
		switch {
		case h && cps[i].Bad == "":
			return &cps[i]
		case h && held < 0:
			held = i
		case cps[i].Bad == "" && good < 0:
			good = i
		}
	}
	switch {
	case held >= 0:
		return &cps[held]
	case good >= 0:
		return &cps[good]
	}
	return &cps[0]
}

func sortedNames(m map[string]*state.Node) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func tries(ts []state.Try) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = fmt.Sprintf("%s#%d (%s)", t.Node, t.Seq, t.Error)
	}
	return strings.Join(parts, ", ")
}

func holders(cps []state.Checkpoint) string {
	parts := make([]string, len(cps))
	for i, cp := range cps {
		h := strings.Join(cp.Holders, " ")
		if h == "" {
			h = "no holder"
		}
		parts[i] = fmt.Sprintf("#%d on %s", cp.Seq, h)
		if cp.Bad != "" {
			parts[i] += " (bad: " + cp.Bad + ")"
		}
	}
	return strings.Join(parts, ", ")
}
