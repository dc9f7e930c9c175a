package failover

// A randomized simulation of a crfailoverd cluster: nodes that power-cut,
// restart, partition and heal; a Raft-like log; memberlist-like views,
// one per node; the leader running Decide; and the nodes' own reactions,
// as the daemon is to implement them. Time is counted in ticks of 100 ms.
//
// The model:
//
//   - Log: one committed state.State. A command commits (through Encode,
//     Decode and Apply) only when a leader exists and the proposer is in
//     the majority side: the partition group holding more than half of all
//     nodes, counting only those that are up. When the leader leaves the
//     majority side, a new one is elected there after electGap ticks (at
//     least Raft's heartbeat timeout, 500 ms). View.LeaderSince is when
//     the current leader won.
//   - Quorum contact: a node has it while in the majority side, and while
//     it is on the same side as a deposed leader that has not yet noticed
//     it lost the quorum (staleLead ticks after it did: Raft steps down
//     LeaderLeaseTimeout after its last quorum contact).
//   - Membership, per node: a node hears the up nodes of its side; it
//     sees a node alive for its own detection time (detect..detect+
//     detectSpread ticks, detect at least MinDetect: a small cut-off side
//     gets few suspicion confirmations and detects late) after it last
//     heard it, then dead since (last heard + its detection time); a node
//     it never heard since it started is in neither map. A restarted node
//     hears nobody, and nobody hears it, until its gossip joined (0..joinMax
//     ticks), while it may already have quorum contact. The leader decides
//     on its own view.
//   - Views: a node in the majority side sees the committed state at once;
//     a node outside it acts on what it saw when it left, until it is back.
//   - Copies: nodes run copies of workloads, each at an epoch, and have a
//     store high-water mark per workload (the next checkpoint number). A
//     copy told to stop is gone 0..stopMax ticks later (a pod removal); it
//     is live until then. A copy whose application fails, or on a node
//     that loses power, is gone at once. A node restores no workload
//     whose copy it is still stopping.
//   - Each tick, each up node:
//     1. once it has had no quorum contact for more than half the lease, or
//     while its own gossip sees no more than half the nodes alive (as
//     after a restart, before its gossip joined), it is fenced: it starts
//     no copy, and stops all its copies at its next discovery pass (one a
//     second, at a phase of its own);
//     2. stops a copy whose workload its view shows with another owner or
//     epoch (or failed, or its restore recorded as failed), or still
//     restoring at Since+RestoreTimeout-restoreMargin (the restore
//     deadline; the margin covers the stop latency);
//     3. when it can commit: restores what is placed on it (never at or
//     after the deadline) and sends RestoreDone, reports a restored copy
//     it has not reported, and reports AppFailed for a running workload it
//     owns but whose copy is gone. Reports commit 0..reportLag ticks later
//     (the node retries until it can commit); a refused success stops the
//     copy;
//     4. when it cannot commit but is not fenced: may restore what it saw
//     placed on it, without being able to report it.
//   - Restores of "flaky" workloads succeed, fail or hang at random; those
//     of the others always succeed.
//   - Events, at most one per tick: power cut (the node's copies and
//     reports in flight vanish), restart (no quorum contact until it is in
//     the majority side), partition into two groups (also from one
//     partition straight into another), heal, application failure (a copy
//     stops at once), a checkpoint by a running owner (CommitCheckpoint,
//     then AddHolder from 1-2 peers of its side after 0-20 ticks; an owner
//     that cannot commit only raises its store's counter), leader change,
//     rediscovery (a node re-registers its copies; a refused one stops).
//   - Three families of runs: "random" (parameters drawn per seed, the
//     restore timeout longer than detection plus an election plus the
//     report lag), "stress" (every workload flaky, frequent partitions, a
//     restore timeout shorter than failure detection) and "boundary" (the
//     smallest lease, 2 s; detection exactly MinDetect; the longest stop
//     latency and stale leadership; FenceDelay and LeaderDelay exactly as
//     the formulas below; frequent partitions, leader changes, restarts).
//
// The formulas under test (see the package doc):
//
//	FenceDelay  = lease - MinDetect + stopMax
//	LeaderDelay = lease + stopMax   (= FenceDelay + MinDetect)
//
// A deposed leader's last heartbeats (staleLead) extend a cut-off owner's
// contact only across a leader change, and the election takes longer
// (electGap >= staleLead, as Raft requires LeaderLeaseTimeout <=
// HeartbeatTimeout), so LeaderDelay covers them.
//
// Invariants:
//
//	(a) after every command: per workload, epochs never go down, and each
//	    epoch has one owner for ever; the state validates;
//	(b) whenever a copy starts, and after every tick: never two live
//	    copies (a stopping copy is live) of a workload on up nodes;
//	(c) after the schedule: heal, restart enough nodes for a quorum, run to
//	    quiescence; then every workload runs as one copy on its live owner
//	    at the current epoch, or is failed, or waits (owner dead, or never
//	    seen by the leader, or attempt failed) with no live node holding an
//	    untried checkpoint (an owner never seen: whatever the holders). A
//	    give-up is checked when the leader proposes it: attempts
//	    exhausted, or no known node holds an untried checkpoint. Workloads
//	    whose restores never fail only have timed-out attempts, each while
//	    their owner could not commit at some point since the placement.
//
// Every leader decision must commit. TestSimulationCatchesUnsafeRules
// breaks one rule at a time and expects two live copies.
// TestSimulationLeaseSweep (with -sim.sweep) searches, per FenceDelay and
// LeaderDelay formula, the smallest lease at which the invariants hold.
//
// Replay one seed with its trace:
//
//	go test ./crfailoverd/internal/failover -run '^TestSimulation/random$' -sim.seed=N -v

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

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

var (
	simSeed  = flag.Int("sim.seed", -1, "run only this simulation seed and log its trace")
	simSweep = flag.Bool("sim.sweep", false, "run TestSimulationLeaseSweep")
)

var simBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// tick is the simulation's unit of time.
const tick = 100 * time.Millisecond

func ticks(n int) time.Duration { return time.Duration(n) * tick }

// The daemon's bounds, in ticks.
const (
	simMinLease  = 20 // the smallest lease allowed: 2 s
	simMinDetect = 12 // leader.MinDetect: 1.2 s
	simDiscovery = 10 // the controller's discovery pass: every second
	simStaleLead = 3  // a deposed leader's last heartbeats: LeaderLeaseTimeout (250 ms) and its check
	simStopMax   = 5  // stopping a copy (removing a pod): up to 500 ms
)

// modelFenceDelay and modelLeaderDelay are the formulas under test.
func modelFenceDelay(lease, stopMax int) time.Duration {
	return ticks(max(lease-simMinDetect+stopMax, 0))
}

func modelLeaderDelay(lease, stopMax int) time.Duration { return ticks(lease + stopMax) }

// simConfig is one run's setup; times are in ticks.
type simConfig struct {
	nodes, workloads, steps int
	lease, detect, electGap int
	detectSpread            int // each node's gossip declares a node dead detect..detect+detectSpread ticks after it last heard it
	staleLead               int // a deposed leader keeps its side in quorum contact this long
	joinMax                 int // a restarted node's gossip joins 0..joinMax ticks after the restart
	stopMax                 int // a copy told to stop is gone 0..stopMax ticks later
	stopAtMaxPct            int // percent of stops that take stopMax exactly
	reportLag               int // a restore's report commits 0..reportLag ticks after it
	restoreMargin           int // a restoring owner stops this long before the leader's restore timeout
	policy                  Policy
	flakyRate               int          // percent of workloads whose restores may fail or hang
	failPct, hangPct        int          // outcome of a flaky workload's restore attempt
	events                  [evCount]int // per mille chance of each event per tick
	// Rules switched off, to check that the invariants catch it.
	noFencing, noRestoreDeadline, noLeaderSince, unseenDeadLongAgo, appFailedWhileStopping bool
}

func (c *simConfig) formulas() {
	c.policy.FenceDelay = modelFenceDelay(c.lease, c.stopMax)
	c.policy.LeaderDelay = modelLeaderDelay(c.lease, c.stopMax)
}

func randomConfig(rng *rand.Rand) simConfig {
	c := simConfig{
		nodes: 3 + rng.IntN(3), workloads: 2 + rng.IntN(5), steps: 600,
		lease: simMinLease + rng.IntN(21), detect: simMinDetect + rng.IntN(9), detectSpread: rng.IntN(21), electGap: 5 + rng.IntN(11),
		staleLead: rng.IntN(simStaleLead + 1), joinMax: rng.IntN(41), stopMax: rng.IntN(simStopMax + 1), stopAtMaxPct: 30,
		reportLag: rng.IntN(31),
		flakyRate: 30, failPct: 40, hangPct: 20,
		events: [evCount]int{evPowerCut: 8, evRestart: 12, evPartition: 6, evHeal: 12, evAppFailure: 12,
			evCheckpoint: 40, evLeaderChange: 6, evRediscover: 8, evHandStart: 10},
	}
	c.restoreMargin = c.stopMax
	c.formulas()
	if rng.IntN(2) == 0 {
		c.policy.FenceDelay += ticks(rng.IntN(11))
		c.policy.LeaderDelay += ticks(rng.IntN(11))
	}
	// The restore timeout leaves room for detection, an election, the
	// report's lag and the stops, so that only injected faults make
	// restores fail.
	c.policy.MaxAttempts = 1 + rng.IntN(4)
	c.policy.RestoreTimeout = ticks(c.detect + c.detectSpread + c.electGap + c.reportLag + 2*c.stopMax + 20 + rng.IntN(41))
	if rng.IntN(2) == 0 {
		// Rule 9: given-up workloads are placed again (the daemon: 30 s).
		c.policy.RetryFailed = ticks(20 + rng.IntN(300))
	}
	return c
}

// stressConfig: every workload's restores may fail or hang, partitions
// come and go often, reports lag, and the restore timeout is shorter than
// failure detection, so the leader times restores out on nodes it still
// sees alive.
func stressConfig(rng *rand.Rand) simConfig {
	c := randomConfig(rng)
	c.flakyRate, c.failPct, c.hangPct = 100, 10, 60
	c.detect, c.lease, c.reportLag, c.stopMax, c.staleLead = 30, 40, 30, simStopMax, simStaleLead
	c.events[evPartition], c.events[evHeal] = 30, 30
	c.restoreMargin = c.stopMax
	c.formulas()
	c.policy.MaxAttempts = 0
	c.policy.RestoreTimeout = ticks(25)
	return c
}

// boundaryConfig: the smallest lease, detection as fast as the daemon
// allows, the longest stop latency and stale leadership, the delays
// exactly as the formulas, and many partitions, leader changes and
// restarts.
func boundaryConfig(rng *rand.Rand) simConfig {
	c := randomConfig(rng)
	c.lease, c.detect, c.detectSpread, c.electGap, c.staleLead, c.stopMax, c.stopAtMaxPct = simMinLease, simMinDetect, 20, 5+rng.IntN(3), simStaleLead, simStopMax, 70
	c.joinMax, c.reportLag = 40, rng.IntN(6)
	c.events = [evCount]int{evPowerCut: 10, evRestart: 15, evPartition: 25, evHeal: 15, evAppFailure: 10,
		evCheckpoint: 40, evLeaderChange: 15, evRediscover: 5, evHandStart: 10}
	c.restoreMargin = c.stopMax
	c.formulas()
	c.policy.RestoreTimeout = ticks(c.detect + c.detectSpread + c.electGap + c.reportLag + 2*c.stopMax + 20 + rng.IntN(21))
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
	evHandStart
	evCount
)

