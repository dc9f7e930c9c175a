package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

const soakUsage = `Usage: nodebed soak [-nodes 5] [-duration 10m] [-seed S] [-kinds k,k] [-kubelet] [-out DIR] [-keep]

The nemesis soak (issue 15): a bed of -nodes nodes (each daemon's data
directory on a tmpfs of its own), crfailoverd clustered on every node with
replication factor 2, three workloads (counter-a on n1, counter-b on n2,
the 100 MB big-state app on n3), checkpointed every second. Faults drawn
from the seed hit the bed for -duration: power cuts, partitions, one-way
links, daemon kills and pauses, full disks, a leader killed during a
failover; never more than a minority down at once. An observer samples
every node's CRI and every app's HTTP every 100 ms; the checker reports
double copies, recovery per fault, counter regressions, checksum
mismatches, given-up workloads, crashes and error-level log lines.

Writes DIR/report.json, DIR/timeline.png and DIR/logs/; prints
"E2E soak: ..." and the recovery per fault kind; exits 1 on any problem.

Flags:
`

func soakCmd(ctx context.Context, cfg testbed.Config, args []string) (err error) {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), soakUsage); fs.PrintDefaults() }
	nodes := fs.Int("nodes", 5, "number of nodes (at least 3; 5 lets two faults run at once)")
	duration := fs.Duration("duration", 10*time.Minute, "how long faults are drawn (recovery is waited for after)")
	seed := fs.Int64("seed", time.Now().UnixNano()%1000, "seed of the fault schedule")
	kinds := fs.String("kinds", "", "fault kinds to draw from, comma-separated (default all: "+kindList()+")")
	kubelet := fs.Bool("kubelet", cfg.Kubelet, "every node runs a real kubelet (static pods; a power cut reboots it too)")
	out := fs.String("out", "", "output directory (default soak-SEED/)")
	keep := fs.Bool("keep", false, "leave the bed up afterwards")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("soak: unexpected argument %q (see nodebed soak -h)", fs.Arg(0))
	}
	var ks []soak.Kind
	for _, k := range strings.Split(*kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			ks = append(ks, soak.Kind(k))
		}
	}
	for _, k := range ks {
		if !containsKind(k) {
			return fmt.Errorf("soak: -kinds: unknown kind %q (want %s)", k, kindList())
		}
	}
	if *out == "" {
		*out = fmt.Sprintf("soak-%d", *seed)
	}
	if *out, err = filepath.Abs(*out); err != nil {
		return err
	}
	cfg.Kubelet, cfg.DataTmpfs = *kubelet, testbed.SoakDataTmpfs

	fmt.Println("soak: waiting for the bed's lock")
	unlock, err := testbed.LockBed(cfg, true)
	if err != nil {
		return err
	}
	defer unlock()
	bin := filepath.Join(cfg.Dir, "crfailoverd")
	fmt.Println("soak: building crfailoverd")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./crfailoverd")
	build.Dir, build.Stdout, build.Stderr = cfg.ModuleDir, os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build crfailoverd: %w", err)
	}
	b, err := testbed.Up(ctx, cfg, *nodes, os.Stdout)
	if err != nil {
		return err
	}
	if !*keep {
		defer func() {
			if derr := testbed.Down(context.Background(), cfg, os.Stdout); derr != nil && err == nil {
				err = derr
			}
		}()
	}
	r, _, err := b.Soak(ctx, testbed.SoakConfig{Seed: *seed, Duration: *duration, Kinds: ks, Kubelet: *kubelet, Out: *out, Bin: bin}, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("\nE2E soak: %s flavor=%s\n\n%s\n", r.Line(), b.Flavor(), r.KindTable())
	ps := r.Problems()
	for _, p := range ps {
		fmt.Println("PROBLEM:", p)
	}
	fmt.Printf("report %s/report.json, timeline %s/timeline.png, logs %s/logs/\n", *out, *out, *out)
	if *keep {
		fmt.Println("the bed stays up: go run ./crfailoverd/cmd/nodebed down")
	}
	if len(ps) > 0 {
		return errors.New("soak: " + fmt.Sprint(len(ps)) + " problem(s)")
	}
	return nil
}

func kindList() string {
	var s []string
	for _, k := range soak.Kinds {
		s = append(s, string(k))
	}
	return strings.Join(s, ",")
}

func containsKind(k soak.Kind) bool {
	for _, x := range soak.Kinds {
		if x == k {
			return true
		}
	}
	return false
}
