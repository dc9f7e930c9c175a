package soak

import (
	"encoding/json"
	"time"
)

// The report's JSON form: snake_case keys, every duration in whole
// milliseconds (keys ending in _ms), plus the summary line, the problems
// and the per-kind table, which are derived and ignored when reading.

type jsonReport struct {
	Line               string         `json:"line"`
	Seed               int64          `json:"seed"`
	DurationMS         int64          `json:"duration_ms"`
	MaxRecoveryMS      int64          `json:"max_recovery_ms"`
	Problems           []string       `json:"problems"`
	Kinds              []jsonKind     `json:"kinds"`
	Faults             []jsonFault    `json:"faults"`
	Outages            []jsonOutage   `json:"outages"`
	Unrecovered        []jsonOutage   `json:"unrecovered"`
	DoubleCopies       []jsonDouble   `json:"double_copies"`
	Regressions        []jsonRegress  `json:"regressions"`
	ChecksumMismatches []jsonMismatch `json:"checksum_mismatches"`
	GivenUp            []string       `json:"given_up"`
	Crashes            []jsonEvent    `json:"crashes"`
	ErrorLines         []jsonEvent    `json:"error_lines"`
}

type jsonKind struct {
	Kind     Kind  `json:"kind"`
	Faults   int   `json:"faults"`
	Outages  int   `json:"outages"`
	Caused   int   `json:"faults_with_outage"`
	MedianMS int64 `json:"recovery_median_ms"`
	P95MS    int64 `json:"recovery_p95_ms"`
	MaxMS    int64 `json:"recovery_max_ms"`
}

type jsonFault struct {
	Kind       Kind     `json:"kind"`
	Nodes      []string `json:"nodes"`
	Workload   int      `json:"workload"`
	AtMS       int64    `json:"at_ms"`
	ForMS      int64    `json:"for_ms"`
	StartMS    int64    `json:"start_ms"`
	EndMS      int64    `json:"end_ms"`
	Err        string   `json:"err,omitempty"`
	RecoveryMS int64    `json:"recovery_ms"`
	Outages    int      `json:"outages"`
}

type jsonOutage struct {
	Workload string `json:"workload"`
	StartMS  int64  `json:"start_ms"`
	EndMS    int64  `json:"end_ms"`
	LengthMS int64  `json:"length_ms"`
	Fault    int    `json:"fault"`
	Open     bool   `json:"open,omitempty"`
}

type jsonDouble struct {
	AtMS     int64    `json:"at_ms"`
	Workload string   `json:"workload"`
	Nodes    []string `json:"nodes"`
}

type jsonRegress struct {
	AtMS     int64  `json:"at_ms"`
	Workload string `json:"workload"`
	Node     string `json:"node"`
	From     int64  `json:"from"`
	To       int64  `json:"to"`
}

type jsonMismatch struct {
	AtMS     int64  `json:"at_ms"`
	Workload string `json:"workload"`
	Node     string `json:"node"`
	Counter  int64  `json:"counter"`
	Got      string `json:"got"`
	Want     string `json:"want"`
}

type jsonEvent struct {
	AtMS int64  `json:"at_ms"`
	Node string `json:"node"`
	What string `json:"what"`
}