type simNode struct {
	name        string
	idx         int
	detect      int // its gossip's detection time
	up          bool
	group       int
	phase       int               // its discovery passes run at the ticks t with (t+phase)%simDiscovery == 0
	lastContact int               // last tick with quorum contact
	joinAt      int               // its gossip hears and is heard from this tick on
	heard       []int             // per node index: last tick its gossip heard that node; -1: never since it started
	view        *state.State      // what it saw when it left the majority side; nil while in it
	copies      map[string]uint64 // running copies: workload -> epoch
	stopping    map[string]stop   // copies told to stop, not yet gone
	hiwater     map[string]uint64 // its store's highest checkpoint number per workload
	reporting   map[string]uint64 // restore reports in flight: workload -> epoch
	// hand: copies of workloads the cluster gave up, started by hand (as
	// original pods, epoch 1) and not registered yet: workload -> the tick
	// its registration is proposed from. The node keeps such a copy while
	// its view shows the workload failed (View.Admit: Wait), and stops it
	// as soon as its view shows anything else (retrying, placed: Stop).
	hand map[string]int
	// gone: why a copy of a workload it owns went away (the kind of its
	// AppFailed report); none: it was lost (a power cut).
	gone map[string]state.FailKind
}

// stop is a copy being stopped: live until tick goneAt.
type stop struct {
	epoch  uint64
	goneAt int
}

// live reports whether n runs a copy of id or is still stopping one.
func (n *simNode) live(id string) bool {
	_, running := n.copies[id]
	_, stopping := n.stopping[id]
	return running || stopping
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
	cfg         simConfig
	rng         *rand.Rand
	step        int
	nodes       []*simNode
	committed   *state.State
	leader      *simNode
	leaderSince int
	electAt     int
	stale       *simNode                     // a deposed leader that has not noticed yet
	staleUntil  int                          // it keeps its side in contact before this tick
	disturbed   map[string]int               // node -> last tick it could not commit
	owners      map[string]map[uint64]string // workload -> epoch -> owner, over the whole log
	maxEpoch    map[string]uint64
	flaky       map[string]bool
	caps        map[string]*capability.Node // node -> its capabilities in a mixed cluster; nil: none reported
	ids         []string                    // every workload, sorted (none is ever removed)
	maj         int                         // majorityGroup's answer, valid while majValid
	majValid    bool
	pending     []replication
	reports     []report
	changes     int // commits and copy starts and stops, to detect quiescence
	trace       []string
	err         error
	st          simStats
}

var errNoQuorum = errors.New("no quorum")

func newSim(seed uint64, cfg func(*rand.Rand) simConfig, st simStats) *sim {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	m := &sim{cfg: cfg(rng), rng: rng, committed: state.New(), disturbed: map[string]int{},
		owners: map[string]map[uint64]string{}, maxEpoch: map[string]uint64{}, flaky: map[string]bool{}, st: st}
	for i := range m.cfg.nodes {
		n := &simNode{name: fmt.Sprintf("n%d", i+1), idx: i, up: true, phase: rng.IntN(simDiscovery), detect: m.cfg.detect + rng.IntN(m.cfg.detectSpread+1),
			heard:  slices.Repeat([]int{-1}, m.cfg.nodes),
			copies: map[string]uint64{}, stopping: map[string]stop{}, hiwater: map[string]uint64{}, reporting: map[string]uint64{},
			hand: map[string]int{}, gone: map[string]state.FailKind{}}
		m.nodes = append(m.nodes, n)
	}
	c := m.cfg
	m.mixCapabilities(seed)
	m.tracef("config: %d nodes, %d workloads, lease %s, detect %s, election gap %s, stale lead %s, join ≤%s, stop ≤%s, report lag ≤%s, restore margin %s, fence delay %s, leader delay %s, restore timeout %s, max attempts %d",
		c.nodes, c.workloads, ticks(c.lease), ticks(c.detect), ticks(c.electGap), ticks(c.staleLead), ticks(c.joinMax), ticks(c.stopMax),
		ticks(c.reportLag), ticks(c.restoreMargin), c.policy.FenceDelay, c.policy.LeaderDelay, c.policy.RestoreTimeout, c.policy.MaxAttempts)
	return m
}

// mixCapabilities makes half of the runs mixed clusters: each node
// reports a runtime (containerd or CRI-O), whether it can restore, and
// its CPU flags (with or without avx512f). It draws from its own
// generator, so the schedules stay those of the seed.
func (m *sim) mixCapabilities(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xca95))
	if rng.IntN(2) == 0 {
		return
	}
	m.caps = map[string]*capability.Node{}
	for _, n := range m.nodes {
		c := &capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true,
			Restore: capability.RestoreCreate, CPUFlags: []string{"avx", "avx2", "avx512f", "sse4_2"}}
		switch r := rng.IntN(100); {
		case r < 15:
			c.Runtime = capability.Runtime{Name: "cri-o", Version: "1.36.3"}
		case r < 25:
			c.Runtime.Version = "2.4.2"
			c.Restore = capability.RestoreNative
		}
		if rng.IntN(100) < 25 {
			c.Restore, c.RestoreReason = capability.RestoreNone, "enable_experimental_restore_via_create is off"
		}
		if rng.IntN(100) < 35 {
			c.CPUFlags = []string{"avx", "avx2", "sse4_2"}
		}
		m.caps[n.name] = c
	}
}

func (m *sim) at(t int) time.Time { return simBase.Add(ticks(t)) }

func (m *sim) now() time.Time { return m.at(m.step) }

func (m *sim) tracef(format string, args ...any) {
	m.trace = append(m.trace, fmt.Sprintf("t=%-4d ", m.step)+fmt.Sprintf(format, args...))
}

func (m *sim) fail(format string, args ...any) {
	if m.err == nil {
		m.err = fmt.Errorf("tick %d: %s", m.step, fmt.Sprintf(format, args...))
		m.tracef("VIOLATION: %v", m.err)
	}
}

