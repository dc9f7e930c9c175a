package soak

import (
	"reflect"
	"testing"
	"time"
)

const tick = 100 * time.Millisecond

func s(sec float64) time.Duration { return time.Duration(sec * float64(time.Second)) }

// timeline builds the samples of one workload every 100 ms from from to
// to (exclusive), each with the copies copies(at) returns.
func timeline(w string, from, to time.Duration, copies func(at time.Duration) []Copy) []Sample {
	var out []Sample
	for at := from; at < to; at += tick {
		out = append(out, Sample{At: at, Workload: w, Copies: copies(at)})
	}
	return out
}

// serving is a copy that answered with the counter its time implies.
func serving(node string, at time.Duration) Copy {
	return Copy{Node: node, Running: true, Serving: true, Counter: int64(at / tick)}
}

func TestCheck(t *testing.T) {
	cut := Fault{Kind: PowerCut, Nodes: []string{"n1"}, At: s(10), For: s(5), Start: s(10), End: s(15)}
	part := Fault{Kind: Partition, Nodes: []string{"n2"}, At: s(30), For: s(8), Start: s(30), End: s(38)}

	cases := []struct {
		name  string
		in    Input
		check func(t *testing.T, r Report)
	}{
		{
			name: "double copy counted",
			in: Input{Duration: s(10), Workloads: []string{"w"}, Samples: timeline("w", 0, s(10), func(at time.Duration) []Copy {
				if at >= s(3) && at < s(3.3) {
					return []Copy{serving("n2", at), serving("n1", at)}
				}
				return []Copy{serving("n1", at)}
			})},
			check: func(t *testing.T, r Report) {
				want := []DoubleCopy{{s(3), "w", []string{"n1", "n2"}}, {s(3.1), "w", []string{"n1", "n2"}}, {s(3.2), "w", []string{"n1", "n2"}}}
				if !reflect.DeepEqual(r.DoubleCopies, want) {
					t.Fatalf("double copies %v, want %v", r.DoubleCopies, want)
				}
			},
		},
		{
			name: "running but not serving is no double copy",
			in: Input{Duration: s(10), Workloads: []string{"w"}, Samples: timeline("w", 0, s(10), func(at time.Duration) []Copy {
				// n1's copy paused by a checkpoint or being removed.
				return []Copy{{Node: "n1", Running: true}, serving("n2", at)}
			})},
			check: func(t *testing.T, r Report) {
				if len(r.DoubleCopies) != 0 || len(r.Outages) != 0 {
					t.Fatalf("double copies %v outages %v, want none", r.DoubleCopies, r.Outages)
				}
			},
		},
		{
			name: "one node serving twice is no double copy",
			in:   Input{Duration: s(1), Workloads: []string{"w"}, Samples: []Sample{{At: 0, Workload: "w", Copies: []Copy{serving("n1", 0), serving("n1", 0)}}}},
			check: func(t *testing.T, r Report) {
				if len(r.DoubleCopies) != 0 {
					t.Fatalf("double copies %v, want none", r.DoubleCopies)
				}
			},
		},
		{
			name: "outage put down to the latest fault that covers its start",
			in: Input{
				Duration: s(60), Workloads: []string{"a", "b"},
				Faults: []Fault{cut, part},
				Samples: append(
					timeline("a", 0, s(60), func(at time.Duration) []Copy {
						switch {
						case at >= s(10.2) && at < s(14): // the power cut: 3.8 s
							return nil
						case at >= s(41) && at < s(42): // 3 s after the partition healed: within settle
							return nil
						case at >= s(50) && at < s(50.5): // nothing near
							return nil
						}
						return []Copy{serving("n1", at)}
					}),
					timeline("b", 0, s(60), func(at time.Duration) []Copy {
						if at >= s(31) && at < s(33) {
							return nil
						}
						return []Copy{serving("n3", at)}
					})...),
			},
			check: func(t *testing.T, r Report) {
				want := []Outage{
					{Workload: "a", Start: s(10.2), End: s(14), Fault: 0},
					{Workload: "b", Start: s(31), End: s(33), Fault: 1},
					{Workload: "a", Start: s(41), End: s(42), Fault: 1},
					{Workload: "a", Start: s(50), End: s(50.5), Fault: -1},
				}
				got := sortOutages(r.Outages)
				if !reflect.DeepEqual(got, sortOutages(want)) {
					t.Fatalf("outages\n%v\nwant\n%v", got, want)
				}
				if r.Faults[0].Recovery != s(3.8) || r.Faults[0].Outages != 1 {
					t.Fatalf("power cut: recovery %s outages %d, want 3.8s 1", r.Faults[0].Recovery, r.Faults[0].Outages)
				}
				if r.Faults[1].Recovery != s(2) || r.Faults[1].Outages != 2 {
					t.Fatalf("partition: recovery %s outages %d, want 2s 2", r.Faults[1].Recovery, r.Faults[1].Outages)
				}
				if r.MaxRecovery != s(3.8) {
					t.Fatalf("max recovery %s, want 3.8s", r.MaxRecovery)
				}
				if len(r.Unrecovered) != 0 {
					t.Fatalf("unrecovered %v, want none", r.Unrecovered)
				}
			},
		},
		{
			name: "overlapping faults: the later start wins",
			in: Input{
				Duration: s(30), Workloads: []string{"w"},
				Faults: []Fault{
					{Kind: DiskFull, Nodes: []string{"n2"}, At: s(5), For: s(15)},
					{Kind: DaemonKill, Nodes: []string{"n1"}, At: s(8), For: s(2)},
				},
				Samples: timeline("w", 0, s(30), func(at time.Duration) []Copy {
					if at >= s(9) && at < s(12) {
						return nil
					}
					return []Copy{serving("n1", at)}
				}),
			},
			check: func(t *testing.T, r Report) {
				if len(r.Outages) != 1 || r.Outages[0].Fault != 1 {
					t.Fatalf("outages %v, want one put down to fault 1 (the daemon kill)", r.Outages)
				}
				if r.Faults[0].Outages != 0 || r.Faults[1].Recovery != s(3) {
					t.Fatalf("faults %+v", r.Faults)
				}
			},
		},
		{
			name: "a fault on the owner wins over a later one elsewhere",
			in: Input{
				Duration: s(30), Workloads: []string{"w"},
				Faults: []Fault{
					{Kind: PowerCut, Nodes: []string{"n1"}, At: s(5), For: s(8)},
					{Kind: DiskFull, Nodes: []string{"n3"}, At: s(8), For: s(5)},
					{Kind: OneWay, Nodes: []string{"n4"}, At: s(8.5), For: s(5)},
				},
				Samples: timeline("w", 0, s(30), func(at time.Duration) []Copy {
					switch {
					case at >= s(9) && at < s(12):
						return nil
					case at >= s(12):
						return []Copy{serving("n2", at)}
					}
					return []Copy{serving("n1", at)}
				}),
			},
			check: func(t *testing.T, r Report) {
				if len(r.Outages) != 1 || r.Outages[0].Fault != 0 {
					t.Fatalf("outages %v, want one put down to fault 0 (the power cut of the owner n1)", r.Outages)
				}
			},
		},
		{
			name: "no fault on the owner: the latest covering one",
			in: Input{
				Duration: s(30), Workloads: []string{"w"},
				Faults: []Fault{
					{Kind: DiskFull, Nodes: []string{"n3"}, At: s(8), For: s(5)},
					{Kind: OneWay, Nodes: []string{"n4"}, At: s(8.5), For: s(5)},
				},
				Samples: timeline("w", 0, s(30), func(at time.Duration) []Copy {
					if at >= s(9) && at < s(12) {
						return nil
					}
					return []Copy{serving("n1", at)}
				}),
			},
			check: func(t *testing.T, r Report) {
				if len(r.Outages) != 1 || r.Outages[0].Fault != 1 {
					t.Fatalf("outages %v, want one put down to fault 1 (the latest)", r.Outages)
				}
			},
		},
		{
			name: "unattributed outage counts in max recovery",
			in: Input{Duration: s(20), Workloads: []string{"w"}, Faults: []Fault{cut},
				Samples: timeline("w", 0, s(20), func(at time.Duration) []Copy {
					if at >= s(2) && at < s(7) { // before the cut
						return nil
					}
					return []Copy{serving("n1", at)}
				})},
			check: func(t *testing.T, r Report) {
				if r.MaxRecovery != s(5) || r.Faults[0].Recovery != 0 {
					t.Fatalf("max recovery %s, fault recovery %s: want 5s, 0", r.MaxRecovery, r.Faults[0].Recovery)
				}
			},
		},
		{
			name: "regression once per drop",
			in: Input{Duration: s(20), Workloads: []string{"w"}, RegressionBound: 30,
				Samples: timeline("w", 0, s(20), func(at time.Duration) []Copy {
					c := serving("n1", at)
					if at >= s(10) { // restored from a checkpoint 8 s old: 80 ticks back
						c = Copy{Node: "n2", Running: true, Serving: true, Counter: int64(at/tick) - 80}
					}
					return []Copy{c}
				})},
			check: func(t *testing.T, r Report) {
				want := []Regression{{At: s(10), Workload: "w", Node: "n2", From: 99, To: 20}}
				if !reflect.DeepEqual(r.Regressions, want) {
					t.Fatalf("regressions %v, want %v", r.Regressions, want)
				}
			},
		},
		{
			name: "regression within the bound is none",
			in: Input{Duration: s(20), Workloads: []string{"w"}, RegressionBound: 30,
				Samples: timeline("w", 0, s(20), func(at time.Duration) []Copy {
					c := serving("n1", at)
					if at >= s(10) { // 25 ticks back: a fresh checkpoint
						c = Copy{Node: "n2", Running: true, Serving: true, Counter: int64(at/tick) - 25}
					}
					return []Copy{c}
				})},
			check: func(t *testing.T, r Report) {
				if len(r.Regressions) != 0 {
					t.Fatalf("regressions %v, want none", r.Regressions)
				}
			},
		},
		{
			name: "a workload's own bound overrides the common one",
			in: Input{Duration: s(20), Workloads: []string{"w", "v"}, RegressionBound: 30,
				RegressionBounds: map[string]int64{"w": 90},
				Samples: append(timeline("w", 0, s(20), func(at time.Duration) []Copy {
					c := serving("n1", at)
					if at >= s(10) { // 80 ticks back: within w's measured 90
						c = Copy{Node: "n2", Running: true, Serving: true, Counter: int64(at/tick) - 80}
					}
					return []Copy{c}
				}), timeline("v", 0, s(20), func(at time.Duration) []Copy {
					c := serving("n3", at)
					if at >= s(10) { // 80 ticks back: beyond the common 30
						c = Copy{Node: "n4", Running: true, Serving: true, Counter: int64(at/tick) - 80}
					}
					return []Copy{c}
				})...)},
			check: func(t *testing.T, r Report) {
				if len(r.Regressions) != 1 || r.Regressions[0].Workload != "v" {
					t.Fatalf("regressions %v, want one of v only", r.Regressions)
				}
			},
		},
		{
			name: "fresh container from zero is a regression",
			in: Input{Duration: s(20), Workloads: []string{"w"}, RegressionBound: 30,
				Samples: timeline("w", 0, s(20), func(at time.Duration) []Copy {
					if at >= s(10) {
						return []Copy{{Node: "n2", Running: true, Serving: true, Counter: int64((at - s(10)) / tick)}}
					}
					return []Copy{serving("n1", at)}
				})},
			check: func(t *testing.T, r Report) {
				if len(r.Regressions) != 1 || r.Regressions[0].From != 99 || r.Regressions[0].To != 0 {
					t.Fatalf("regressions %v, want one from 99 to 0", r.Regressions)
				}
			},
		},
		{
			name: "startup outage ignored",
			in: Input{Duration: s(20), Workloads: []string{"w"}, RecoveryBound: s(1),
				Samples: timeline("w", 0, s(20), func(at time.Duration) []Copy {
					if at < s(6) { // still starting
						return nil
					}
					return []Copy{serving("n1", at)}
				})},
			check: func(t *testing.T, r Report) {
				if len(r.Outages) != 0 || len(r.Unrecovered) != 0 || r.MaxRecovery != 0 {
					t.Fatalf("outages %v unrecovered %v max %s, want none", r.Outages, r.Unrecovered, r.MaxRecovery)
				}
			},
		},
		{
			name: "recovery bound respected",
			in: Input{Duration: s(40), Workloads: []string{"w"}, RecoveryBound: s(3), Faults: []Fault{cut},
				Samples: timeline("w", 0, s(40), func(at time.Duration) []Copy {
					switch {
					case at >= s(10) && at < s(13): // exactly the bound: fine
						return nil
					case at >= s(22) && at < s(25.1): // past it
						return nil
					}
					return []Copy{serving("n1", at)}
				})},
			check: func(t *testing.T, r Report) {
				if len(r.Outages) != 2 {
					t.Fatalf("outages %v, want 2", r.Outages)
				}
				want := []Outage{{Workload: "w", Start: s(22), End: s(25.1), Fault: -1}}
				if !reflect.DeepEqual(r.Unrecovered, want) {
					t.Fatalf("unrecovered %v, want %v", r.Unrecovered, want)
				}
			},
		},
		{
			name: "unrecovered at the end",
			in: Input{Duration: s(30), Workloads: []string{"w"}, Faults: []Fault{cut},
				Samples: timeline("w", 0, s(30), func(at time.Duration) []Copy {
					if at >= s(12) {
						return nil
					}
					return []Copy{serving("n1", at)}
				}),
				Final: []Copy{{}}},
			check: func(t *testing.T, r Report) {
				want := []Outage{{Workload: "w", Start: s(12), End: s(30), Fault: 0, Open: true}}
				if !reflect.DeepEqual(r.Unrecovered, want) {
					t.Fatalf("unrecovered %v, want %v", r.Unrecovered, want)
				}
				if r.MaxRecovery != s(18) {
					t.Fatalf("max recovery %s, want 18s", r.MaxRecovery)
				}
			},
		},
		{
			name: "final check finds no copy",
			in: Input{Duration: s(10), Workloads: []string{"a", "b"},
				Samples: append(timeline("a", 0, s(10), func(at time.Duration) []Copy { return []Copy{serving("n1", at)} }),
					timeline("b", 0, s(10), func(at time.Duration) []Copy { return []Copy{serving("n2", at)} })...),
				Final: []Copy{{Node: "n1", Running: true, Serving: true}, {}}},
			check: func(t *testing.T, r Report) {
				want := []Outage{{Workload: "b", Start: s(10), End: s(10), Fault: -1, Open: true}}
				if !reflect.DeepEqual(r.Unrecovered, want) {
					t.Fatalf("unrecovered %v, want %v", r.Unrecovered, want)
				}
			},
		},
		{
			name: "never served",
			in:   Input{Duration: s(10), Workloads: []string{"w"}, Samples: timeline("w", s(1), s(10), func(time.Duration) []Copy { return nil })},
			check: func(t *testing.T, r Report) {
				want := []Outage{{Workload: "w", Start: s(1), End: s(10), Fault: -1, Open: true}}
				if !reflect.DeepEqual(r.Unrecovered, want) {
					t.Fatalf("unrecovered %v, want %v", r.Unrecovered, want)
				}
			},
		},
		{
			name: "checksum mismatch",
			in: Input{Duration: s(1), Workloads: []string{"big"}, Samples: []Sample{
				{At: 0, Workload: "big", Copies: []Copy{{Node: "n1", Serving: true, Counter: 5, Checksum: "aa", WantCheck: "aa"}}},
				{At: tick, Workload: "big", Copies: []Copy{{Node: "n1", Serving: true, Counter: 6, Checksum: "", WantCheck: "bb"}}},
				{At: 2 * tick, Workload: "big", Copies: []Copy{{Node: "n2", Serving: true, Counter: 7, Checksum: "cc", WantCheck: "dd"}}},
			}},
			check: func(t *testing.T, r Report) {
				want := []Mismatch{{At: 2 * tick, Workload: "big", Node: "n2", Counter: 7, Got: "cc", Want: "dd"}}
				if !reflect.DeepEqual(r.ChecksumMismatches, want) {
					t.Fatalf("mismatches %v, want %v", r.ChecksumMismatches, want)
				}
			},
		},
		{
			name: "copied through",
			in: Input{Seed: 9, Duration: s(5), GivenUp: []string{"w"}, Crashes: []Event{{At: s(1), Node: "n1", What: "panic"}},
				ErrorLines: []Event{{At: s(2), Node: "n2", What: "level=ERROR msg=x"}}},
			check: func(t *testing.T, r Report) {
				if r.Seed != 9 || r.Duration != s(5) || len(r.GivenUp) != 1 || len(r.Crashes) != 1 || len(r.ErrorLines) != 1 {
					t.Fatalf("report %+v", r)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, Check(tc.in)) })
	}
}

func sortOutages(o []Outage) []Outage {
	out := append([]Outage(nil), o...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Start < out[i].Start {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestCheckUnsortedSamples(t *testing.T) {
	// The observer's samples from parallel probes may come slightly out
	// of order: Check sorts them by time.
	var in Input
	in.Duration, in.Workloads = s(5), []string{"w"}
	in.Samples = timeline("w", 0, s(5), func(at time.Duration) []Copy {
		if at >= s(2) && at < s(3) {
			return nil
		}
		return []Copy{serving("n1", at)}
	})
	in.Samples[5], in.Samples[25] = in.Samples[25], in.Samples[5]
	r := Check(in)
	if len(r.Outages) != 1 || r.Outages[0].Start != s(2) || r.Outages[0].End != s(3) {
		t.Fatalf("outages %v, want one from 2s to 3s", r.Outages)
	}
}
