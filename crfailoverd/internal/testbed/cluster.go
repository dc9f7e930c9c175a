package testbed

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
)

// CounterWorkload is the counter test app's workload name in crfailoverd.
const CounterWorkload = "default/counter/counter"

// Admin returns a client of crfailoverd's admin socket on node.
func (b *Bed) Admin(node string) (*admin.Client, error) {
	n, err := b.Node(node)
	if err != nil {
		return nil, err
	}
	return admin.NewClient(n.DaemonSocket()), nil
}

// StartCluster starts crfailoverd (binary bin) on every node, clustered
// (method cri, or kubelet on kubelet nodes; the bed's TLS and gossip key, extra lines in [cluster]),
// and waits until every node is an alive Raft member and there is a
// leader. It returns the daemons' process ids.
func (b *Bed) StartCluster(ctx context.Context, bin string, extra ...string) (map[string]int, error) {
	pids, _, err := b.startCluster(ctx, bin, nil, extra...)
	return pids, err
}

// startCluster is StartCluster with each node's configuration passed
// through edit (nil: as it is); it returns the configurations too.
func (b *Bed) startCluster(ctx context.Context, bin string, edit func(string) string, extra ...string) (map[string]int, map[string]string, error) {
	pids, configs := map[string]int{}, map[string]string{}
	nodes := b.Nodes()
	method := "cri"
	if b.cfg.Kubelet {
		method = "kubelet"
	}
	for _, n := range nodes {
		cfg, err := b.DaemonConfig(n.Name, method, "")
		if err != nil {
			return nil, nil, err
		}
		cl, err := b.ClusterConfig(n.Name, len(nodes), extra...)
		if err != nil {
			return nil, nil, err
		}
		configs[n.Name] = cfg + cl
		if edit != nil {
			configs[n.Name] = edit(configs[n.Name])
		}
		if pids[n.Name], err = b.StartDaemon(ctx, n.Name, bin, configs[n.Name]); err != nil {
			return nil, nil, err
		}
	}
	a, err := b.Admin(nodes[0].Name)
	if err != nil {
		return nil, nil, err
	}
	err = poll(ctx, 90*time.Second, fmt.Sprintf("%d alive members with a leader", len(nodes)), func() (bool, error) {
		ms, err := a.Members(ctx)
		if err != nil {
			return false, err
		}
		alive, leader := 0, false
		for _, m := range ms {
			if m.Status == "alive" && m.Raft != "" {
				alive++
			}
			leader = leader || m.Leader
		}
		return alive == len(nodes) && leader, nil
	})
	return pids, configs, err
}

// ClusterWorkload returns the cluster's record of a workload, asked on node.
func (b *Bed) ClusterWorkload(ctx context.Context, node, id string) (api.ClusterWorkload, error) {
	a, err := b.Admin(node)
	if err != nil {
		return api.ClusterWorkload{}, err
	}
	ws, err := a.Workloads(ctx)
	if err != nil {
		return api.ClusterWorkload{}, err
	}
	for _, w := range ws {
		if w.ID == id {
			return w, nil
		}
	}
	return api.ClusterWorkload{}, fmt.Errorf("no %s in the cluster yet", id)
}

// RunProtectedCounter runs the counter on node annotated for a checkpoint
// every second (with an HTTP probe on its port when probe is true) and
// waits until the cluster owns it with a checkpoint held by two nodes.
func (b *Bed) RunProtectedCounter(ctx context.Context, node string, probe bool) error {
	ann := map[string]string{"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "1"}
	if probe {
		ann["hitachienergy.com/cr_probe_port"] = fmt.Sprint(AppPort)
	}
	if err := b.RunCounter(ctx, node, ann); err != nil {
		return err
	}
	return poll(ctx, 60*time.Second, "the counter registered and replicated", func() (bool, error) {
		w, err := b.ClusterWorkload(ctx, node, CounterWorkload)
		if err != nil {
			return false, err
		}
		return w.Owner == node && w.Status == "running" && w.Newest != nil && len(w.Newest.Holders) >= 2 && b.TakenOver(node), nil
	})
}

// FailoverResult is what a power cut of the counter's node cost.
type FailoverResult struct {
	Cut          time.Time
	LastGood     time.Time     // last answer of the counter before the cut
	Detect       time.Duration // cut to the node declared dead
	Downtime     time.Duration // last answer before the cut to the first answer after the restore
	CounterLast  int64         // counter at that last answer
	CounterAfter int64         // counter at the first answer after the restore
	ServedOn     string
	EpochBefore  uint64
	Workload     api.ClusterWorkload // the cluster's record after the failover
}

// Lost is the state lost, in counter ticks (100 ms each).
func (r FailoverResult) Lost() int64 { return r.CounterLast - r.CounterAfter }

// PowerCutFailover power-cuts node (which runs the counter), and measures
// until the counter answers from another node: detection as seen by
// observer, downtime and state lost. Progress goes to log.
func (b *Bed) PowerCutFailover(ctx context.Context, node, observer string, log io.Writer) (FailoverResult, error) {
	var r FailoverResult
	if w, err := b.ClusterWorkload(ctx, observer, CounterWorkload); err == nil {
		r.EpochBefore = w.Epoch
	}
	// Read the counter every 50 ms until the cut.
	type sample struct {
		at time.Time
		v  int64
	}
	var last sample
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		v, err := b.Counter(cctx, node)
		cancel()
		if err == nil {
			last = sample{time.Now(), v}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last.at.IsZero() {
		return r, fmt.Errorf("the counter on %s does not answer", node)
	}
	r.LastGood, r.CounterLast = last.at, last.v
	fmt.Fprintf(log, "failover: counter on %s is %d; cutting the power of %s\n", node, last.v, node)
	r.Cut = time.Now()
	if err := b.KillNode(ctx, node); err != nil {
		return r, err
	}
	a, err := b.Admin(observer)
	if err != nil {
		return r, err
	}
	var detected, served time.Time
	err = poll(ctx, 90*time.Second, "the counter to serve again from a peer", func() (bool, error) {
		if detected.IsZero() {
			if ms, err := a.Members(ctx); err == nil {
				for _, m := range ms {
					if m.Name == node && m.Status == "dead" {
						detected = time.Now()
						fmt.Fprintf(log, "failover: %s declared dead after %s\n", node, detected.Sub(r.Cut).Round(time.Millisecond))
					}
				}
			}
		}
		if served.IsZero() {
			for _, n := range b.Nodes() {
				if n.Name == node {
					continue
				}
				cctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
				v, err := b.Counter(cctx, n.Name)
				cancel()
				if err == nil {
					served, r.ServedOn, r.CounterAfter = time.Now(), n.Name, v
					fmt.Fprintf(log, "failover: the counter answers again on %s at %d\n", n.Name, v)
					break
				}
			}
		}
		return !detected.IsZero() && !served.IsZero(), nil
	})
	if err != nil {
		return r, err
	}
	r.Detect, r.Downtime = detected.Sub(r.Cut), served.Sub(r.LastGood)
	r.Workload, err = b.ClusterWorkload(ctx, r.ServedOn, CounterWorkload)
	return r, err
}

// poll calls cond every 100 ms until it is true, within passes or ctx ends.
func poll(ctx context.Context, within time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
