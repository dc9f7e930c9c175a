package timeline

import (
	"image"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
)

// synthetic is a 2-minute soak on three nodes: a power cut of n1 moves w1
// to n2 (with a double copy and a regression on the way), a partition of
// n3 and a leader kill the runner did not fill in.
func synthetic() soak.Input {
	in := soak.Input{
		Seed:      7,
		Duration:  2 * time.Minute,
		Workloads: []string{"w1", "w2"},
		Faults: []soak.Fault{
			{Kind: soak.PowerCut, Nodes: []string{"n1"}, At: 20 * time.Second, For: 8 * time.Second, Start: 20 * time.Second, End: 29 * time.Second},
			{Kind: soak.Partition, Nodes: []string{"n3"}, At: 50 * time.Second, For: 10 * time.Second},
			{Kind: soak.LeaderKill, Workload: 1, At: 70 * time.Second, For: 6 * time.Second},
		},
		RegressionBound: 20,
	}
	for at := time.Duration(0); at < in.Duration; at += 100 * time.Millisecond {
		owner := "n1"
		if at >= 25*time.Second {
			owner = "n2"
		}
		c := int64(at / (100 * time.Millisecond))
		switch {
		case at >= 20*time.Second && at < 25*time.Second:
			in.Samples = append(in.Samples, soak.Sample{At: at, Workload: "w1"})
		case at == 25*time.Second:
			in.Samples = append(in.Samples, soak.Sample{At: at, Workload: "w1", Copies: []soak.Copy{
				{Node: "n1", Running: true, Serving: true, Counter: c},
				{Node: "n2", Running: true, Serving: true, Counter: c - 100},
			}})
		default:
			in.Samples = append(in.Samples, soak.Sample{At: at, Workload: "w1", Copies: []soak.Copy{{Node: owner, Running: true, Serving: true, Counter: c}}})
		}
		in.Samples = append(in.Samples, soak.Sample{At: at, Workload: "w2", Copies: []soak.Copy{{Node: "n3", Running: true, Serving: true, Counter: c}}})
	}
	return in
}

// scheduled is a 10-minute soak on five nodes from a real schedule: each
// of three workloads moves to the next free node 3 s after a fault hits
// its owner.
func scheduled() soak.Input {
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	in := soak.Input{Seed: 3, Duration: 10 * time.Minute, Workloads: []string{"counter", "counter2", "big"}}
	in.Faults = soak.Schedule(soak.ScheduleConfig{Seed: 3, Duration: in.Duration, Nodes: nodes})
	for i := range in.Faults {
		f := &in.Faults[i]
		if f.Kind == soak.LeaderKill {
			f.Nodes = []string{nodes[f.Workload], nodes[4]}
		}
		f.Start, f.End = f.At, f.At+f.For
	}
	hit := func(n string, at time.Duration) bool {
		for _, f := range in.Faults {
			if at >= f.Start && at < f.End && slices.Contains(f.Nodes, n) {
				return true
			}
		}
		return false
	}
	owner := []string{"n1", "n2", "n3"}
	downAt := []time.Duration{-1, -1, -1}
	for at := time.Duration(0); at < in.Duration; at += 100 * time.Millisecond {
		for wi, w := range in.Workloads {
			if hit(owner[wi], at) && downAt[wi] < 0 {
				downAt[wi] = at
			}
			if downAt[wi] >= 0 && at-downAt[wi] >= 3*time.Second {
				for _, n := range nodes {
					if !hit(n, at) && n != owner[wi] {
						owner[wi], downAt[wi] = n, -1
						break
					}
				}
			}
			sm := soak.Sample{At: at, Workload: w}
			if downAt[wi] < 0 {
				sm.Copies = []soak.Copy{{Node: owner[wi], Running: true, Serving: true, Counter: int64(at / (100 * time.Millisecond))}}
			}
			in.Samples = append(in.Samples, sm)
		}
	}
	return in
}

func TestDraw(t *testing.T) {
	full := synthetic()
	cases := []struct {
		name string
		in   soak.Input
	}{
		{"synthetic", full},
		{"empty", soak.Input{}},
		{"faults only", soak.Input{Duration: time.Minute, Faults: full.Faults}},
		{"scheduled", scheduled()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := soak.Check(tc.in)
			t.Logf("%s\n%s", r.Line(), r.KindTable())
			path := filepath.Join(t.TempDir(), "timeline.png")
			if err := Draw(path, tc.in, r); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cfg, format, err := image.DecodeConfig(f)
			if err != nil {
				t.Fatalf("decode %s: %v", path, err)
			}
			if format != "png" || cfg.Width != Width || cfg.Height != Height {
				t.Fatalf("got a %s of %dx%d, want a png of %dx%d", format, cfg.Width, cfg.Height, Width, Height)
			}
			// CRF_TIMELINE_OUT=dir keeps the images to look at.
			if out := os.Getenv("CRF_TIMELINE_OUT"); out != "" {
				b, _ := os.ReadFile(path)
				_ = os.WriteFile(filepath.Join(out, strings.ReplaceAll(tc.name, " ", "-")+".png"), b, 0o644)
			}
		})
	}
}

func TestDrawBadPath(t *testing.T) {
	if err := Draw(filepath.Join(t.TempDir(), "missing", "x.png"), soak.Input{}, soak.Report{}); err == nil {
		t.Fatal("Draw into a missing directory: no error")
	}
}

var _ = png.Decode // registers the PNG format for image.DecodeConfig