func ms(d time.Duration) int64   { return d.Milliseconds() }
func dur(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

func mapSlice[T, U any](in []T, f func(T) U) []U {
	if in == nil {
		return nil
	}
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

func toJSONOutage(o Outage) jsonOutage {
	return jsonOutage{Workload: o.Workload, StartMS: ms(o.Start), EndMS: ms(o.End), LengthMS: ms(o.End - o.Start), Fault: o.Fault, Open: o.Open}
}

func fromJSONOutage(o jsonOutage) Outage {
	return Outage{Workload: o.Workload, Start: dur(o.StartMS), End: dur(o.EndMS), Fault: o.Fault, Open: o.Open}
}

func toJSONEvent(e Event) jsonEvent   { return jsonEvent{AtMS: ms(e.At), Node: e.Node, What: e.What} }
func fromJSONEvent(e jsonEvent) Event { return Event{At: dur(e.AtMS), Node: e.Node, What: e.What} }

// MarshalJSON writes the report with durations in milliseconds.
func (r Report) MarshalJSON() ([]byte, error) {
	j := jsonReport{
		Line:          r.Line(),
		Seed:          r.Seed,
		DurationMS:    ms(r.Duration),
		MaxRecoveryMS: ms(r.MaxRecovery),
		Problems:      r.Problems(),
		Kinds: mapSlice(r.KindStats(), func(s KindStat) jsonKind {
			return jsonKind{Kind: s.Kind, Faults: s.Faults, Outages: s.Outages, Caused: s.Caused, MedianMS: ms(s.Median), P95MS: ms(s.P95), MaxMS: ms(s.Max)}
		}),
		Faults: mapSlice(r.Faults, func(f FaultResult) jsonFault {
			return jsonFault{Kind: f.Kind, Nodes: f.Nodes, Workload: f.Workload, AtMS: ms(f.At), ForMS: ms(f.For), StartMS: ms(f.Start), EndMS: ms(f.End), Err: f.Err, RecoveryMS: ms(f.Recovery), Outages: f.Outages}
		}),
		Outages:     mapSlice(r.Outages, toJSONOutage),
		Unrecovered: mapSlice(r.Unrecovered, toJSONOutage),
		DoubleCopies: mapSlice(r.DoubleCopies, func(d DoubleCopy) jsonDouble {
			return jsonDouble{AtMS: ms(d.At), Workload: d.Workload, Nodes: d.Nodes}
		}),
		Regressions: mapSlice(r.Regressions, func(g Regression) jsonRegress {
			return jsonRegress{AtMS: ms(g.At), Workload: g.Workload, Node: g.Node, From: g.From, To: g.To}
		}),
		ChecksumMismatches: mapSlice(r.ChecksumMismatches, func(m Mismatch) jsonMismatch {
			return jsonMismatch{AtMS: ms(m.At), Workload: m.Workload, Node: m.Node, Counter: m.Counter, Got: m.Got, Want: m.Want}
		}),
		GivenUp:    r.GivenUp,
		Crashes:    mapSlice(r.Crashes, toJSONEvent),
		ErrorLines: mapSlice(r.ErrorLines, toJSONEvent),
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote (to the millisecond); the
// derived line, problems and kinds are recomputed, not read.
func (r *Report) UnmarshalJSON(b []byte) error {
	var j jsonReport
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Report{
		Seed:        j.Seed,
		Duration:    dur(j.DurationMS),
		MaxRecovery: dur(j.MaxRecoveryMS),
		Faults: mapSlice(j.Faults, func(f jsonFault) FaultResult {
			return FaultResult{
				Fault:    Fault{Kind: f.Kind, Nodes: f.Nodes, Workload: f.Workload, At: dur(f.AtMS), For: dur(f.ForMS), Start: dur(f.StartMS), End: dur(f.EndMS), Err: f.Err},
				Recovery: dur(f.RecoveryMS), Outages: f.Outages,
			}
		}),
		Outages:     mapSlice(j.Outages, fromJSONOutage),
		Unrecovered: mapSlice(j.Unrecovered, fromJSONOutage),
		DoubleCopies: mapSlice(j.DoubleCopies, func(d jsonDouble) DoubleCopy {
			return DoubleCopy{At: dur(d.AtMS), Workload: d.Workload, Nodes: d.Nodes}
		}),
		Regressions: mapSlice(j.Regressions, func(g jsonRegress) Regression {
			return Regression{At: dur(g.AtMS), Workload: g.Workload, Node: g.Node, From: g.From, To: g.To}
		}),
		ChecksumMismatches: mapSlice(j.ChecksumMismatches, func(m jsonMismatch) Mismatch {
			return Mismatch{At: dur(m.AtMS), Workload: m.Workload, Node: m.Node, Counter: m.Counter, Got: m.Got, Want: m.Want}
		}),
		GivenUp:    j.GivenUp,
		Crashes:    mapSlice(j.Crashes, fromJSONEvent),
		ErrorLines: mapSlice(j.ErrorLines, fromJSONEvent),
	}
	return nil
}
