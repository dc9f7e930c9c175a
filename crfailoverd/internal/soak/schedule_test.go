package soak

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

var (
	nodes5 = []string{"n1", "n2", "n3", "n4", "n5"}
	nodes3 = []string{"n1", "n2", "n3"}
)

func TestScheduleDeterministic(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		c := ScheduleConfig{Seed: seed, Duration: 10 * time.Minute, Nodes: nodes5}
		a, b := Schedule(c), Schedule(c)
		if len(a) == 0 {
			t.Fatalf("seed %d: empty schedule", seed)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: same seed, different schedules:\n%v\n%v", seed, a, b)
		}
	}
	a := Schedule(ScheduleConfig{Seed: 1, Duration: 10 * time.Minute, Nodes: nodes5})
	b := Schedule(ScheduleConfig{Seed: 2, Duration: 10 * time.Minute, Nodes: nodes5})
	if reflect.DeepEqual(a, b) {
		t.Fatal("seeds 1 and 2 drew the same schedule")
	}
}

// TestScheduleShort is the CI form: 2 minutes, seed 1.
func TestScheduleShort(t *testing.T) {
	f := Schedule(ScheduleConfig{Seed: 1, Duration: 2 * time.Minute, Nodes: nodes5})
	kinds := map[Kind]bool{}
	for _, x := range f {
		kinds[x.Kind] = true
	}
	if len(f) < 3 || len(kinds) < 2 {
		t.Fatalf("2-minute schedule of seed 1: %d faults of %d kinds, want several: %v", len(f), len(kinds), f)
	}
	for _, x := range f {
		t.Logf("%6.1fs %-12s %-6s for %4.1fs workload %d", x.At.Seconds(), x.Kind, fmt.Sprint(x.Nodes), x.For.Seconds(), x.Workload)
	}
}

func TestScheduleDrawsEveryKind(t *testing.T) {
	for _, seed := range []int64{1, 2, 3, 4} {
		seen := map[Kind]int{}
		for _, f := range Schedule(ScheduleConfig{Seed: seed, Duration: 10 * time.Minute, Nodes: nodes5}) {
			seen[f.Kind]++
		}
		for _, k := range Kinds {
			if seen[k] == 0 {
				t.Errorf("seed %d: no %s in a 10-minute schedule (drew %v)", seed, k, seen)
			}
		}
	}
}

func TestScheduleKindsSubset(t *testing.T) {
	for _, f := range Schedule(ScheduleConfig{Seed: 3, Duration: 10 * time.Minute, Nodes: nodes5, Kinds: []Kind{DaemonPause}, Lease: 10 * time.Second}) {
		if f.Kind != DaemonPause {
			t.Fatalf("asked only for %s, drew %s", DaemonPause, f.Kind)
		}
		if f.For < 11*time.Second || f.For > 14*time.Second {
			t.Fatalf("daemon pause of %s with a 10 s lease, want 11 s to 14 s", f.For)
		}
	}
}

