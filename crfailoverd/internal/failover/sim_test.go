package failover

// A randomized simulation of a crfailoverd cluster: nodes that power-cut,
// restart, partition and heal; a Raft-like log; a memberlist-like view; the
// leader running Decide; and the nodes' own reactions, as the daemon is to
// implement them. Time is counted in steps of one second.
//
// The model:
//
//   - Log: one committed state.State. A command commits (through Encode,
//     Decode and Apply) only when a leader exists and the proposer is in
//     the majority side: the partition group holding more than half of all
//     nodes, counting only those that are up. When the leader leaves the
//     majority side, a new one is elected there after electGap steps.
//   - Membership: the leader's memberlist sees a node alive while it is in
//     the majority side, and for detect steps after it was last seen there;
//     then dead since (last seen + detect).
//   - Views: a node in the majority side sees the committed state at once;
//     a node outside it acts on what it saw when it left, until it is back.
//   - Nodes run copies of workloads, each at an epoch, and have a store
//     high-water mark per workload (the next checkpoint number). Each step,
//     each up node:
//     1. stops all its copies when it has not been in the majority side for
//     lease steps (fencing), and starts none while so;
//     2. stops a copy whose workload its view shows with another owner or
//     epoch (or failed, or its restore recorded as failed), or still
//     restoring at Since+RestoreTimeout (the restore deadline);
//     3. when it can commit: restores what is placed on it (never at or
//     after the deadline) and sends RestoreDone, reports a restored copy
//     it has not reported, and reports AppFailed for a running workload it
//     owns but does not run. Reports commit 0..reportLag steps later (the
//     node retries until it can commit); a refused success stops the copy;
//     4. when it cannot commit but holds the lease: may restore what it saw
//     placed on it, without being able to report it.
//   - Restores of "flaky" workloads succeed, fail or hang at random; those
//     of the others always succeed.
//   - Events, at most one per step: power cut (the node's copies and
//     reports in flight vanish), restart (no lease until it hears from the
//     majority), partition into two groups, heal, application failure (a
//     copy stops), a checkpoint by a running owner (CommitCheckpoint, then
//     AddHolder from 1-2 peers of its side after 0-2 steps; an owner that
//     cannot commit only raises its store's counter), leader change,
//     rediscovery (a node re-registers its copies; a refused one stops).
//   - Two families of runs: "random" (parameters drawn per seed, the
//     restore timeout longer than detection plus an election plus the
//     report lag) and "stress" (every workload flaky, frequent partitions,
//     a restore timeout shorter than failure detection).
//
// Invariants:
//
//	(a) after every command: per workload, epochs never go down, and each
//	    epoch has one owner for ever; the state validates;
//	(b) whenever a copy starts, and after every step: never two live copies
//	    of a workload on up nodes;
//	(c) after the schedule: heal, restart enough nodes for a quorum, run to
//	    quiescence; then every workload runs as one copy on its live owner
//	    at the current epoch, or is failed, or waits (owner dead or attempt
//	    failed) with no live node holding an untried checkpoint. A give-up
//	    is checked when the leader proposes it: attempts exhausted, or no
//	    known node holds an untried checkpoint. Workloads whose restores
//	    never fail only have timed-out attempts, each while their owner could
//	    not commit at some point since the placement.
//
// Every leader decision must commit. TestSimulationCatchesUnsafeRules
// breaks one node-side rule at a time and expects two live copies.
//
// Replay one seed with its trace:
//
//	go test ./crfailoverd/internal/failover -run '^TestSimulation/random$' -sim.seed=N -v

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

var simSeed = flag.Int("sim.seed", -1, "run only this simulation seed and log its trace")

var simBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// simConfig is one run's setup; times are in steps.
type simConfig struct {
	nodes, workloads, steps int
	lease, detect, electGap int
	reportLag               int // a restore's report commits 0..reportLag steps after it
	policy                  Policy
	flakyRate               int          // percent of workloads whose restores may fail or hang
	failPct, hangPct        int          // outcome of a flaky workload's restore attempt
	events                  [evCount]int // percent chance of each event per step
	// Node-side rules switched off, to check that the invariants catch it.
	noFencing, noRestoreDeadline bool
}

func randomConfig(rng *rand.Rand) simConfig {
	c := simConfig{
		nodes: 3 + rng.IntN(3), workloads: 2 + rng.IntN(5), steps: 150,
		lease: 2 + rng.IntN(3), detect: 1 + rng.IntN(3), electGap: 1 + rng.IntN(2), reportLag: rng.IntN(4),
		flakyRate: 30, failPct: 40, hangPct: 20,
		events: [evCount]int{evPowerCut: 4, evRestart: 6, evPartition: 3, evHeal: 6, evAppFailure: 6,
			evCheckpoint: 20, evLeaderChange: 3, evRediscover: 4},
	}
	// The restore timeout leaves room for detection, an election and the
	// report's lag, so that only injected faults make restores fail.
	c.policy = Policy{
		FenceDelay:     steps(c.lease + rng.IntN(3)),
		MaxAttempts:    1 + rng.IntN(4),
		RestoreTimeout: steps(c.detect + c.electGap + c.reportLag + 2 + rng.IntN(4)),
	}
	return c
}