// run plays the schedule, settles, and checks liveness.
func (m *sim) run() error {
	m.setup()
	for m.step = 1; m.step <= m.cfg.steps && m.err == nil; m.step++ {
		m.event()
		m.tick()
		if m.step%200 == 0 {
			m.snapshotRoundTrip()
		}
	}
	if m.err == nil {
		m.settle()
	}
	m.st["runs"]++
	m.st["ticks"] += m.step
	return m.err
}

func (m *sim) setup() {
	m.observe()
	for _, n := range m.nodes {
		m.propose(m.leader, &state.UpsertNode{At: m.now(), Name: n.name, RPCAddr: n.name + ":7947"})
		if c := m.caps[n.name]; c != nil {
			if err := m.propose(n, &state.NodeCapabilities{At: m.now(), Node: n.name, Caps: *c}); err != nil {
				m.fail("capabilities of %s: %v", n.name, err)
				return
			}
			m.tracef("%s: %s, restore %s, %d CPU flags", n.name, c.Runtime, c.Restore, len(c.CPUFlags))
		}
	}
	for i := range m.cfg.workloads {
		id := fmt.Sprintf("ns/w%d/c", i)
		m.ids = append(m.ids, id) // sorted: fewer than 10
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

// tick is one tick after the event: stops that complete, bookkeeping, the
// nodes' reactions, the leader's decisions, the nodes' reactions to
// those (when it committed any), replication.
func (m *sim) tick() {
	m.finishStops()
	m.observe()
	m.react()
	before := m.changes
	m.lead()
	if m.changes != before {
		m.react()
	}
	m.deliverReports()
	m.deliver()
	m.checkCopies()
}

// --- log, contact, membership, views ---

// majorityGroup is the group holding the majority, or -1.
func (m *sim) majorityGroup() int {
	if !m.majValid {
		m.maj, m.majValid = m.countMajority(), true
	}
	return m.maj
}

// membershipChanged invalidates majorityGroup's answer: call it after
// changing a node's up or group.
func (m *sim) membershipChanged() { m.majValid = false }

func (m *sim) countMajority() int {
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
	maj := m.majorityGroup()
	for _, n := range m.nodes {
		if n.up && n.group == maj {
			n.lastContact, n.view = m.step, nil
		} else if n.view == nil {
			n.view = m.committed.Clone()
		}
	}
	for _, a := range m.nodes {
		if !a.up {
			continue
		}
		a.heard[a.idx] = m.step
		if m.step < a.joinAt {
			continue
		}
		for _, b := range m.nodes {
			if b.up && b.group == a.group && m.step >= b.joinAt {
				a.heard[b.idx] = m.step
			}
		}
	}
	if m.leader != nil && !m.inMajority(m.leader) {
		m.tracef("leader %s lost", m.leader.name)
		if m.leader.up && m.cfg.staleLead > 0 {
			m.stale, m.staleUntil = m.leader, m.step+m.cfg.staleLead
		}
		m.leader, m.electAt = nil, m.step+m.cfg.electGap
	}
	if s := m.stale; s != nil {
		if !s.up || m.step >= m.staleUntil {
			m.stale = nil
		} else {
			// It still sends heartbeats to its side.
			for _, n := range m.nodes {
				if n.up && n.group == s.group {
					n.lastContact = m.step
				}
			}
		}
	}
	if m.leader == nil && m.step >= m.electAt {
		if maj := m.majoritySide(); len(maj) > 0 {
			m.leader, m.leaderSince = maj[m.rng.IntN(len(maj))], m.step
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

// gossipQuorum reports whether n's own gossip sees more than half the
// nodes alive (itself included).
func (m *sim) gossipQuorum(n *simNode) bool {
	alive := 0
	for _, last := range n.heard {
		if last >= 0 && m.step-last < n.detect {
			alive++
		}
	}
	return 2*alive > len(m.nodes)
}

func (m *sim) viewOf(n *simNode) *state.State {
	if n.view != nil {
		return n.view
	}
	return m.committed
}

// memberView is node x's memberlist view, for Decide when x leads.
func (m *sim) memberView(x *simNode) View {
	v := View{Now: m.now(), Alive: map[string]bool{}, DeadSince: map[string]time.Time{}}
	if !m.cfg.noLeaderSince && x == m.leader {
		v.LeaderSince = m.at(m.leaderSince)
	}
	for _, n := range m.nodes {
		switch last := x.heard[n.idx]; {
		case last < 0:
			if m.cfg.unseenDeadLongAgo {
				v.DeadSince[n.name] = time.Time{}
			}
		case m.step-last < x.detect:
			v.Alive[n.name] = true
		default:
			v.DeadSince[n.name] = m.at(last + x.detect)
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
		if o == n || !o.up {
			continue
		}
		if oe, ok := o.copies[id]; ok {
			m.fail("two live copies of %s: %s at epoch %d and %s at epoch %d", id, o.name, oe, n.name, epoch)
		}
		if s, ok := o.stopping[id]; ok {
			m.fail("two live copies of %s: %s at epoch %d (stopping, gone at t=%d) and %s at epoch %d", id, o.name, s.epoch, s.goneAt, n.name, epoch)
		}
	}
	n.copies[id] = epoch
	m.changes++
	m.st["copiesStarted"]++
	m.tracef("%s: starts %s at epoch %d (%s)", n.name, id, epoch, why)
}

// stopCopy tells n's copy of id to stop: it is gone 0..stopMax ticks
// later.
func (m *sim) stopCopy(n *simNode, id, why string) {
	epoch := n.copies[id]
	delete(n.copies, id)
	delete(n.hand, id)
	if strings.HasPrefix(why, "fenced") {
		n.gone[id] = state.FailFenced
	}
	m.changes++
	d := 0
	if m.cfg.stopMax > 0 {
		if m.rng.IntN(100) < m.cfg.stopAtMaxPct {
			d = m.cfg.stopMax
		} else {
			d = m.rng.IntN(m.cfg.stopMax + 1)
		}
	}
	m.st["max stop ticks"] = max(m.st["max stop ticks"], d)
	if d == 0 {
		m.tracef("%s: stops %s at epoch %d (%s)", n.name, id, epoch, why)
		return
	}
	n.stopping[id] = stop{epoch: epoch, goneAt: m.step + d}
	m.tracef("%s: stops %s at epoch %d (%s), gone at t=%d", n.name, id, epoch, why, m.step+d)
}

// finishStops removes the stopping copies that are gone.
func (m *sim) finishStops() {
	for _, n := range m.nodes {
		if len(n.stopping) == 0 {
			continue
		}
		for _, id := range m.ids {
			if s, ok := n.stopping[id]; ok && s.goneAt <= m.step {
				delete(n.stopping, id)
				m.changes++
				m.tracef("%s: copy of %s at epoch %d gone", n.name, id, s.epoch)
			}
		}
	}
}

// checkCopies re-checks (b) over all nodes, and that no down node runs
// anything.
func (m *sim) checkCopies() {
	for _, n := range m.nodes {
		if !n.up && (len(n.copies) > 0 || len(n.stopping) > 0) {
			m.fail("down node %s runs copies", n.name)
		}
	}
	for _, id := range m.ids {
		var first *simNode
		for _, n := range m.nodes {
			if !n.live(id) {
				continue
			}
			if first != nil {
				m.fail("two live copies of %s: %s and %s", id, first.name, n.name)
			}
			first = n
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

// deadline is when a restoring owner stops its copy, and after which it
// starts none: the leader's restore timeout less the margin.
func (m *sim) deadline(w *state.Workload) time.Time {
	return w.Since.Add(m.cfg.policy.RestoreTimeout - ticks(m.cfg.restoreMargin))
}

func (m *sim) reactNode(n *simNode) {
	fenced := (m.step-n.lastContact > m.cfg.lease/2 || !m.gossipQuorum(n)) && !m.cfg.noFencing
	if fenced && len(n.copies) > 0 && (m.step+n.phase)%simDiscovery == 0 {
		for _, id := range m.ids {
			if _, ok := n.copies[id]; ok {
				m.stopCopy(n, id, "fenced: no quorum contact for half the lease")
			}
		}
		m.st["fenced"]++
	}
	view := m.viewOf(n)
	for _, id := range m.ids {
		epoch, ok := n.copies[id]
		if !ok {
			continue
		}
		w := view.Workloads[id]
		if _, hand := n.hand[id]; hand {
			if w != nil && w.Status == state.StatusFailed {
				continue // Admit: Wait, until its registration commits
			}
			m.stopCopy(n, id, "a copy started by hand of a workload the cluster took back")
			m.st["handStopped"]++
			continue
		}
		switch {
		case w == nil || w.Owner != n.name || w.Epoch != epoch:
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
		for _, id := range sortedIDs(n.hand) {
			if n.hand[id] <= m.step {
				m.registerHand(n, id)
			}
		}
		for _, id := range m.ids {
			w := m.committed.Workloads[id]
			if w == nil || w.Owner != n.name {
				continue
			}
			_, has := n.copies[id]
			_, stopping := n.stopping[id]
			reporting := n.reporting[id] == w.Epoch
			switch {
			case w.Status == state.StatusRunning && !has && (!stopping || m.cfg.appFailedWhileStopping):
				m.st["appFailures"]++
				kind, ok := n.gone[id]
				if !ok {
					kind = state.FailLost
				}
				delete(n.gone, id)
				m.propose(n, &state.AppFailed{At: m.now(), ID: id, Node: n.name, Epoch: w.Epoch, Reason: "container not running", Kind: kind})
			case w.Status == state.StatusRestoring && has && !reporting:
				m.report(n, w, "")
			case w.Status == state.StatusRestoring && !fenced && !has && !stopping && !reporting && !w.AttemptFailed() && m.now().Before(m.deadline(w)):
				m.restore(n, w, true)
			}
		}
		return
	}
	if fenced {
		return
	}
	// Cut off but not fenced: it may restore what it last saw placed on
	// it; it cannot report that.
	for _, id := range m.ids {
		w := view.Workloads[id]
		if w != nil && w.Owner == n.name && w.Status == state.StatusRestoring && !n.live(id) && n.reporting[id] != w.Epoch &&
			!w.AttemptFailed() && m.now().Before(m.deadline(w)) && m.rng.IntN(2) == 0 {
			m.st["minorityRestores"]++
			m.restore(n, w, false)
		}
	}
}

// registerHand proposes the registration of n's copy of id started by
// hand: accepted, the copy runs at the epoch the cluster gave it; refused
// as stale, it is stopped.
func (m *sim) registerHand(n *simNode, id string) {
	err := m.propose(n, &state.RegisterWorkload{At: m.now(), ID: id, Node: n.name, Interval: 10 * time.Second, Config: []byte(`{}`)})
	switch {
	case err == nil:
		delete(n.hand, id)
		n.copies[id] = m.committed.Workloads[id].Epoch
		m.st["handRegistered"]++
	case errors.Is(err, state.ErrStale):
		m.stopCopy(n, id, "registration of a copy started by hand refused")
		m.st["handStopped"]++
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
// succeeded if errMsg is ""); it commits up to reportLag ticks later.
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
		if e, ok := r.n.copies[c.ID]; c.OK && err != nil && ok && e == c.Epoch {
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
	if c := m.caps[n.name]; c != nil {
		cp.Runtime, cp.CPU = c.Runtime, capability.FlagsDigest(c.CPUFlags)
	}
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
		m.pending = append(m.pending, replication{from: n, to: to, id: id, sha: sha, seq: seq, due: m.step + m.rng.IntN(21)})
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
	v := m.memberView(m.leader)
	cmds := Decide(m.committed, v, m.cfg.policy)
	if m.step%10 == 0 {
		if again := Decide(m.committed.Clone(), v, m.cfg.policy); !reflect.DeepEqual(cmds, again) {
			m.fail("Decide is not deterministic:%s\n%s", show(cmds), show(again))
		}
	}
	for _, cmd := range cmds {
		if g, ok := cmd.(*state.GiveUp); ok && m.committed.Workloads[g.ID].Status != state.StatusRetrying {
			// A retry that found no candidate after its wait returns to
			// failed, where it was.
			m.checkGiveUp(m.committed.Workloads[g.ID])
		}
		if b, ok := cmd.(*state.MarkCheckpointBad); ok {
			if w := m.committed.Workloads[b.ID]; !w.FailKind.Own() || w.RestoredFrom != b.Seq {
				m.fail("%s: #%d marked bad after a failure of kind %q of a copy restored from #%d", b.ID, b.Seq, w.FailKind, w.RestoredFrom)
			}
		}
		if p, ok := cmd.(*state.Place); ok && m.committed.Workloads[p.ID].Status == state.StatusRetrying {
			// Rule 9: no copy of it may be live when it is placed.
			for _, n := range m.nodes {
				if n.live(p.ID) {
					m.fail("%s placed on %s for its retry while %s still has a copy", p.ID, p.Owner, n.name)
				}
			}
		}
		if p, ok := cmd.(*state.Place); ok {
			m.checkCapable(p)
		}
		if err := m.propose(m.leader, cmd); err != nil {
			m.fail("the leader's %s was refused: %v", describe(cmd), err)
		}
		switch c := cmd.(type) {
		case *state.Place:
			if cp := m.committed.Workloads[c.ID].Checkpoint(c.Seq); cp == nil || cp.Bad != "" {
				m.fail("%s placed from checkpoint #%d, bad or unknown", c.ID, c.Seq)
			}
			switch {
			case strings.HasPrefix(c.Reason, "retry after giving up"):
				m.st["placedRetry"]++
			case strings.HasPrefix(c.Reason, "node "):
				m.st["placedDead"]++
				if m.step-m.leaderSince < int(m.cfg.policy.LeaderDelay/tick)+simMinDetect {
					m.st["placedDeadEarlyInTerm"]++ // the leader wait mattered, or nearly
				}
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
		case *state.RetryWorkload:
			m.st["retries"]++
		case *state.MarkCheckpointBad:
			m.st["markedBad"]++
		case *state.Unplaceable:
			m.st["unplaceable"]++
			if !strings.Contains(c.Reason, "no node can restore it: ") {
				m.fail("unplaceable without saying why: %q", c.Reason)
			}
		}
	}
}

// checkCapable: a placement goes only to a node that can restore its
// checkpoint (placements_on_incapable = 0).
func (m *sim) checkCapable(p *state.Place) {
	w := m.committed.Workloads[p.ID]
	cp := w.Checkpoint(p.Seq)
	if cp == nil {
		m.fail("placed %s from #%d, which the state does not record", p.ID, p.Seq)
		return
	}
	if ok, why := m.committed.CanRestore(p.Owner, cp); !ok {
		m.fail("placed %s #%d on %s, which cannot restore it: %s", p.ID, p.Seq, p.Owner, why)
	}
	if m.caps != nil {
		m.st["placedMixed"]++
		if !slices.Contains(cp.Holders, p.Owner) {
			m.st["placedByFetch"]++
		}
	}
}

// checkTimeout: a restore of a workload whose restores never fail times out
// only if its owner was cut off, down or without a leader at some point
// since the placement (its report could not get through).
func (m *sim) checkTimeout(c *state.RestoreDone) {
	w := m.committed.Workloads[c.ID]
	placed := int(w.Since.Sub(simBase) / tick)
	if !m.flaky[c.ID] && m.disturbed[c.Node] < placed {
		m.fail("restore of %s on %s timed out, though its restores never fail and it could report since tick %d", c.ID, c.Node, placed)
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
	for i := range w.Checkpoints {
		cp := &w.Checkpoints[i]
		if cp.Bad != "" {
			continue // never restored again (rule 6)
		}
		for _, h := range cp.Holders {
			if ok, _ := m.committed.CanRestore(h, cp); ok && !tried[fmt.Sprint(h, "#", cp.Seq)] && m.committed.Nodes[h] != nil {
				out = append(out, m.node(h))
			}
		}
	}
	return out
}

// fetchers lists the up nodes but w's owner that can restore a checkpoint
// of w that an up node holds but cannot restore, and have not tried it.
func (m *sim) fetchers(w *state.Workload) []*simNode {
	tried := map[string]bool{}
	for _, t := range w.Tried {
		tried[fmt.Sprint(t.Node, "#", t.Seq)] = true
	}
	var out []*simNode
	for i := range w.Checkpoints {
		cp := &w.Checkpoints[i]
		if cp.Bad != "" {
			continue
		}
		source := slices.ContainsFunc(cp.Holders, func(h string) bool {
			ok, _ := m.committed.CanRestore(h, cp)
			return !ok && m.committed.Nodes[h] != nil && m.node(h).up
		})
		if !source {
			continue
		}
		for _, n := range m.nodes {
			if ok, _ := m.committed.CanRestore(n.name, cp); ok && n.up && n.name != w.Owner && !tried[fmt.Sprint(n.name, "#", cp.Seq)] && !slices.Contains(cp.Holders, n.name) {
				out = append(out, n)
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
	r, ev := m.rng.IntN(1000), 0
	for ev < len(m.cfg.events) && r >= m.cfg.events[ev] {
		r -= m.cfg.events[ev]
		ev++
	}
	switch ev {
	case evPowerCut:
		if n := pick(func(n *simNode) bool { return n.up }); n != nil {
			m.tracef("EVENT power cut %s", n.name)
			n.up, n.copies, n.stopping, n.reporting = false, map[string]uint64{}, map[string]stop{}, map[string]uint64{}
			n.hand, n.gone = map[string]int{}, map[string]state.FailKind{}
			m.membershipChanged()
			m.st["powerCuts"]++
		}
	case evRestart:
		if n := pick(func(n *simNode) bool { return !n.up }); n != nil {
			m.restart(n)
		}
	case evPartition:
		if partitioned {
			m.st["repartitions"]++
		}
		m.partition()
	case evHeal:
		if partitioned {
			m.heal()
		}
	case evAppFailure:
		if n := pick(func(n *simNode) bool { return n.up && len(n.copies) > 0 }); n != nil {
			ids := sortedIDs(n.copies)
			id := ids[m.rng.IntN(len(ids))]
			m.tracef("EVENT application %s fails on %s", id, n.name)
			m.tracef("%s: copy of %s at epoch %d gone (application failed)", n.name, id, n.copies[id])
			delete(n.copies, id)
			if _, hand := n.hand[id]; hand {
				delete(n.hand, id) // its registration never comes
			} else {
				n.gone[id] = []state.FailKind{state.FailExited, state.FailProbe}[m.rng.IntN(2)]
			}
			m.changes++
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
			if l := maj[m.rng.IntN(len(maj))]; l != m.leader {
				m.leader, m.leaderSince = l, m.step
				m.tracef("EVENT leadership moves to %s", m.leader.name)
				m.st["leaderChanges"]++
			}
		}
	case evRediscover:
		if n := pick(m.canCommit); n != nil {
			m.rediscover(n)
		}
	case evHandStart:
		m.handStart()
	}
}

// handStart: someone starts a workload the cluster gave up by hand, as an
// original pod, on an up node that is not fenced and whose view shows it
// failed, while no copy of it is live anywhere (two copies started by hand
// are the user's doing). Its registration is proposed 0..30 ticks later
// (pending, or the node cut off): until then the node waits (Admit).
func (m *sim) handStart() {
	var cands [][2]string
	for _, n := range m.nodes {
		if !n.up || m.step-n.lastContact > m.cfg.lease/2 || !m.gossipQuorum(n) {
			continue
		}
		for _, id := range m.ids {
			w := m.viewOf(n).Workloads[id]
			if w != nil && w.Status == state.StatusFailed && !slices.ContainsFunc(m.nodes, func(o *simNode) bool { return o.live(id) }) {
				cands = append(cands, [2]string{n.name, id})
			}
		}
	}
	if len(cands) == 0 {
		return
	}
	c := cands[m.rng.IntN(len(cands))]
	n := m.node(c[0])
	m.tracef("EVENT %s started by hand on %s", c[1], n.name)
	m.startCopy(n, c[1], 1, "started by hand")
	n.hand[c[1]] = m.step + m.rng.IntN(31)
	m.st["handStarts"]++
}

// restart: no quorum contact until it is in the majority side; its gossip
// starts empty and joins 0..joinMax ticks later.
func (m *sim) restart(n *simNode) {
	n.up, n.lastContact, n.joinAt = true, -1<<30, m.step+m.rng.IntN(m.cfg.joinMax+1)
	m.membershipChanged()
	for i := range n.heard {
		n.heard[i] = -1
	}
	m.tracef("EVENT restart %s (gossip joins at t=%d)", n.name, n.joinAt)
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
	m.membershipChanged()
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
	m.membershipChanged()
}

// rediscover: n re-registers every copy it runs, as the daemon's discovery
// does; a refused one is stopped, an accepted one runs at the recorded epoch.
func (m *sim) rediscover(n *simNode) {
	m.tracef("EVENT rediscovery on %s", n.name)
	for _, id := range sortedIDs(n.copies) {
		if _, hand := n.hand[id]; hand {
			continue // registered when due
		}
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
	c := m.cfg
	p := c.policy
	// The longest a change can wait on time alone (no change before it),
	// and a margin.
	need := max(int((ticks(c.detect+c.detectSpread)+p.FenceDelay)/tick), int((ticks(c.electGap)+max(p.FenceDelay, p.LeaderDelay))/tick),
		int(p.RestoreTimeout/tick), int((p.RetryFailed+max(p.FenceDelay, p.LeaderDelay))/tick), c.joinMax, c.reportLag, 20) + c.lease + simDiscovery + c.stopMax + 5
	quiet, settled := 0, 0
	for ; settled < 5000 && quiet < need && m.err == nil; settled++ {
		m.step++
		before := m.changes
		m.tick()
		if m.changes == before {
			quiet++
		} else {
			quiet = 0
		}
	}
	m.st["max settle ticks"] = max(m.st["max settle ticks"], settled)
	if m.err != nil {
		return
	}
	if quiet < need {
		m.fail("no quiescence after %d settling ticks", settled)
		return
	}
	if m.leader == nil {
		m.fail("no leader after settling")
		return
	}
	v := m.memberView(m.leader)
	if cmds := Decide(m.committed, v, p); len(cmds) > 0 {
		m.fail("quiescent, but the leader still decides:%s", show(cmds))
	}
	m.checkLiveness(v)
}

// checkLiveness is invariant (c); v is the leader's view.
func (m *sim) checkLiveness(v View) {
	for _, id := range m.ids {
		w := m.committed.Workloads[id]
		var live []string
		for _, n := range m.nodes {
			if n.live(id) {
				live = append(live, n.name)
			}
		}
		_, dead := v.DeadSince[w.Owner]
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
		case !v.Alive[w.Owner] && !dead: // rule 3: its owner was never seen by this leader
			if len(live) > 0 || m.node(w.Owner).up {
				m.fail("%s waits for %s, which the leader never saw, with copies %v (owner up: %t)", id, w.Owner, live, m.node(w.Owner).up)
			}
			m.st["endWaitingUnseen"]++
		default: // waiting for a holder to come back
			if len(live) > 0 || slices.ContainsFunc(m.untriedHolders(w), func(n *simNode) bool { return n.up }) {
				m.fail("%s stays %s on %s with copies %v and a live untried holder", id, w.Status, w.Owner, live)
			}
			if f := m.fetchers(w); len(f) > 0 && (m.cfg.policy.MaxAttempts == 0 || len(w.Tried) < m.cfg.policy.MaxAttempts) {
				m.fail("%s stays %s on %s although %s could fetch and restore a checkpoint", id, w.Status, w.Owner, f[0].name)
			}
			if strings.Contains(w.LastError, "no node can restore it") {
				m.st["endUnplaceable"]++
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
	case *state.Unplaceable:
		return fmt.Sprintf("unplaceable %s at epoch %d (%s)", c.ID, c.Epoch, c.Reason)
	}
	return fmt.Sprintf("%T", cmd)
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
	if testing.Short() || raceEnabled {
		seeds = 200
	}
	for _, tc := range []struct {
		name string
		cfg  func(*rand.Rand) simConfig
	}{{"random", randomConfig}, {"stress", stressConfig}, {"boundary", boundaryConfig}} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			st, err := runSims(t, seeds, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d runs in %s: %v", st["runs"], time.Since(start).Round(time.Millisecond), st)
			if *simSeed >= 0 || testing.Short() || raceEnabled {
				return
			}
			// The schedule must exercise what the invariants are about.
			want := []string{"placedDead", "placedApp", "placedRestore", "timeouts", "gaveUp", "fenced",
				"minorityRestores", "refused", "endRunning", "endFailed", "endWaiting", "endWaitingUnseen",
				"placedDeadEarlyInTerm", "repartitions", "leaderChanges",
				"placedMixed", "placedByFetch", "unplaceable", "endUnplaceable", "placedRetry", "markedBad", "retries", "handStarts", "handStopped", "handRegistered"}
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

// unsafeRules each break one rule; TestSimulationCatchesUnsafeRules
// expects two live copies from each.
var unsafeRules = []struct {
	name   string
	cfg    func(*rand.Rand) simConfig
	unsafe func(*simConfig)
}{
	{"fence delay of today's leader.FenceDelay: lease - MinDetect", boundaryConfig, func(c *simConfig) {
		c.policy.FenceDelay = ticks(c.lease - simMinDetect)
	}},
	{"fence delay without the stop latency", boundaryConfig, func(c *simConfig) {
		c.policy.FenceDelay = modelFenceDelay(c.lease, 0)
	}},
	{"an election quicker than a deposed leader steps down", boundaryConfig, func(c *simConfig) {
		c.staleLead, c.electGap = 10, 1 // Raft refuses LeaderLeaseTimeout > HeartbeatTimeout
	}},
	{"a new leader waits only the fence delay", boundaryConfig, func(c *simConfig) { c.policy.LeaderDelay = 0 }},
	{"a new leader does not wait", boundaryConfig, func(c *simConfig) { c.noLeaderSince = true }},
	{"owners never seen count as dead long ago", boundaryConfig, func(c *simConfig) { c.unseenDeadLongAgo = true }},
	{"nodes do not fence themselves", randomConfig, func(c *simConfig) { c.noFencing = true }},
	{"app-failed reported while the copy is stopping", boundaryConfig, func(c *simConfig) { c.appFailedWhileStopping = true }},
	{"restoring owners ignore the restore deadline", stressConfig, func(c *simConfig) { c.noRestoreDeadline = true }},
	{"restore deadline without a margin for the stop", stressConfig, func(c *simConfig) { c.restoreMargin = 0 }},
}

// TestSimulationCatchesUnsafeRules runs the simulation with one of the
// rules broken and expects two live copies: the invariants are not
// vacuous, and each rule is needed.
func TestSimulationCatchesUnsafeRules(t *testing.T) {
	for _, tc := range unsafeRules {
		t.Run(tc.name, func(t *testing.T) {
			cfg := func(rng *rand.Rand) simConfig {
				c := tc.cfg(rng)
				tc.unsafe(&c)
				return c
			}
			_, err := runSims(t, 3000, cfg)
			if err == nil {
				t.Fatal("no invariant violation found in 3000 seeds")
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			if !strings.Contains(first, "two live copies") {
				t.Fatalf("expected two live copies, found another violation: %v", err)
			}
			t.Logf("found, as expected: %s", first)
		})
	}
}

// TestSimulationLeaseSweep (-sim.sweep) runs the boundary family at
// growing leases with each FenceDelay and LeaderDelay formula, and logs
// the smallest lease from which on every lease up to 6 s holds.
func TestSimulationLeaseSweep(t *testing.T) {
	if !*simSweep {
		t.Skip("run with -sim.sweep")
	}
	type formula struct {
		name          string
		fence, leader func(lease int) time.Duration
	}
	good := func(lease int) time.Duration { return modelLeaderDelay(lease, simStopMax) }
	for _, f := range []formula{
		{"today: FenceDelay = lease - MinDetect", func(l int) time.Duration { return ticks(max(l-simMinDetect, 0)) }, good},
		{"FenceDelay = lease - MinDetect + stop", func(l int) time.Duration { return modelFenceDelay(l, simStopMax) }, good},
		{"FenceDelay = lease - MinDetect + stop, LeaderDelay = FenceDelay", func(l int) time.Duration { return modelFenceDelay(l, simStopMax) },
			func(int) time.Duration { return 0 }},
		{"FenceDelay = lease - MinDetect + stop, LeaderDelay = lease", func(l int) time.Duration { return modelFenceDelay(l, simStopMax) },
			func(l int) time.Duration { return ticks(l) }},
	} {
		smallest := -1
		for lease := 60; lease >= simMinLease; lease -= 5 {
			cfg := func(rng *rand.Rand) simConfig {
				c := boundaryConfig(rng)
				c.lease = lease
				c.policy.FenceDelay, c.policy.LeaderDelay = f.fence(lease), f.leader(lease)
				return c
			}
			_, err := runSims(t, 3000, cfg)
			if err != nil {
				first, _, _ := strings.Cut(err.Error(), "\n")
				t.Logf("%s: lease %s fails: %s", f.name, ticks(lease), first)
				break
			}
			smallest = lease
		}
		if smallest < 0 {
			t.Logf("%s: fails at every lease up to 6 s", f.name)
		} else {
			t.Logf("%s: holds from lease %s on (to 6 s)", f.name, ticks(smallest))
		}
	}
}