// TestScheduleInvariants checks across many seeds and both bed sizes: the
// minority rule at every moment, every fault undone before Duration-Tail,
// sorted starts at least MinGap apart, nodes distinct and known, and
// lengths within their kind's range.
func TestScheduleInvariants(t *testing.T) {
	ranges := map[Kind][2]time.Duration{
		PowerCut:    {3 * time.Second, 10 * time.Second},
		Partition:   {5 * time.Second, 15 * time.Second},
		OneWay:      {5 * time.Second, 15 * time.Second},
		DaemonKill:  {2 * time.Second, 8 * time.Second},
		DaemonPause: {DefaultLease + time.Second, DefaultLease + 4*time.Second},
		DiskFull:    {5 * time.Second, 15 * time.Second},
		LeaderKill:  {5 * time.Second, 10 * time.Second},
	}
	for _, nodes := range [][]string{nodes5, nodes3} {
		for seed := int64(0); seed < 200; seed++ {
			c := ScheduleConfig{Seed: seed, Duration: 10 * time.Minute, Nodes: nodes}
			fs := Schedule(c)
			name := fmt.Sprintf("%d nodes seed %d", len(nodes), seed)
			if len(fs) == 0 {
				t.Fatalf("%s: no faults", name)
			}
			for i, f := range fs {
				if f.At+f.For > c.Duration-DefaultTail {
					t.Fatalf("%s: fault %d (%s) ends at %s, after %s", name, i, f.Kind, f.At+f.For, c.Duration-DefaultTail)
				}
				if i > 0 && f.At-fs[i-1].At < DefaultMinGap {
					t.Fatalf("%s: faults %d and %d start %s apart, less than %s", name, i-1, i, f.At-fs[i-1].At, DefaultMinGap)
				}
				r := ranges[f.Kind]
				if f.For < r[0] || f.For > r[1] {
					t.Fatalf("%s: %s lasts %s, want %s to %s", name, f.Kind, f.For, r[0], r[1])
				}
				switch f.Kind {
				case LeaderKill:
					if len(f.Nodes) != 0 || f.Workload < 0 || f.Workload > 2 {
						t.Fatalf("%s: leader kill with nodes %v workload %d", name, f.Nodes, f.Workload)
					}
				case Partition:
					if len(f.Nodes) < 1 || len(f.Nodes) > 2 {
						t.Fatalf("%s: partition of %v", name, f.Nodes)
					}
				default:
					if len(f.Nodes) != 1 {
						t.Fatalf("%s: %s of %v, want one node", name, f.Kind, f.Nodes)
					}
				}
				for j, n := range f.Nodes {
					if !slices.Contains(nodes, n) || slices.Index(f.Nodes, n) != j {
						t.Fatalf("%s: fault %d hits %v: unknown or repeated node", name, i, f.Nodes)
					}
				}
			}
			if err := minorityViolation(fs, len(nodes), DefaultSettle); err != "" {
				t.Fatalf("%s: %s", name, err)
			}
		}
	}
}

// minorityViolation checks the rule at every moment a fault interval
// begins (the count can only rise there).
func minorityViolation(fs []Fault, n int, settle time.Duration) string {
	for _, f := range fs {
		t := f.At
		nodes := map[string]bool{}
		unknown := 0
		for _, g := range fs {
			if g.At <= t && t < g.At+g.For+settle {
				if g.Kind == LeaderKill {
					unknown += 2
				}
				for _, x := range g.Nodes {
					nodes[x] = true
				}
			}
		}
		if len(nodes)+unknown > (n-1)/2 {
			return fmt.Sprintf("at %s %d nodes down (%v and %d unknown), more than a minority of %d", t, len(nodes)+unknown, nodes, unknown, n)
		}
	}
	return ""
}

func TestMinorityViolationCatches(t *testing.T) {
	// The checker of the rule must fail on a schedule that breaks it.
	bad := []Fault{
		{Kind: PowerCut, Nodes: []string{"n1"}, At: 0, For: 10 * time.Second},
		{Kind: DiskFull, Nodes: []string{"n2"}, At: 5 * time.Second, For: 10 * time.Second},
	}
	if minorityViolation(bad, 3, DefaultSettle) == "" {
		t.Fatal("two nodes of three down together passed")
	}
	if minorityViolation(bad, 5, DefaultSettle) != "" {
		t.Fatal("two nodes of five down together failed")
	}
	lk := []Fault{{Kind: LeaderKill, At: 0, For: 5 * time.Second}, {Kind: DaemonKill, Nodes: []string{"n1"}, At: 9 * time.Second, For: time.Second}}
	if minorityViolation(lk, 5, DefaultSettle) == "" {
		t.Fatal("a daemon kill inside a leader kill's settle passed on five nodes")
	}
}

func TestScheduleThreeNodesNoLeaderKill(t *testing.T) {
	for seed := int64(0); seed < 50; seed++ {
		for _, f := range Schedule(ScheduleConfig{Seed: seed, Duration: 10 * time.Minute, Nodes: nodes3}) {
			if f.Kind == LeaderKill || len(f.Nodes) > 1 {
				t.Fatalf("seed %d: %s of %v on three nodes (a minority is one node)", seed, f.Kind, f.Nodes)
			}
		}
	}
	if fs := Schedule(ScheduleConfig{Seed: 1, Duration: 10 * time.Minute, Nodes: []string{"n1", "n2"}}); len(fs) != 0 {
		t.Fatalf("two nodes (no minority to take down): %d faults", len(fs))
	}
	if fs := Schedule(ScheduleConfig{Seed: 1, Duration: 20 * time.Second, Nodes: nodes5}); len(fs) != 0 {
		t.Fatalf("a soak shorter than its tail: %d faults", len(fs))
	}
}