// Events.
const (
	evPowerCut = iota
	evRestart
	evPartition
	evHeal
	evAppFailure
	evCheckpoint
	evLeaderChange
	evRediscover
	evCount
)

func steps(n int) time.Duration { return time.Duration(n) * time.Second }

type simNode struct {
	name        string
	up          bool
	group       int
	lastContact int               // last step in the majority side
	view        *state.State      // what it saw when it left the majority side; nil while in it
	copies      map[string]uint64 // running copies: workload -> epoch
	hiwater     map[string]uint64 // its store's highest checkpoint number per workload
	reporting   map[string]uint64 // restore reports in flight: workload -> epoch
}

// report is a RestoreDone on its way to the leader.
type report struct {
	n   *simNode
	cmd *state.RestoreDone
	due int
}

type replication struct {
	from, to *simNode
	id, sha  string
	seq      uint64
	due      int
}

// simStats counts what happened over runs, by name; names starting with
// "max " hold a maximum.
type simStats map[string]int

func (st simStats) merge(o simStats) {
	for k, v := range o {
		if strings.HasPrefix(k, "max ") {
			st[k] = max(st[k], v)
		} else {
			st[k] += v
		}
	}
}

type sim struct {
	cfg       simConfig
	rng       *rand.Rand
	step      int
	nodes     []*simNode
	committed *state.State
	leader    *simNode
	electAt   int
	lastSeen  map[string]int
	disturbed map[string]int               // node -> last step it could not commit
	owners    map[string]map[uint64]string // workload -> epoch -> owner, over the whole log
	maxEpoch  map[string]uint64
	flaky     map[string]bool
	pending   []replication
	reports   []report
	changes   int // commits and copy starts and stops, to detect quiescence
	trace     []string
	err       error
	st        simStats
}

var errNoQuorum = errors.New("no quorum")

func newSim(seed uint64, cfg func(*rand.Rand) simConfig, st simStats) *sim {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	m := &sim{cfg: cfg(rng), rng: rng, committed: state.New(), lastSeen: map[string]int{}, disturbed: map[string]int{},
		owners: map[string]map[uint64]string{}, maxEpoch: map[string]uint64{}, flaky: map[string]bool{}, st: st}
	for i := range m.cfg.nodes {
		m.nodes = append(m.nodes, &simNode{name: fmt.Sprintf("n%d", i+1), up: true,
			copies: map[string]uint64{}, hiwater: map[string]uint64{}, reporting: map[string]uint64{}})
	}
	c := m.cfg
	m.tracef("config: %d nodes, %d workloads, lease %d, detect %d, election gap %d, report lag %d, fence delay %s, restore timeout %s, max attempts %d",
		c.nodes, c.workloads, c.lease, c.detect, c.electGap, c.reportLag, c.policy.FenceDelay, c.policy.RestoreTimeout, c.policy.MaxAttempts)
	return m
}

func (m *sim) now() time.Time { return simBase.Add(steps(m.step)) }

func (m *sim) tracef(format string, args ...any) {
	m.trace = append(m.trace, fmt.Sprintf("t=%-3d ", m.step)+fmt.Sprintf(format, args...))
}

func (m *sim) fail(format string, args ...any) {
	if m.err == nil {
		m.err = fmt.Errorf("step %d: %s", m.step, fmt.Sprintf(format, args...))
		m.tracef("VIOLATION: %v", m.err)
	}
}

// run plays the schedule, settles, and checks liveness.
func (m *sim) run() error {
	m.setup()
	for m.step = 1; m.step <= m.cfg.steps && m.err == nil; m.step++ {
		m.event()
		m.tick()
		if m.step%50 == 0 {
			m.snapshotRoundTrip()
		}
	}
	if m.err == nil {
		m.settle()
	}
	m.st["runs"]++
	m.st["steps"] += m.step
	return m.err
}

func (m *sim) setup() {
	m.observe()
	for _, n := range m.nodes {
		m.propose(m.leader, &state.UpsertNode{At: m.now(), Name: n.name, RPCAddr: n.name + ":7947"})
	}
	for i := range m.cfg.workloads {
		id := fmt.Sprintf("ns/w%d/c", i)
		n := m.nodes[m.rng.IntN(len(m.nodes))]
		m.flaky[id] = m.rng.IntN(100) < m.cfg.flakyRate
		if err := m.propose(n, &state.RegisterWorkload{At: m.now(), ID: id, Node: n.name, Interval: 10 * time.Second, Config: []byte(`{}`)}); err != nil {
			m.fail("initial registration: %v", err)
			return
		}
		m.startCopy(n, id, m.committed.Workloads[id].Epoch, "original pod")
		if m.rng.IntN(100) < 85 {
			m.checkpoint(n, id)
		}
		m.tracef("%s flaky=%t", id, m.flaky[id])
	}
	m.deliver()
}

