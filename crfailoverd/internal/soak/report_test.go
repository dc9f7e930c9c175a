package soak

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sampleReport has one of every finding.
func sampleReport() Report {
	return Report{
		Seed:     42,
		Duration: s(120.7),
		Faults: []FaultResult{
			{Fault: Fault{Kind: PowerCut, Nodes: []string{"n1"}, At: s(10), For: s(5), Start: s(10), End: s(16)}, Recovery: s(4.2), Outages: 2},
			{Fault: Fault{Kind: PowerCut, Nodes: []string{"n2"}, At: s(40), For: s(5)}, Recovery: s(2.1), Outages: 1},
			{Fault: Fault{Kind: PowerCut, Nodes: []string{"n3"}, At: s(60), For: s(5)}},
			{Fault: Fault{Kind: DiskFull, Nodes: []string{"n3"}, At: s(70), For: s(9), Start: s(70), End: s(70.2), Err: "fill /var/lib/crfailoverd on n3: no such file"}},
			{Fault: Fault{Kind: LeaderKill, Nodes: []string{"n4", "n5"}, Workload: 2, At: s(80), For: s(6)}, Recovery: s(9), Outages: 1},
		},
		Outages: []Outage{
			{Workload: "a", Start: s(11), End: s(15.2), Fault: 0},
			{Workload: "b", Start: s(80.5), End: s(89.5), Fault: 4},
			{Workload: "c", Start: s(100), End: s(120.7), Fault: -1, Open: true},
		},
		DoubleCopies:       []DoubleCopy{{At: s(12.3), Workload: "a", Nodes: []string{"n1", "n2"}}},
		Regressions:        []Regression{{At: s(15.2), Workload: "a", Node: "n2", From: 150, To: 20}},
		ChecksumMismatches: []Mismatch{{At: s(50), Workload: "c", Node: "n3", Counter: 500, Got: "ab", Want: "cd"}},
		GivenUp:            []string{"c"},
		Crashes:            []Event{{At: s(33), Node: "n2", What: "crfailoverd exited with status 2"}},
		ErrorLines:         []Event{{At: s(34), Node: "n2", What: `level=ERROR msg="replicate"`}, {Node: "n1", What: "level=ERROR msg=x"}},
		MaxRecovery:        s(20.7),
		Unrecovered:        []Outage{{Workload: "c", Start: s(100), End: s(120.7), Fault: -1, Open: true}, {Workload: "b", Start: s(80.5), End: s(89.5), Fault: 4}},
	}
}

func TestLine(t *testing.T) {
	cases := []struct {
		r    Report
		want string
	}{
		{Report{}, "seed=0 duration_s=0 faults=0 double_copy_moments=0 max_recovery_ms=0 counter_regressions=0 checksum_mismatches=0 given_up=0 unexpected_crashes=0 error_lines=0 unrecovered=0"},
		{sampleReport(), "seed=42 duration_s=120 faults=5 double_copy_moments=1 max_recovery_ms=20700 counter_regressions=1 checksum_mismatches=1 given_up=1 unexpected_crashes=1 error_lines=2 unrecovered=2"},
	}
	for _, tc := range cases {
		if got := tc.r.Line(); got != tc.want {
			t.Errorf("Line()\n got %s\nwant %s", got, tc.want)
		}
	}
}

func TestProblems(t *testing.T) {
	if p := (Report{ErrorLines: []Event{{What: "level=ERROR"}}}).Problems(); len(p) != 0 {
		t.Fatalf("error lines alone: problems %q, want none", p)
	}
	if !(Report{ErrorLines: []Event{{What: "x"}}}).OK() || sampleReport().OK() {
		t.Fatal("OK disagrees with Problems")
	}
	p := sampleReport().Problems()
	want := []string{
		"double copy: a served on n1 and n2 at t=12.3s",
		"counter regression: a went from 150 to 20 on n2 at t=15.2s",
		"checksum mismatch: c on n3 at t=50.0s: counter 500 has sha256 ab, want cd",
		"given up: the cluster gave up c",
		"unexpected crash: crfailoverd exited with status 2 on n2 at t=33.0s",
		"unrecovered: c down from t=100.0s to the end (20.7s), after no fault",
		"slow recovery: b down from t=80.5s for 9s, after fault 4 (leader-kill n4,n5 at t=80.0s)",
		"fault 3 (disk-full n3 at t=70.0s) failed: fill /var/lib/crfailoverd on n3: no such file",
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("problems\n%s\nwant\n%s", strings.Join(p, "\n"), strings.Join(want, "\n"))
	}
}

func TestKindStats(t *testing.T) {
	st := sampleReport().KindStats()
	want := []KindStat{
		{Kind: PowerCut, Faults: 3, Outages: 3, Caused: 2, Median: s(2.1), P95: s(4.2), Max: s(4.2)},
		{Kind: DiskFull, Faults: 1},
		{Kind: LeaderKill, Faults: 1, Outages: 1, Caused: 1, Median: s(9), P95: s(9), Max: s(9)},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("kind stats\n%+v\nwant\n%+v", st, want)
	}
	table := sampleReport().KindTable()
	lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
	wantLines := []string{
		"kind         faults  outages  median_ms  p95_ms  max_ms",
		"power-cut    3       3        2100       4200    4200",
		"disk-full    1       0        -          -       -",
		"leader-kill  1       1        9000       9000    9000",
	}
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	if !reflect.DeepEqual(lines, wantLines) {
		t.Fatalf("kind table\n%s\nwant\n%s", table, strings.Join(wantLines, "\n"))
	}
}

func TestQuantile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	cases := []struct {
		d    []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{d[:1], 0.95, 1},
		{d[:2], 0.5, 1},
		{d[:3], 0.5, 2},
		{d, 0.5, 10},
		{d, 0.95, 19},
		{d, 1, 20},
	}
	for _, tc := range cases {
		if got := quantile(tc.d, tc.q); got != tc.want {
			t.Errorf("quantile(%v, %v) = %v, want %v", tc.d, tc.q, got, tc.want)
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := sampleReport()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	// A reader sees milliseconds and the summary.
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["max_recovery_ms"] != 20700.0 || raw["duration_ms"] != 120700.0 || raw["line"] != r.Line() {
		t.Fatalf("JSON figures: max_recovery_ms=%v duration_ms=%v line=%v", raw["max_recovery_ms"], raw["duration_ms"], raw["line"])
	}
	f0 := raw["faults"].([]any)[0].(map[string]any)
	if f0["recovery_ms"] != 4200.0 || f0["at_ms"] != 10000.0 || f0["kind"] != "power-cut" {
		t.Fatalf("JSON fault 0: %v", f0)
	}
	k0 := raw["kinds"].([]any)[0].(map[string]any)
	if k0["recovery_p95_ms"] != 4200.0 || k0["faults"] != 3.0 {
		t.Fatalf("JSON kind 0: %v", k0)
	}
	if n := len(raw["problems"].([]any)); n != len(r.Problems()) {
		t.Fatalf("JSON problems: %d, want %d", n, len(r.Problems()))
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", back, r)
	}
	// An empty report too.
	b, err = json.Marshal(Report{})
	if err != nil {
		t.Fatal(err)
	}
	var empty Report
	if err := json.Unmarshal(b, &empty); err != nil || !reflect.DeepEqual(empty, Report{}) {
		t.Fatalf("empty round trip: %+v %v", empty, err)
	}
}
