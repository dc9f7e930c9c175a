package soak

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Line is the report's one-line summary, the figures CI greps:
//
//	seed=N duration_s=N faults=N double_copy_moments=N max_recovery_ms=N counter_regressions=N checksum_mismatches=N given_up=N unexpected_crashes=N error_lines=N unrecovered=N
//
// faults counts the executed faults (see Executed), double_copy_moments
// the samples with two serving copies.
func (r Report) Line() string {
	return fmt.Sprintf("seed=%d duration_s=%d faults=%d double_copy_moments=%d max_recovery_ms=%d counter_regressions=%d checksum_mismatches=%d given_up=%d unexpected_crashes=%d error_lines=%d unrecovered=%d",
		r.Seed, int64(r.Duration/time.Second), r.Executed(), len(r.DoubleCopies), r.MaxRecovery.Milliseconds(),
		len(r.Regressions), len(r.ChecksumMismatches), len(r.GivenUp), len(r.Crashes), len(r.ErrorLines), len(r.Unrecovered))
}

// Executed is how many of the faults ran (see Ran): a fault the soak was
// stopped before is in Faults, with its Err, but not counted.
func (r Report) Executed() int {
	n := 0
	for _, f := range r.Faults {
		if Ran(f.Fault) {
			n++
		}
	}
	return n
}

// OK reports whether the soak found no problem (error lines are reported,
// not failed on).
func (r Report) OK() bool { return len(r.Problems()) == 0 }

// Problems is one readable line per problem found: double copies,
// regressions, checksum mismatches, given-up workloads, crashes,
// unrecovered outages and faults the runner could not inject or undo.
// Error log lines are not problems.
func (r Report) Problems() []string {
	var out []string
	for _, d := range r.DoubleCopies {
		out = append(out, fmt.Sprintf("double copy: %s served on %s at %s", d.Workload, strings.Join(d.Nodes, " and "), at(d.At)))
	}
	for _, g := range r.Regressions {
		out = append(out, fmt.Sprintf("counter regression: %s went from %d to %d on %s at %s", g.Workload, g.From, g.To, g.Node, at(g.At)))
	}
	for _, m := range r.ChecksumMismatches {
		out = append(out, fmt.Sprintf("checksum mismatch: %s on %s at %s: counter %d has sha256 %s, want %s", m.Workload, m.Node, at(m.At), m.Counter, m.Got, m.Want))
	}
	for _, w := range r.GivenUp {
		out = append(out, fmt.Sprintf("given up: the cluster gave up %s", w))
	}
	for _, c := range r.Crashes {
		out = append(out, fmt.Sprintf("unexpected crash: %s on %s at %s", c.What, c.Node, at(c.At)))
	}
	for _, o := range r.Unrecovered {
		cause := "no fault"
		if o.Fault >= 0 && o.Fault < len(r.Faults) {
			f := r.Faults[o.Fault]
			cause = fmt.Sprintf("fault %d (%s %s at %s)", o.Fault, f.Kind, strings.Join(f.Nodes, ","), at(f.At))
		}
		if o.Open {
			out = append(out, fmt.Sprintf("unrecovered: %s down from %s to the end (%s), after %s", o.Workload, at(o.Start), o.End-o.Start, cause))
		} else {
			out = append(out, fmt.Sprintf("slow recovery: %s down from %s for %s, after %s", o.Workload, at(o.Start), o.End-o.Start, cause))
		}
	}
	for i, f := range r.Faults {
		if f.Err != "" {
			out = append(out, fmt.Sprintf("fault %d (%s %s at %s) failed: %s", i, f.Kind, strings.Join(f.Nodes, ","), at(f.At), f.Err))
		}
	}
	return out
}

func at(d time.Duration) string { return fmt.Sprintf("t=%.1fs", d.Seconds()) }

// KindStat is the recovery distribution of one fault kind. The recovery
// figures are over the faults of that kind that caused an outage.
type KindStat struct {
	Kind             Kind
	Faults, Outages  int
	Caused           int // faults that caused at least one outage
	Median, P95, Max time.Duration
}

// KindStats is the recovery distribution per fault kind over the faults
// that ran, in Kinds order (then any other kind by name); kinds without
// faults are left out.
func (r Report) KindStats() []KindStat {
	by := map[Kind]*KindStat{}
	rec := map[Kind][]time.Duration{}
	for _, f := range r.Faults {
		if !Ran(f.Fault) {
			continue
		}
		s := by[f.Kind]
		if s == nil {
			s = &KindStat{Kind: f.Kind}
			by[f.Kind] = s
		}
		s.Faults++
		s.Outages += f.Outages
		if f.Outages > 0 {
			s.Caused++
			rec[f.Kind] = append(rec[f.Kind], f.Recovery)
		}
	}
	order := slices.Clone(Kinds)
	var other []Kind
	for k := range by {
		if !slices.Contains(order, k) {
			other = append(other, k)
		}
	}
	slices.Sort(other)
	var out []KindStat
	for _, k := range append(order, other...) {
		s := by[k]
		if s == nil {
			continue
		}
		d := rec[k]
		slices.Sort(d)
		s.Median, s.P95 = quantile(d, 0.5), quantile(d, 0.95)
		if len(d) > 0 {
			s.Max = d[len(d)-1]
		}
		out = append(out, *s)
	}
	return out
}

// quantile is the nearest-rank q-quantile of sorted d; zero when empty.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q*float64(len(d))+0.999999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

// KindTable is KindStats as an aligned text table (milliseconds; "-"
// where no fault of the kind caused an outage).
func (r Report) KindTable() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "kind\tfaults\toutages\tmedian_ms\tp95_ms\tmax_ms\t")
	for _, s := range r.KindStats() {
		ms := func(d time.Duration) string {
			if s.Caused == 0 {
				return "-"
			}
			return fmt.Sprint(d.Milliseconds())
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t\n", s.Kind, s.Faults, s.Outages, ms(s.Median), ms(s.P95), ms(s.Max))
	}
	_ = w.Flush()
	return b.String()
}