// tick is one step after the event: bookkeeping, the nodes' reactions, the
// leader's decisions, the nodes' reactions to those, replication.
func (m *sim) tick() {
	m.observe()
	m.react()
	m.lead()
	m.react()
	m.deliverReports()
	m.deliver()
	m.checkCopies()
}

// --- log, membership, views ---

func (m *sim) majorityGroup() int {
	var count [2]int
	for _, n := range m.nodes {
		if n.up {
			count[n.group]++
		}
	}
	for g, c := range count {
		if 2*c > len(m.nodes) {
			return g
		}
	}
	return -1
}

func (m *sim) inMajority(n *simNode) bool { return n.up && n.group == m.majorityGroup() }

func (m *sim) canCommit(n *simNode) bool { return m.leader != nil && m.inMajority(n) }

func (m *sim) observe() {
	for _, n := range m.nodes {
		if m.inMajority(n) {
			n.lastContact, m.lastSeen[n.name], n.view = m.step, m.step, nil
		} else if n.view == nil {
			n.view = m.committed.Clone()
		}
	}
	if m.leader != nil && !m.inMajority(m.leader) {
		m.tracef("leader %s lost", m.leader.name)
		m.leader, m.electAt = nil, m.step+m.cfg.electGap
	}
	if m.leader == nil && m.step >= m.electAt {
		if maj := m.majoritySide(); len(maj) > 0 {
			m.leader = maj[m.rng.IntN(len(maj))]
			m.tracef("leader %s elected", m.leader.name)
		}
	}
	for _, n := range m.nodes {
		if !m.canCommit(n) {
			m.disturbed[n.name] = m.step
		}
	}
}

func (m *sim) majoritySide() []*simNode {
	var out []*simNode
	for _, n := range m.nodes {
		if m.inMajority(n) {
			out = append(out, n)
		}
	}
	return out
}

func (m *sim) viewOf(n *simNode) *state.State {
	if n.view != nil {
		return n.view
	}
	return m.committed
}

