package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// clusterDemo is the README's demo: three nodes running crfailoverd as a
// cluster, the counter checkpointed every second on n1, n1 power-cut, and
// the counter serving again from a peer with its state.
func clusterDemo(ctx context.Context, cfg testbed.Config, keep bool) (err error) {
	b, err := testbed.Up(ctx, cfg, 3, os.Stdout)
	if err != nil {
		return err
	}
	if !keep {
		defer func() {
			if derr := testbed.Down(context.Background(), cfg, os.Stdout); derr != nil && err == nil {
				err = derr
			}
		}()
	}
	bin := filepath.Join(cfg.Dir, "crfailoverd")
	fmt.Println("demo: building crfailoverd")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./crfailoverd")
	build.Dir, build.Stdout, build.Stderr = cfg.ModuleDir, os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build crfailoverd: %w", err)
	}
	fmt.Println("demo: starting crfailoverd on n1, n2, n3 (gossip, Raft, mutual TLS)")
	if _, err := b.StartCluster(ctx, bin); err != nil {
		return err
	}
	if cfg.Kubelet {
		fmt.Println("demo: running the counter on n1 as a static pod from the user's manifest (kubelet), checkpointed every second through kubelet's API, replicated to a peer")
	} else {
		fmt.Println("demo: running the counter on n1, checkpointed every second, replicated to a peer")
	}
	if err := b.RunProtectedCounter(ctx, "n1", true); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	n2, _ := b.Node("n2")
	show(ctx, bin, "members", n2.DaemonSocket())
	show(ctx, bin, "workloads", n2.DaemonSocket())

	r, err := b.PowerCutFailover(ctx, "n1", "n2", os.Stdout)
	if err != nil {
		return err
	}
	show(ctx, bin, "members", n2.DaemonSocket())
	show(ctx, bin, "workloads", n2.DaemonSocket())
	fmt.Printf("\nfailover: interval_ms=1000 detect_ms=%d downtime_ms=%d counter_lost=%d (counter %d before the cut, %d on %s after)\n",
		r.Detect.Milliseconds(), r.Downtime.Milliseconds(), r.Lost(), r.CounterLast, r.CounterAfter, r.ServedOn)
	if r.Lost() > 20 {
		return fmt.Errorf("the counter lost %d ticks of state", r.Lost())
	}
	fmt.Printf("the counter went on from its state on %s after n1 lost power\n", r.ServedOn)
	if keep {
		fmt.Printf("the bed stays up: %s status --socket %s; go run ./crfailoverd/cmd/nodebed down\n", bin, n2.DaemonSocket())
	}
	return nil
}

func show(ctx context.Context, bin, what, socket string) {
	fmt.Printf("\n$ crfailoverd %s\n", what)
	cmd := exec.CommandContext(ctx, bin, what, "--socket", socket)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	_ = cmd.Run()
}
