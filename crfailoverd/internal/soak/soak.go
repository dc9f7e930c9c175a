// Package soak is the pure part of the nemesis soak: the fault schedule
// drawn from a seed, and the checker that judges what an outside observer
// sampled. It does no I/O and reads no clock: times are offsets from the
// soak's start. The runner that power-cuts nodes and samples the copies
// lives in the test bed (testbed.Bed.Soak); the timeline PNG in
// soak/timeline.
package soak

import "time"

// Kind is a kind of fault.
type Kind string

// The fault kinds.
const (
	// PowerCut: the node's processes are killed at once (runtime, kubelet,
	// daemon, containers) and the node is booted again after For.
	PowerCut Kind = "power-cut"
	// Partition: Nodes (one or two) are cut off from every other node, in
	// both directions, and healed after For.
	Partition Kind = "partition"
	// OneWay: Nodes[0] can no longer send to the others, but still
	// receives, until healed after For.
	OneWay Kind = "one-way"
	// DaemonKill: crfailoverd on Nodes[0] gets SIGKILL (its node and
	// containers stay up) and is started again after For.
	DaemonKill Kind = "daemon-kill"
	// DaemonPause: crfailoverd on Nodes[0] gets SIGSTOP for For (longer
	// than the lease), then SIGCONT.
	DaemonPause Kind = "daemon-pause"
	// DiskFull: Nodes[0]'s data directory is filled to ENOSPC and freed
	// after For.
	DiskFull Kind = "disk-full"
	// LeaderKill: the owner of workload Workload is power-cut and, once
	// the leader has placed the workload elsewhere, the leader's daemon
	// gets SIGKILL; both come back after For. Nodes is filled in by the
	// runner (owner first, then the leader); the schedule reserves two
	// nodes for it.
	LeaderKill Kind = "leader-kill"
)

// Kinds is every fault kind, in a fixed order.
var Kinds = []Kind{PowerCut, Partition, OneWay, DaemonKill, DaemonPause, DiskFull, LeaderKill}

// Fault is one planned (and, once run, executed) fault.
type Fault struct {
	Kind  Kind
	Nodes []string // the nodes it hits; for LeaderKill filled in by the runner
	// Workload is the index of the workload a LeaderKill aims at.
	Workload int
	At       time.Duration // planned start, from the soak's start
	For      time.Duration // planned duration until undone
	// Set by the runner: when it really started and ended (ended: undone,
	// the node booted, the daemon started), and what went wrong doing it
	// (empty: nothing).
	Start, End time.Duration
	Err        string
}

// ScheduleConfig is what Schedule draws from.
type ScheduleConfig struct {
	Seed     int64
	Duration time.Duration // the soak's length; every fault is undone before its end minus Tail
	Nodes    []string      // node names, in a fixed order
	Kinds    []Kind        // kinds to draw from; empty: all
	// Gap bounds the time between two fault starts (defaults 5 s to 20 s).
	MinGap, MaxGap time.Duration
	// Settle is how long a node still counts as down after its fault was
	// undone (default 5 s): never more than a minority of Nodes is down,
	// counting Settle.
	Settle time.Duration
	// Tail is the quiet time left at the end for recovery (default 30 s).
	Tail time.Duration
	// Lease is the daemons' lease: a DaemonPause lasts longer (default 3 s).
	Lease time.Duration
}

// Copy is one node's copy of a workload at one sample: a running
// container seen over the node's CRI socket and/or an HTTP answer.
type Copy struct {
	Node      string
	Running   bool   // the CRI lists a running container for it
	Serving   bool   // its HTTP /state answered
	Counter   int64  // when Serving
	Checksum  string // big-state app: sha256 of its memory, when measured
	WantCheck string // big-state app: the sha256 its counter implies
}

// Sample is what the observer saw of one workload at one moment.
type Sample struct {
	At       time.Duration
	Workload string
	Copies   []Copy // nodes with a running container or a serving app
}

// Input is everything the checker judges.
type Input struct {
	Seed      int64
	Duration  time.Duration
	Workloads []string
	Faults    []Fault  // as executed
	Samples   []Sample // in time order
	// RegressionBound: how far a workload's counter may go back across a
	// restore (checkpoint interval plus checkpoint time, in ticks).
	RegressionBound int64
	// RegressionBounds, when it has a workload, is that workload's own
	// bound (measured in the run: a 100 MB app's checkpoints take longer).
	RegressionBounds map[string]int64
	// RecoveryBound: an outage longer than this is a problem.
	RecoveryBound time.Duration
	GivenUp       []string // workloads the cluster gave up at the end
	Crashes       []Event  // daemon exits and panics nobody injected
	ErrorLines    []Event  // the daemons' error-level log lines
	Final         []Copy   // per workload (same order as Workloads) the final checked copy; Serving false: none
}

// Event is something a node did, with when (zero when unknown).
type Event struct {
	At   time.Duration
	Node string
	What string
}

// DoubleCopy is one sampled moment at which a workload served on two or
// more nodes.
type DoubleCopy struct {
	At       time.Duration
	Workload string
	Nodes    []string
}

// Regression is a counter that went back by more than the bound.
type Regression struct {
	At       time.Duration
	Workload string
	Node     string
	From, To int64
}

// Mismatch is a big-state checksum that is not the one its counter implies.
type Mismatch struct {
	At        time.Duration
	Workload  string
	Node      string
	Counter   int64
	Got, Want string
}

// Outage is a stretch in which a workload served nowhere.
type Outage struct {
	Workload   string
	Start, End time.Duration // End: first sample serving again (or the soak's end)
	Fault      int           // index into Input.Faults it is put down to; -1: none
	// Open: the workload was still not serving at the soak's end (or
	// never served, or its final check found no copy).
	Open bool
}

// FaultResult is one fault and what it cost.
type FaultResult struct {
	Fault
	// Recovery is the longest outage the fault caused, from that outage's
	// start to the workload serving again; zero: it caused none.
	Recovery time.Duration
	Outages  int
}

// Report is the checker's verdict.
type Report struct {
	Seed               int64
	Duration           time.Duration
	Faults             []FaultResult
	Outages            []Outage
	DoubleCopies       []DoubleCopy
	Regressions        []Regression
	ChecksumMismatches []Mismatch
	GivenUp            []string
	Crashes            []Event
	ErrorLines         []Event
	MaxRecovery        time.Duration
	// Unrecovered: outages longer than RecoveryBound, or still open at the end.
	Unrecovered []Outage
}
