package soak

import (
	"slices"
	"time"
)

// attributeSettle is how long after a fault was undone an outage that
// starts is still put down to it (the schedule's default Settle).
const attributeSettle = DefaultSettle

// Check judges what the observer sampled: double copies, outages and what
// caused them, counter regressions, checksum mismatches, and what the
// runner collected (given-up workloads, crashes, error lines).
func Check(in Input) Report {
	r := Report{
		Seed:       in.Seed,
		Duration:   in.Duration,
		GivenUp:    slices.Clone(in.GivenUp),
		Crashes:    slices.Clone(in.Crashes),
		ErrorLines: slices.Clone(in.ErrorLines),
	}
	r.Faults = make([]FaultResult, len(in.Faults))
	for i, f := range in.Faults {
		r.Faults[i] = FaultResult{Fault: f}
	}

	samples := slices.Clone(in.Samples)
	slices.SortStableFunc(samples, func(a, b Sample) int { return cmpDur(a.At, b.At) })

	type state struct {
		served     bool // served at least once (startup is over)
		down       bool // in an outage
		downSince  time.Duration
		seen       bool // highest is set
		highest    int64
		owners     []string // the nodes of the last sample that served
		downOwners []string // owners when the outage began
	}
	states := map[string]*state{}
	get := func(w string) *state {
		s := states[w]
		if s == nil {
			s = &state{}
			states[w] = s
		}
		return s
	}
	for _, w := range in.Workloads {
		get(w)
	}
	var outages []Outage
	var outageOwners [][]string // per outage, the nodes that served just before it

	for _, sm := range samples {
		st := get(sm.Workload)
		var nodes []string
		for _, c := range sm.Copies {
			if c.Serving && !slices.Contains(nodes, c.Node) {
				nodes = append(nodes, c.Node)
			}
			if c.Checksum != "" && c.WantCheck != "" && c.Checksum != c.WantCheck {
				r.ChecksumMismatches = append(r.ChecksumMismatches, Mismatch{
					At: sm.At, Workload: sm.Workload, Node: c.Node, Counter: c.Counter, Got: c.Checksum, Want: c.WantCheck,
				})
			}
		}
		if len(nodes) >= 2 {
			slices.Sort(nodes)
			r.DoubleCopies = append(r.DoubleCopies, DoubleCopy{At: sm.At, Workload: sm.Workload, Nodes: nodes})
		}

		for _, c := range sm.Copies {
			if !c.Serving {
				continue
			}
			switch {
			case !st.seen:
				st.seen, st.highest = true, c.Counter
			case c.Counter < st.highest-in.regressionBound(sm.Workload):
				r.Regressions = append(r.Regressions, Regression{
					At: sm.At, Workload: sm.Workload, Node: c.Node, From: st.highest, To: c.Counter,
				})
				st.highest = c.Counter // one regression per drop
			case c.Counter > st.highest:
				st.highest = c.Counter
			}
		}

		serving := len(nodes) > 0
		switch {
		case !st.served:
			st.served = serving
		case !serving && !st.down:
			st.down, st.downSince, st.downOwners = true, sm.At, st.owners
		case serving && st.down:
			st.down = false
			outages = append(outages, Outage{Workload: sm.Workload, Start: st.downSince, End: sm.At})
			outageOwners = append(outageOwners, st.downOwners)
		}
		if serving {
			st.owners = nodes
		}
	}

	// Still down at the end, never served, or not serving at the final check.
	var extra []string // sampled but not named in Workloads
	for w := range states {
		if !slices.Contains(in.Workloads, w) {
			extra = append(extra, w)
		}
	}
	slices.Sort(extra)
	names := append(slices.Clone(in.Workloads), extra...)
	for i, w := range names {
		st := states[w]
		finalDown := i < len(in.Workloads) && i < len(in.Final) && !in.Final[i].Serving
		switch {
		case st.down:
			outages = append(outages, Outage{Workload: w, Start: st.downSince, End: in.Duration, Open: true})
			outageOwners = append(outageOwners, st.downOwners)
		case !st.served:
			outages = append(outages, Outage{Workload: w, Start: firstSample(samples, w), End: in.Duration, Open: true})
			outageOwners = append(outageOwners, nil)
		case finalDown:
			outages = append(outages, Outage{Workload: w, Start: in.Duration, End: in.Duration, Open: true})
			outageOwners = append(outageOwners, st.owners)
		}
	}

	for i := range outages {
		o := &outages[i]
		o.Fault = attribute(in, o.Start, outageOwners[i])
		d := o.End - o.Start
		if o.Fault >= 0 {
			fr := &r.Faults[o.Fault]
			fr.Outages++
			fr.Recovery = max(fr.Recovery, d)
		}
		r.MaxRecovery = max(r.MaxRecovery, d)
		if o.Open || (in.RecoveryBound > 0 && d > in.RecoveryBound) {
			r.Unrecovered = append(r.Unrecovered, *o)
		}
	}
	r.Outages = outages
	return r
}

func firstSample(samples []Sample, w string) time.Duration {
	for _, s := range samples {
		if s.Workload == w {
			return s.At
		}
	}
	return 0
}

// attribute returns the index of the fault an outage starting at start is
// put down to: among the faults whose [Start, End+settle] holds start, the
// one that started latest, preferring faults that hit one of owners (the
// nodes that served just before the outage) or name no node; -1: none.
func attribute(in Input, start time.Duration, owners []string) int {
	best, bestHits := -1, false
	var bestStart time.Duration
	for i, f := range in.Faults {
		if !Ran(f) {
			continue
		}
		s, e := FaultSpan(f, in.Duration)
		if start < s || start > e+attributeSettle {
			continue
		}
		hits := len(f.Nodes) == 0
		for _, n := range f.Nodes {
			hits = hits || slices.Contains(owners, n)
		}
		if best < 0 || hits && !bestHits || hits == bestHits && s >= bestStart {
			best, bestHits, bestStart = i, hits, s
		}
	}
	return best
}

// Ran reports whether the runner started fault f: a fault with an error
// and neither Start nor End set never ran (the soak stopped before it).
func Ran(f Fault) bool { return f.Start != 0 || f.End != 0 || f.Err == "" }

// FaultSpan is when a fault really ran: Start to End as the runner set
// them, the planned At to At+For when it set neither, and to the soak's
// end when it started but never ended.
func FaultSpan(f Fault, soakEnd time.Duration) (start, end time.Duration) {
	if f.Start == 0 && f.End == 0 {
		return f.At, f.At + f.For
	}
	if f.End < f.Start {
		return f.Start, soakEnd
	}
	return f.Start, f.End
}

// regressionBound is workload w's bound: its own when measured, else the
// common one.
func (in Input) regressionBound(w string) int64 {
	if b, ok := in.RegressionBounds[w]; ok {
		return b
	}
	return in.RegressionBound
}