// memberView is the leader's memberlist view.
func (m *sim) memberView() View {
	v := View{Now: m.now(), Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	for _, n := range m.nodes {
		if m.inMajority(n) || m.step-m.lastSeen[n.name] < m.cfg.detect {
			v.Alive[n.name] = true
		} else {
			v.DeadSince[n.name] = simBase.Add(steps(m.lastSeen[n.name] + m.cfg.detect))
		}
	}
	return v
}

// propose commits cmd from node n if it can, through the log encoding.
func (m *sim) propose(n *simNode, cmd state.Command) error {
	if n == nil || !m.canCommit(n) {
		return errNoQuorum
	}
	b, err := state.Encode(cmd)
	if err != nil {
		m.fail("encode %T: %v", cmd, err)
		return err
	}
	dec, err := state.Decode(b)
	if err != nil {
		m.fail("decode %T: %v", cmd, err)
		return err
	}
	err = m.committed.Apply(dec)
	if err != nil {
		m.st["refused"]++
		m.tracef("%s: %s: refused: %v", n.name, describe(dec), err)
		return err
	}
	m.st["commits"]++
	m.changes++
	m.tracef("%s: %s", n.name, describe(dec))
	m.checkLog()
	return nil
}

// checkLog is invariant (a), and the state's own invariants.
func (m *sim) checkLog() {
	for id, w := range m.committed.Workloads {
		if w.Epoch < m.maxEpoch[id] {
			m.fail("%s: epoch went down from %d to %d", id, m.maxEpoch[id], w.Epoch)
		}
		m.maxEpoch[id] = w.Epoch
		if w.Owner == "" {
			continue
		}
		if m.owners[id] == nil {
			m.owners[id] = map[uint64]string{}
		}
		if prev, ok := m.owners[id][w.Epoch]; ok && prev != w.Owner {
			m.fail("%s: epoch %d owned by %s, earlier by %s", id, w.Epoch, w.Owner, prev)
		}
		m.owners[id][w.Epoch] = w.Owner
	}
	if err := m.committed.Validate(); err != nil {
		m.fail("invalid state: %v", err)
	}
}

func (m *sim) snapshotRoundTrip() {
	var b strings.Builder
	if err := m.committed.WriteSnapshot(&b); err != nil {
		m.fail("write snapshot: %v", err)
		return
	}
	s, err := state.ReadSnapshot(strings.NewReader(b.String()))
	if err != nil {
		m.fail("read snapshot: %v", err)
		return
	}
	if !reflect.DeepEqual(s, m.committed) {
		m.fail("snapshot round trip changed the state")
	}
	m.committed = s // go on from the restored state, as a node that restarted from it
	m.st["snapshots"]++
}

// --- copies ---

// startCopy starts n's copy of id at epoch: invariant (b).
func (m *sim) startCopy(n *simNode, id string, epoch uint64, why string) {
	for _, o := range m.nodes {
		if oe, ok := o.copies[id]; ok && o != n && o.up {
			m.fail("two live copies of %s: %s at epoch %d and %s at epoch %d", id, o.name, oe, n.name, epoch)
		}
	}
	n.copies[id] = epoch
	m.changes++
	m.st["copiesStarted"]++
	m.tracef("%s: starts %s at epoch %d (%s)", n.name, id, epoch, why)
}

func (m *sim) stopCopy(n *simNode, id, why string) {
	m.tracef("%s: stops %s at epoch %d (%s)", n.name, id, n.copies[id], why)
	delete(n.copies, id)
	m.changes++
}

// checkCopies re-checks (b) over all nodes, and that no down node runs
// anything.
func (m *sim) checkCopies() {
	where := map[string]string{}
	for _, n := range m.nodes {
		if !n.up && len(n.copies) > 0 {
			m.fail("down node %s runs copies", n.name)
		}
		for id := range n.copies {
			if o, ok := where[id]; ok {
				m.fail("two live copies of %s: %s and %s", id, o, n.name)
			}
			where[id] = n.name
		}
	}
}

// --- node-side behaviour ---

func (m *sim) react() {
	for _, i := range m.rng.Perm(len(m.nodes)) {
		if n := m.nodes[i]; n.up {
			m.reactNode(n)
		}
	}
}

func (m *sim) deadline(w *state.Workload) time.Time { return w.Since.Add(m.cfg.policy.RestoreTimeout) }

func (m *sim) reactNode(n *simNode) {
	leased := m.step-n.lastContact < m.cfg.lease
	if !leased && !m.cfg.noFencing && len(n.copies) > 0 {
		for _, id := range sortedIDs(n.copies) {
			m.stopCopy(n, id, "fenced: no quorum for the lease")
		}
		m.st["fenced"]++
	}
	view := m.viewOf(n)
	for _, id := range sortedIDs(n.copies) {
		w := view.Workloads[id]
		switch {
		case w == nil || w.Owner != n.name || w.Epoch != n.copies[id]:
			m.stopCopy(n, id, "owner or epoch changed")
			m.st["staleStops"]++
		case w.AttemptFailed():
			m.stopCopy(n, id, "its restore was recorded as failed")
		case w.Status == state.StatusRestoring && !m.cfg.noRestoreDeadline && !m.now().Before(m.deadline(w)):
			m.stopCopy(n, id, "restore not confirmed by its deadline")
			m.st["deadlineStops"]++
		}
	}
	if m.canCommit(n) {
		for _, id := range sortedIDs(m.committed.Workloads) {
			w := m.committed.Workloads[id]
			if w.Owner != n.name {
				continue
			}
			_, has := n.copies[id]
			reporting := n.reporting[id] == w.Epoch
			switch {
			case w.Status == state.StatusRunning && !has:
				m.st["appFailures"]++
				m.propose(n, &state.AppFailed{At: m.now(), ID: id, Node: n.name, Epoch: w.Epoch, Reason: "container not running"})
			case w.Status == state.StatusRestoring && has && !reporting:
				m.report(n, w, "")
			case w.Status == state.StatusRestoring && !has && !reporting && !w.AttemptFailed() && m.now().Before(m.deadline(w)):
				m.restore(n, w, true)
			}
		}
		return
	}
	if !leased && !m.cfg.noFencing {
		return
	}
	// Cut off but within the lease: it may restore what it last saw placed
	// on it; it cannot report that.
	for _, id := range sortedIDs(view.Workloads) {
		w := view.Workloads[id]
		_, has := n.copies[id]
		if w.Owner == n.name && w.Status == state.StatusRestoring && !has && n.reporting[id] != w.Epoch &&
			!w.AttemptFailed() && m.now().Before(m.deadline(w)) && m.rng.IntN(2) == 0 {
			m.st["minorityRestores"]++
			m.restore(n, w, false)
		}
	}
}

// restore is n's attempt to restore w as placed; report: it can commit.
func (m *sim) restore(n *simNode, w *state.Workload, report bool) {
	outcome := "ok"
	if m.flaky[w.ID] {
		switch r := m.rng.IntN(100); {
		case r < m.cfg.failPct:
			outcome = "fail"
		case r < m.cfg.failPct+m.cfg.hangPct:
			outcome = "hang"
		}
	}
	switch outcome {
	case "hang":
		m.tracef("%s: restore of %s #%d at epoch %d hangs", n.name, w.ID, w.Seq, w.Epoch)
	case "fail":
		m.tracef("%s: restore of %s #%d at epoch %d fails", n.name, w.ID, w.Seq, w.Epoch)
		if report {
			m.report(n, w, "criu: injected failure")
		}
	default:
		m.startCopy(n, w.ID, w.Epoch, fmt.Sprintf("restored #%d", w.Seq))
		n.hiwater[w.ID] = max(n.hiwater[w.ID], w.Seq)
		if report {
			m.report(n, w, "")
		}
	}
}

// report sends the outcome of n's restore of w (failed with errMsg, or
// succeeded if errMsg is ""); it commits up to reportLag steps later.
func (m *sim) report(n *simNode, w *state.Workload, errMsg string) {
	n.reporting[w.ID] = w.Epoch
	cmd := &state.RestoreDone{ID: w.ID, Node: n.name, Epoch: w.Epoch, Seq: w.Seq, OK: errMsg == "", Error: errMsg}
	m.reports = append(m.reports, report{n: n, cmd: cmd, due: m.step + m.rng.IntN(m.cfg.reportLag+1)})
}

// deliverReports commits the reports that are due; a node retries until
// it can commit. A refused success report stops the copy.
func (m *sim) deliverReports() {
	var later []report
	for _, r := range m.reports {
		c := r.cmd
		switch {
		case !r.n.up || r.n.reporting[c.ID] != c.Epoch:
			continue // the node restarted: the report is lost
		case r.due > m.step || !m.canCommit(r.n):
			later = append(later, r)
			continue
		}
		delete(r.n.reporting, c.ID)
		c.At = m.now()
		err := m.propose(r.n, c)
		if c.OK && err != nil && r.n.copies[c.ID] == c.Epoch {
			m.stopCopy(r.n, c.ID, "restore report refused")
		}
	}
	m.reports = later
}

// checkpoint: owner n checkpoints id; when it can commit, records it and
// queues replication to 1-2 peers of its side.
func (m *sim) checkpoint(n *simNode, id string) {
	seq := n.hiwater[id] + 1
	n.hiwater[id] = seq
	m.st["checkpoints"]++
	if !m.canCommit(n) {
		m.tracef("%s: checkpoint #%d of %s stays local (no quorum)", n.name, seq, id)
		return
	}
	epoch := n.copies[id]
	sha := fmt.Sprintf("%s#%d@%s/e%d", id, seq, n.name, epoch)
	cp := state.Checkpoint{Seq: seq, SHA256: sha, Size: 1 << 20, Created: m.now()}
	if m.propose(n, &state.CommitCheckpoint{At: m.now(), ID: id, Node: n.name, Epoch: epoch, Checkpoint: cp}) != nil {
		return
	}
	var peers []*simNode
	for _, o := range m.nodes {
		if o != n && o.up && o.group == n.group {
			peers = append(peers, o)
		}
	}
	m.rng.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	for _, to := range peers[:min(len(peers), 1+m.rng.IntN(2))] {
		m.pending = append(m.pending, replication{from: n, to: to, id: id, sha: sha, seq: seq, due: m.step + m.rng.IntN(3)})
	}
}

// deliver completes due replications: the receiver stores the copy and
// records itself as a holder.
func (m *sim) deliver() {
	var later []replication
	for _, r := range m.pending {
		if r.due > m.step {
			later = append(later, r)
			continue
		}
		if !r.from.up || !r.to.up || r.from.group != r.to.group {
			m.st["lostReplications"]++
			m.tracef("replication of %s #%d %s->%s lost", r.id, r.seq, r.from.name, r.to.name)
			continue
		}
		r.to.hiwater[r.id] = max(r.to.hiwater[r.id], r.seq)
		err := m.propose(r.to, &state.AddHolder{At: m.now(), ID: r.id, Seq: r.seq, SHA256: r.sha, Node: r.to.name})
		if errors.Is(err, state.ErrStale) {
			m.st["staleHolders"]++
		}
	}
	m.pending = later
}

// --- the leader ---

func (m *sim) lead() {
	if m.leader == nil {
		return
	}
	v := m.memberView()
	cmds := Decide(m.committed, v, m.cfg.policy)
	if m.step%10 == 0 {
		if again := Decide(m.committed.Clone(), v, m.cfg.policy); !reflect.DeepEqual(cmds, again) {
			m.fail("Decide is not deterministic:%s\n%s", show(cmds), show(again))
		}
	}
	for _, cmd := range cmds {
		if g, ok := cmd.(*state.GiveUp); ok {
			m.checkGiveUp(m.committed.Workloads[g.ID])
		}
		if err := m.propose(m.leader, cmd); err != nil {
			m.fail("the leader's %s was refused: %v", describe(cmd), err)
		}
		switch c := cmd.(type) {
		case *state.Place:
			switch {
			case strings.HasPrefix(c.Reason, "node "):
				m.st["placedDead"]++
			case strings.HasPrefix(c.Reason, "application failed"):
				m.st["placedApp"]++
			case strings.HasPrefix(c.Reason, "restore of"):
				m.st["placedRestore"]++
			default:
				m.fail("placement for an unknown reason: %q", c.Reason)
			}
		case *state.RestoreDone:
			m.st["timeouts"]++
			m.checkTimeout(c)
		case *state.GiveUp:
			m.st["gaveUp"]++
		}
	}
}

// checkTimeout: a restore of a workload whose restores never fail times out
// only if its owner was cut off, down or without a leader at some point
// since the placement (its report could not get through).
func (m *sim) checkTimeout(c *state.RestoreDone) {
	w := m.committed.Workloads[c.ID]
	placed := int(w.Since.Sub(simBase) / time.Second)
	if !m.flaky[c.ID] && m.disturbed[c.Node] < placed {
		m.fail("restore of %s on %s timed out, though its restores never fail and it could report since step %d", c.ID, c.Node, placed)
	}
}

// checkGiveUp: the leader gives w up only after MaxAttempts failed
// attempts, or when no known node holds an untried checkpoint of it.
func (m *sim) checkGiveUp(w *state.Workload) {
	pol := m.cfg.policy
	if pol.MaxAttempts > 0 && len(w.Tried) >= pol.MaxAttempts {
		return
	}
	if n := m.untriedHolders(w); len(n) > 0 {
		m.fail("%s given up although %v hold untried checkpoints", w.ID, n)
	}
}

// untriedHolders lists the known nodes holding a checkpoint of w they
// have not tried to restore.
func (m *sim) untriedHolders(w *state.Workload) []*simNode {
	tried := map[string]bool{}
	for _, t := range w.Tried {
		tried[fmt.Sprint(t.Node, "#", t.Seq)] = true
	}
	var out []*simNode
	for _, cp := range w.Checkpoints {
		for _, h := range cp.Holders {
			if !tried[fmt.Sprint(h, "#", cp.Seq)] && m.committed.Nodes[h] != nil {
				out = append(out, m.node(h))
			}
		}
	}
	return out
}

func (m *sim) node(name string) *simNode {
	for _, n := range m.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// --- events ---

func (m *sim) event() {
	pick := func(f func(n *simNode) bool) *simNode {
		var l []*simNode
		for _, n := range m.nodes {
			if f(n) {
				l = append(l, n)
			}
		}
		if len(l) == 0 {
			return nil
		}
		return l[m.rng.IntN(len(l))]
	}
	partitioned := slices.ContainsFunc(m.nodes, func(n *simNode) bool { return n.group != 0 })
	r, ev := m.rng.IntN(100), 0
	for ev < len(m.cfg.events) && r >= m.cfg.events[ev] {
		r -= m.cfg.events[ev]
		ev++
	}
	switch ev {
	case evPowerCut:
		if n := pick(func(n *simNode) bool { return n.up }); n != nil {
			m.tracef("EVENT power cut %s", n.name)
			n.up, n.copies, n.reporting = false, map[string]uint64{}, map[string]uint64{}
			m.st["powerCuts"]++
		}
	case evRestart:
		if n := pick(func(n *simNode) bool { return !n.up }); n != nil {
			m.restart(n)
		}
	case evPartition:
		if !partitioned {
			m.partition()
		}
	case evHeal:
		if partitioned {
			m.heal()
		}
	case evAppFailure:
		if n := pick(func(n *simNode) bool { return n.up && len(n.copies) > 0 }); n != nil {
			ids := sortedIDs(n.copies)
			id := ids[m.rng.IntN(len(ids))]
			m.tracef("EVENT application %s fails on %s", id, n.name)
			m.stopCopy(n, id, "application failed")
		}
	case evCheckpoint:
		if n := pick(func(n *simNode) bool { return n.up && len(n.copies) > 0 }); n != nil {
			ids := sortedIDs(n.copies)
			id := ids[m.rng.IntN(len(ids))]
			if w := m.viewOf(n).Workloads[id]; w != nil && w.Status == state.StatusRunning {
				m.checkpoint(n, id)
			}
		}
	case evLeaderChange:
		if maj := m.majoritySide(); len(maj) > 0 && m.leader != nil {
			m.leader = maj[m.rng.IntN(len(maj))]
			m.tracef("EVENT leadership moves to %s", m.leader.name)
		}
	case evRediscover:
		if n := pick(m.canCommit); n != nil {
			m.rediscover(n)
		}
	}
}

func (m *sim) restart(n *simNode) {
	m.tracef("EVENT restart %s", n.name)
	n.up, n.lastContact = true, -1<<30 // no lease until it hears from the majority
}

func (m *sim) partition() {
	for _, n := range m.nodes {
		n.group = m.rng.IntN(2)
	}
	if !slices.ContainsFunc(m.nodes, func(n *simNode) bool { return n.group == 1 }) {
		m.nodes[m.rng.IntN(len(m.nodes))].group = 1
	}
	if !slices.ContainsFunc(m.nodes, func(n *simNode) bool { return n.group == 0 }) {
		m.nodes[m.rng.IntN(len(m.nodes))].group = 0
	}
	var sides [2][]string
	for _, n := range m.nodes {
		sides[n.group] = append(sides[n.group], n.name)
	}
	m.tracef("EVENT partition %v | %v", sides[0], sides[1])
	m.st["partitions"]++
}

func (m *sim) heal() {
	m.tracef("EVENT heal")
	for _, n := range m.nodes {
		n.group = 0
	}
}

// rediscover: n re-registers every copy it runs, as the daemon's discovery
// does; a refused one is stopped, an accepted one runs at the recorded epoch.
func (m *sim) rediscover(n *simNode) {
	m.tracef("EVENT rediscovery on %s", n.name)
	for _, id := range sortedIDs(n.copies) {
		err := m.propose(n, &state.RegisterWorkload{At: m.now(), ID: id, Node: n.name, CopyEpoch: n.copies[id], Interval: 10 * time.Second, Config: []byte(`{}`)})
		m.st["reg"]++
		switch {
		case err == nil:
			n.copies[id] = m.committed.Workloads[id].Epoch
		case errors.Is(err, state.ErrStale):
			m.stopCopy(n, id, "registration refused")
		}
	}
}

// --- the end: settle and check liveness ---

func (m *sim) settle() {
	m.heal()
	for _, n := range m.nodes {
		if !n.up && m.rng.IntN(2) == 0 {
			m.restart(n)
		}
	}
	for m.majorityGroup() < 0 {
		var down []*simNode
		for _, n := range m.nodes {
			if !n.up {
				down = append(down, n)
			}
		}
		m.restart(down[m.rng.IntN(len(down))])
	}
	p := m.cfg.policy
	need := int((p.FenceDelay+p.RestoreTimeout)/time.Second) + m.cfg.detect + m.cfg.lease + m.cfg.electGap + 3
	quiet, settled := 0, 0
	for ; settled < 500 && quiet < need && m.err == nil; settled++ {
		m.step++
		before := m.changes
		m.tick()
		if m.changes == before {
			quiet++
		} else {
			quiet = 0
		}
	}
	m.st["max settle steps"] = max(m.st["max settle steps"], settled)
	if m.err != nil {
		return
	}
	if quiet < need {
		m.fail("no quiescence after %d settling steps", settled)
		return
	}
	if cmds := Decide(m.committed, m.memberView(), p); len(cmds) > 0 {
		m.fail("quiescent, but the leader still decides:%s", show(cmds))
	}
	m.checkLiveness()
}

// checkLiveness is invariant (c).
func (m *sim) checkLiveness() {
	for _, id := range sortedIDs(m.committed.Workloads) {
		w := m.committed.Workloads[id]
		var live []string
		for _, n := range m.nodes {
			if _, ok := n.copies[id]; ok {
				live = append(live, n.name)
			}
		}
		switch {
		case w.Status == state.StatusRunning && m.node(w.Owner).up:
			if len(live) != 1 || live[0] != w.Owner || m.node(w.Owner).copies[id] != w.Epoch {
				m.fail("%s is running on %s at epoch %d, but the live copies are %v", id, w.Owner, w.Epoch, live)
			}
			m.st["endRunning"]++
		case w.Status == state.StatusFailed:
			// Why it was given up is checked when it was (checkGiveUp).
			if len(live) > 0 {
				m.fail("%s failed, with live copies %v", id, live)
			}
			m.st["endFailed"]++
		default: // waiting for a holder to come back
			if len(live) > 0 || slices.ContainsFunc(m.untriedHolders(w), func(n *simNode) bool { return n.up }) {
				m.fail("%s stays %s on %s with copies %v and a live untried holder", id, w.Status, w.Owner, live)
			}
			m.st["endWaiting"]++
		}
		for _, t := range w.Tried {
			if !m.flaky[id] && !strings.HasPrefix(t.Error, "restore timed out") {
				m.fail("%s never fails to restore, yet has a failed attempt %v", id, t)
			}
		}
	}
}

func sortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func describe(cmd state.Command) string {
	switch c := cmd.(type) {
	case *state.RegisterWorkload:
		return fmt.Sprintf("register %s on %s (copy epoch %d)", c.ID, c.Node, c.CopyEpoch)
	case *state.CommitCheckpoint:
		return fmt.Sprintf("commit %s #%d at epoch %d", c.ID, c.Checkpoint.Seq, c.Epoch)
	case *state.AddHolder:
		return fmt.Sprintf("add holder %s of %s #%d", c.Node, c.ID, c.Seq)
	case *state.Place:
		return fmt.Sprintf("place %s on %s at epoch %d from #%d (%s)", c.ID, c.Owner, c.Epoch, c.Seq, c.Reason)
	case *state.RestoreDone:
		return fmt.Sprintf("restore done %s on %s at epoch %d #%d ok=%t %s", c.ID, c.Node, c.Epoch, c.Seq, c.OK, c.Error)
	case *state.AppFailed:
		return fmt.Sprintf("app failed %s on %s at epoch %d (%s)", c.ID, c.Node, c.Epoch, c.Reason)
	case *state.GiveUp:
		return fmt.Sprintf("give up %s at epoch %d (%s)", c.ID, c.Epoch, c.Reason)
	case *state.UpsertNode:
		return "upsert node " + c.Name
	}
	return fmt.Sprintf("%T", cmd)
}

// stressConfig: every workload's restores may fail or hang, partitions
// come and go often, reports lag, and the restore timeout is shorter than
// failure detection, so the leader times restores out on nodes it still
// sees alive.
func stressConfig(rng *rand.Rand) simConfig {
	c := randomConfig(rng)
	c.flakyRate, c.failPct, c.hangPct = 100, 10, 60
	c.detect, c.lease, c.reportLag = 3, 5, 3
	c.events[evPartition], c.events[evHeal] = 15, 15
	c.policy = Policy{FenceDelay: steps(5), RestoreTimeout: steps(4)}
	return c
}

// runSims runs seeds [0, n) on all CPUs (or only -sim.seed, logging its
// trace) and returns the lowest failing seed's error with its replay
// command and trace.
func runSims(t *testing.T, n int, cfg func(*rand.Rand) simConfig) (simStats, error) {
	st := simStats{}
	if *simSeed >= 0 {
		m := newSim(uint64(*simSeed), cfg, st)
		err := m.run()
		t.Logf("trace of seed %d:\n%s", *simSeed, strings.Join(m.trace, "\n"))
		if err != nil {
			return st, fmt.Errorf("seed %d: %w", *simSeed, err)
		}
		return st, nil
	}
	var (
		mu      sync.Mutex
		next    int
		failed  = -1
		failure error
		wg      sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			local := simStats{}
			for {
				mu.Lock()
				seed := next
				next++
				stop := seed >= n || (failed >= 0 && seed > failed)
				mu.Unlock()
				if stop {
					break
				}
				m := newSim(uint64(seed), cfg, local)
				if err := m.run(); err != nil {
					mu.Lock()
					if failed < 0 || seed < failed {
						failed = seed
						failure = fmt.Errorf("seed %d: %w\nreplay: go test ./crfailoverd/internal/failover -run '^%s$' -sim.seed=%d -v\ntrace:\n%s",
							seed, err, t.Name(), seed, strings.Join(m.trace, "\n"))
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			st.merge(local)
			mu.Unlock()
		})
	}
	wg.Wait()
	return st, failure
}

func TestSimulation(t *testing.T) {
	seeds := 1000
	if testing.Short() {
		seeds = 200
	}
	for _, tc := range []struct {
		name string
		cfg  func(*rand.Rand) simConfig
	}{{"random", randomConfig}, {"stress", stressConfig}} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			st, err := runSims(t, seeds, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d runs in %s: %v", st["runs"], time.Since(start).Round(time.Millisecond), st)
			if *simSeed >= 0 || testing.Short() {
				return
			}
			// The schedule must exercise what the invariants are about.
			want := []string{"placedDead", "placedApp", "placedRestore", "timeouts", "gaveUp", "fenced",
				"minorityRestores", "refused", "endRunning", "endFailed", "endWaiting"}
			if tc.name == "stress" {
				want = append(want, "deadlineStops")
			}
			for _, name := range want {
				if st[name] == 0 {
					t.Errorf("the simulation never produced %s", name)
				}
			}
		})
	}
}

// TestSimulationCatchesUnsafeRules runs the simulation with one of the
// safety rules broken and expects two live copies: the invariants are not
// vacuous, and each rule is needed.
func TestSimulationCatchesUnsafeRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    func(*rand.Rand) simConfig
		unsafe func(*simConfig)
	}{
		{"fence delay shorter than the lease", randomConfig, func(c *simConfig) {
			c.lease = 6
			c.policy.FenceDelay = 0
		}},
		{"nodes do not fence themselves", randomConfig, func(c *simConfig) { c.noFencing = true }},
		{"restoring owners ignore the restore deadline", stressConfig, func(c *simConfig) { c.noRestoreDeadline = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := func(rng *rand.Rand) simConfig {
				c := tc.cfg(rng)
				tc.unsafe(&c)
				return c
			}
			_, err := runSims(t, 1000, cfg)
			if err == nil {
				t.Fatal("no invariant violation found in 1000 seeds")
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			if !strings.Contains(first, "two live copies") {
				t.Fatalf("expected two live copies, found another violation: %v", err)
			}
			t.Logf("found, as expected: %s", first)
		})
	}
}
