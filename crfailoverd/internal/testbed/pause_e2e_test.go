package testbed

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// copySample is what one look at every node found of the counter.
type copySample struct {
	at      time.Time
	serving map[string]bool // the counter answers HTTP on the node
	running map[string]bool // the node's CRI lists a running counter container
}

func (s copySample) servingNodes() []string {
	var out []string
	for n, ok := range s.serving {
		if ok {
			out = append(out, n)
		}
	}
	return out
}

// sampleCopies looks at every node at once: the counter's HTTP answer and
// the CRI's running counter containers.
func sampleCopies(ctx context.Context, b *Bed, cris map[string]*CRI) copySample {
	s := copySample{at: time.Now(), serving: map[string]bool{}, running: map[string]bool{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range b.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, herr := b.Counter(cctx, n.Name)
			running := false
			if resp, err := cris[n.Name].Runtime.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
				State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}}); err == nil {
				for _, c := range resp.Containers {
					running = running || c.GetMetadata().GetName() == "counter"
				}
			}
			mu.Lock()
			s.serving[n.Name], s.running[n.Name] = herr == nil, running
			mu.Unlock()
		}()
	}
	wg.Wait()
	return s
}

// TestE2EDaemonPause: the counter owner's daemon is frozen (SIGSTOP) past
// its lease, the node and its containers staying up. The fence guard must
// kill the old copy before the cluster restores the counter elsewhere:
// never two serving copies. After SIGCONT the old daemon rejoins and does
// not start a copy again.
func TestE2EDaemonPause(t *testing.T) {
	c := requireE2E(t)
	b := upBed(t, c, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	bin := buildDaemon(t, c)
	pids, err := b.StartCluster(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	const owner = "n1"
	if err := b.RunProtectedCounter(ctx, owner, true); err != nil {
		t.Fatal(err)
	}
	on, _ := b.Node(owner)
	waitLog(ctx, t, on.DaemonLog(), "fence guard renewing")
	waitProtected(ctx, t, b, owner, time.Now())
	before, err := b.ClusterWorkload(ctx, "n2", CounterWorkload)
	if err != nil {
		t.Fatal(err)
	}
	cris := map[string]*CRI{}
	for _, n := range b.Nodes() {
		cl, err := DialCRI(n.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		cris[n.Name] = cl
	}

	// The last answer of the old copy before the freeze.
	var lastServed time.Time
	if err := poll(ctx, 10*time.Second, "the counter to answer on "+owner, func() (bool, error) {
		s := sampleCopies(ctx, b, cris)
		if s.serving[owner] {
			lastServed = s.at
		}
		return s.serving[owner], nil
	}); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := Signal(pids[owner], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = Signal(pids[owner], syscall.SIGCONT)
		}
	}()
	t.Logf("daemon of %s (pid %d) stopped", owner, pids[owner])

	var (
		twoCopies, oldAfterNew int
		oldGone, newServes     time.Time
		newNode                string
	)
	err = poll(ctx, 90*time.Second, "the counter to serve again from a peer", func() (bool, error) {
		s := sampleCopies(ctx, b, cris)
		serving := s.servingNodes()
		if len(serving) > 1 {
			twoCopies++
			t.Errorf("%s: two serving copies: %v", s.at.Format(time.StampMilli), serving)
		}
		if s.serving[owner] {
			lastServed = s.at
		}
		if oldGone.IsZero() && !s.serving[owner] && !s.running[owner] {
			oldGone = s.at
			t.Logf("the old copy on %s is gone %s after the freeze", owner, oldGone.Sub(stopped).Round(time.Millisecond))
		}
		for _, n := range serving {
			if n == owner {
				continue
			}
			if newServes.IsZero() {
				newServes, newNode = s.at, n
				t.Logf("the counter serves again on %s %s after the freeze", n, newServes.Sub(stopped).Round(time.Millisecond))
			}
			if s.running[owner] || s.serving[owner] {
				oldAfterNew++
				t.Errorf("%s: the old copy on %s still lives (serving %v, running %v) while %s serves", s.at.Format(time.StampMilli), owner, s.serving[owner], s.running[owner], n)
			}
		}
		return !newServes.IsZero() && !oldGone.IsZero(), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !oldGone.Before(newServes) {
		t.Errorf("the old copy was gone at %s, the new one served at %s: want gone first", oldGone.Format(time.StampMilli), newServes.Format(time.StampMilli))
	}
	if n := countLog(t, on.DaemonLog(), "FENCE GUARD: killed"); n == 0 {
		t.Errorf("the fence guard on %s logged no kill", owner)
	}

	// SIGCONT: the old daemon rejoins and starts no copy again.
	if err := Signal(pids[owner], syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	a, err := b.Admin(owner)
	if err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 60*time.Second, owner+" back in the cluster, not fenced", func() (bool, error) {
		r, err := a.RaftPeers(ctx)
		return err == nil && r.Leader != "" && !r.Fenced, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Well past a discovery pass and a fence delay: the old node must not
	// start a copy, and there is always exactly one.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		s := sampleCopies(ctx, b, cris)
		if s.running[owner] || s.serving[owner] {
			t.Errorf("%s: the rejoined %s runs a copy again (serving %v, running %v)", s.at.Format(time.StampMilli), owner, s.serving[owner], s.running[owner])
			break
		}
		if len(s.servingNodes()) > 1 {
			twoCopies++
			t.Errorf("%s: two serving copies after the rejoin: %v", s.at.Format(time.StampMilli), s.servingNodes())
		}
	}
	after, err := b.ClusterWorkload(ctx, newNode, CounterWorkload)
	if err != nil {
		t.Fatal(err)
	}
	if after.Owner != newNode || after.Epoch <= before.Epoch {
		t.Errorf("the cluster's record: %s at epoch %d (before: %s at %d), want %s at a higher epoch", after.Owner, after.Epoch, before.Owner, before.Epoch, newNode)
	}
	if t.Failed() {
		if logs, err := os.ReadFile(on.DaemonLog()); err == nil {
			var guard []string
			for _, l := range strings.Split(string(logs), "\n") {
				if strings.Contains(l, "fence-guard") || strings.Contains(l, "FENCE") {
					guard = append(guard, l)
				}
			}
			t.Logf("fence guard lines of %s:\n%s", owner, strings.Join(guard, "\n"))
		}
	}
	line := fmt.Sprintf("E2E daemon-pause: runtime=%s copy_gone_ms=%d downtime_ms=%d two_copies=%d", b.Flavor(),
		oldGone.Sub(stopped).Milliseconds(), newServes.Sub(lastServed).Milliseconds(), twoCopies)
	if t.Failed() {
		t.Log(line)
		return
	}
	fmt.Println(line)
}
