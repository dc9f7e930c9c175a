package soak

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestCheckRandomTimelines draws random timelines of one workload from a
// model (segments serving on one node, on two, or nowhere, with copies
// that run without serving sprinkled in) and checks Check's double copies,
// outages and max recovery against what the model says.
func TestCheckRandomTimelines(t *testing.T) {
	nodes := []string{"n1", "n2", "n3"}
	for seed := uint64(0); seed < 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		var (
			in        = Input{Workloads: []string{"w"}}
			at        time.Duration
			served    bool // the model's startup is over
			downSince = time.Duration(-1)
			outages   []Outage
			doubles   int
			maxRec    time.Duration
		)
		for seg := 0; seg < 20; seg++ {
			kind := rng.IntN(3) // 0: down, 1: one node, 2: two nodes
			n := 1 + rng.IntN(30)
			a, b := nodes[rng.IntN(3)], nodes[rng.IntN(3)]
			for i := 0; i < n; i++ {
				var cs []Copy
				if rng.IntN(4) == 0 { // a copy being checkpointed or removed
					cs = append(cs, Copy{Node: nodes[rng.IntN(3)], Running: true})
				}
				switch kind {
				case 1:
					cs = append(cs, Copy{Node: a, Running: true, Serving: true})
				case 2:
					cs = append(cs, Copy{Node: a, Running: true, Serving: true}, Copy{Node: b, Running: true, Serving: true})
					if a != b {
						doubles++
					}
				}
				in.Samples = append(in.Samples, Sample{At: at, Workload: "w", Copies: cs})
				switch {
				case kind != 0 && downSince >= 0:
					outages = append(outages, Outage{Workload: "w", Start: downSince, End: at, Fault: -1})
					maxRec = max(maxRec, at-downSince)
					downSince = -1
				case kind == 0 && served && downSince < 0:
					downSince = at
				}
				served = served || kind != 0
				at += tick
			}
		}
		in.Duration = at
		if downSince >= 0 {
			outages = append(outages, Outage{Workload: "w", Start: downSince, End: at, Fault: -1, Open: true})
			maxRec = max(maxRec, at-downSince)
		}
		if !served {
			outages = []Outage{{Workload: "w", Start: 0, End: at, Fault: -1, Open: true}}
			maxRec = at
		}
		r := Check(in)
		name := fmt.Sprintf("seed %d", seed)
		if len(r.DoubleCopies) != doubles {
			t.Fatalf("%s: %d double copies, want %d", name, len(r.DoubleCopies), doubles)
		}
		if fmt.Sprint(r.Outages) != fmt.Sprint(outages) {
			t.Fatalf("%s: outages\n%v\nwant\n%v", name, r.Outages, outages)
		}
		if r.MaxRecovery != maxRec {
			t.Fatalf("%s: max recovery %s, want %s", name, r.MaxRecovery, maxRec)
		}
		if len(r.Regressions) != 0 {
			t.Fatalf("%s: regressions %v from counters that never move", name, r.Regressions)
		}
	}
}

func TestNotRunFault(t *testing.T) {
	in := Input{Duration: s(30), Workloads: []string{"w"},
		Faults: []Fault{
			{Kind: PowerCut, Nodes: []string{"n1"}, At: s(5), For: s(5), Start: s(5), End: s(10)},
			{Kind: DiskFull, Nodes: []string{"n1"}, At: s(12), For: s(5), Err: "not run: the soak was stopped before its start"},
		},
		Samples: timeline("w", 0, s(30), func(at time.Duration) []Copy {
			if at >= s(13) && at < s(14) {
				return nil
			}
			return []Copy{serving("n1", at)}
		})}
	r := Check(in)
	if len(r.Outages) != 1 || r.Outages[0].Fault != 0 {
		t.Fatalf("outages %v, want one put down to the power cut (the disk fill never ran)", r.Outages)
	}
	if r.Executed() != 1 || len(r.Faults) != 2 {
		t.Fatalf("executed %d of %d, want 1 of 2", r.Executed(), len(r.Faults))
	}
	if st := r.KindStats(); len(st) != 1 || st[0].Kind != PowerCut {
		t.Fatalf("kind stats %+v, want only the power cut", st)
	}
	if p := r.Problems(); len(p) != 1 {
		t.Fatalf("problems %q, want the fault that did not run", p)
	}
}
