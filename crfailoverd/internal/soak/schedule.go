package soak

import (
	"math/rand/v2"
	"slices"
	"time"
)

// Defaults of ScheduleConfig's zero fields.
const (
	DefaultMinGap = 5 * time.Second
	DefaultMaxGap = 20 * time.Second
	DefaultSettle = 5 * time.Second
	DefaultTail   = 30 * time.Second
	DefaultLease  = 3 * time.Second
)

// leaderKillNodes is how many nodes a LeaderKill takes down (the owner and
// the leader), without the schedule knowing which.
const leaderKillNodes = 2

func (c ScheduleConfig) withDefaults() ScheduleConfig {
	if c.MinGap <= 0 {
		c.MinGap = DefaultMinGap
	}
	if c.MaxGap <= 0 {
		c.MaxGap = DefaultMaxGap
	}
	if c.MaxGap < c.MinGap {
		c.MaxGap = c.MinGap
	}
	if c.Settle <= 0 {
		c.Settle = DefaultSettle
	}
	if c.Tail <= 0 {
		c.Tail = DefaultTail
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if len(c.Kinds) == 0 {
		c.Kinds = Kinds
	}
	return c
}

// MaxDown is how many nodes of n may be down at once: a strict minority.
func MaxDown(n int) int {
	if n < 1 {
		return 0
	}
	return (n - 1) / 2
}

// Schedule draws the faults of a soak from c.Seed: the same config gives
// the same schedule. Faults are sorted by At, each ends (At+For) by
// Duration-Tail, and at no moment do the faults' intervals
// [At, At+For+Settle) hit more than MaxDown(len(Nodes)) distinct nodes (a
// LeaderKill counts as two nodes not yet known). A fault that does not fit
// at its drawn time is moved to the first time it fits, or dropped when
// that is too late; a kind that can never fit (a LeaderKill on three
// nodes) is dropped.
func Schedule(c ScheduleConfig) []Fault {
	c = c.withDefaults()
	rng := rand.New(rand.NewPCG(uint64(c.Seed), uint64(c.Seed)^0x9e3779b97f4a7c15))
	maxDown := MaxDown(len(c.Nodes))
	last := c.Duration - c.Tail // every fault is undone by then
	var out []Fault
	for t := between(rng, c.MinGap, c.MaxGap); t < last; {
		f := draw(rng, c)
		need := len(f.Nodes) // placeholders until placed
		if f.Kind == LeaderKill {
			need = leaderKillNodes
		}
		if need == 0 || need > maxDown {
			t += between(rng, c.MinGap, c.MaxGap)
			continue
		}
		at, free, ok := place(out, c, t, f.For, need, maxDown, last)
		if !ok {
			t += between(rng, c.MinGap, c.MaxGap)
			continue
		}
		f.At = at
		if f.Kind == LeaderKill {
			f.Nodes = nil
		} else {
			f.Nodes = pick(rng, free, len(f.Nodes))
		}
		out = append(out, f)
		t = at + between(rng, c.MinGap, c.MaxGap)
	}
	slices.SortStableFunc(out, func(a, b Fault) int { return cmpDur(a.At, b.At) })
	return out
}

// draw draws a fault's kind, length and node count (Nodes holds
// placeholders: only its length counts until the fault is placed).
func draw(rng *rand.Rand, c ScheduleConfig) Fault {
	f := Fault{Kind: c.Kinds[rng.IntN(len(c.Kinds))]}
	n := 1
	switch f.Kind {
	case PowerCut:
		f.For = between(rng, 3*time.Second, 10*time.Second)
	case Partition:
		n = 1 + rng.IntN(2)
		// Two nodes cut off together only when a minority allows it.
		if n > MaxDown(len(c.Nodes)) {
			n = 1
		}
		f.For = between(rng, 5*time.Second, 15*time.Second)
	case OneWay:
		f.For = between(rng, 5*time.Second, 15*time.Second)
	case DaemonKill:
		f.For = between(rng, 2*time.Second, 8*time.Second)
	case DaemonPause:
		f.For = c.Lease + between(rng, time.Second, 4*time.Second)
	case DiskFull:
		f.For = between(rng, 5*time.Second, 15*time.Second)
	case LeaderKill:
		n = 0
		f.Workload = rng.IntN(3)
		f.For = between(rng, 5*time.Second, 10*time.Second)
	default:
		f.For = between(rng, 5*time.Second, 10*time.Second)
	}
	f.Nodes = make([]string, n)
	return f
}

// place finds the earliest start at or after t at which a fault of length
// d hitting need more nodes fits next to the placed faults, and the nodes
// free for it then. Candidate starts are t and the moments placed faults
// stop counting (At+For+Settle); the fault's whole interval must see no
// more than maxDown nodes, counting every placed fault that overlaps it.
func place(placed []Fault, c ScheduleConfig, t, d time.Duration, need, maxDown int, last time.Duration) (time.Duration, []string, bool) {
	cands := []time.Duration{t}
	for _, p := range placed {
		if e := p.At + p.For + c.Settle; e > t {
			cands = append(cands, e)
		}
	}
	slices.Sort(cands)
	for _, s := range cands {
		if s+d > last {
			return 0, nil, false
		}
		busy := map[string]bool{}
		unknown := 0
		for _, p := range placed {
			if !overlaps(p.At, p.At+p.For+c.Settle, s, s+d+c.Settle) {
				continue
			}
			if p.Kind == LeaderKill {
				unknown += leaderKillNodes
				continue
			}
			for _, n := range p.Nodes {
				busy[n] = true
			}
		}
		if len(busy)+unknown+need > maxDown {
			continue
		}
		var free []string
		for _, n := range c.Nodes {
			if !busy[n] {
				free = append(free, n)
			}
		}
		if len(free) < need {
			continue
		}
		return s, free, true
	}
	return 0, nil, false
}

func overlaps(a0, a1, b0, b1 time.Duration) bool { return a0 < b1 && b0 < a1 }

// pick draws n distinct nodes uniformly from free, in free's order.
func pick(rng *rand.Rand, free []string, n int) []string {
	idx := rng.Perm(len(free))[:n]
	slices.Sort(idx)
	out := make([]string, n)
	for i, j := range idx {
		out[i] = free[j]
	}
	return out
}

// between draws a duration in [lo, hi], in whole milliseconds.
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	lm, hm := lo.Milliseconds(), hi.Milliseconds()
	if hm <= lm {
		return lo
	}
	return time.Duration(lm+rng.Int64N(hm-lm+1)) * time.Millisecond
}

func cmpDur(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
