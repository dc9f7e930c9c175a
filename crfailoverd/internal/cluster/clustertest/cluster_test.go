package clustertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

var counter = store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}

// protect starts an original copy of id on node, waits until every node
// sees it registered there at epoch 1, and checkpoints it until a replica
// is recorded on another node; it returns that holder.
func protect(t *testing.T, c *Cluster, node string, id store.Workload) string {
	t.Helper()
	n := c.Node(node)
	n.Fake.StartOriginal(id)
	c.AgreeOn(20*time.Second, id, node, 1, "running")
	return replicated(t, c, node, id, func(holders []string) (string, bool) {
		for _, h := range holders {
			if h != node {
				return h, true
			}
		}
		return "", false
	})
}

// replicated checkpoints id on node once a second (as the agent's worker
// would) until the newest checkpoint's holders satisfy want, and returns
// what want picked.
func replicated(t *testing.T, c *Cluster, node string, id store.Workload, want func(holders []string) (string, bool)) string {
	t.Helper()
	n := c.Node(node)
	var picked string
	var e store.Entry
	var taken time.Time
	c.Eventually(20*time.Second, "a checkpoint of "+id.String()+" replicated as wanted", func() (bool, string) {
		if time.Since(taken) > time.Second {
			var err error
			if e, err = n.Fake.Checkpoint(id, 64<<10); err != nil {
				return false, err.Error()
			}
			taken = time.Now()
		}
		for _, w := range n.Cluster().Workloads() {
			if w.ID == id.String() && w.Newest != nil {
				if w.Newest.Seq != e.Seq {
					return false, fmt.Sprintf("newest recorded #%d, taken #%d", w.Newest.Seq, e.Seq)
				}
				var ok bool
				picked, ok = want(w.Newest.Holders)
				return ok, fmt.Sprintf("newest #%d held by %v", w.Newest.Seq, w.Newest.Holders)
			}
		}
		return false, "no checkpoint recorded"
	})
	return picked
}

func TestPowerCutFailover(t *testing.T) {
	c := New(t, Options{})
	holder := protect(t, c, "n1", counter)
	start := time.Now()
	c.Node("n1").PowerCut()
	c.AgreeOn(30*time.Second, counter, holder, 2, "running")
	t.Logf("failover from n1 to %s in %s", holder, time.Since(start).Round(time.Millisecond))
	rs := c.Node(holder).Fake.Restores()
	if len(rs) != 1 || rs[0].Epoch != 2 || rs[0].Entry.Workload != counter {
		t.Fatalf("restores on %s: %+v, want one of %s at epoch 2", holder, rs, counter)
	}
	if string(rs[0].Config) == "" {
		t.Fatal("the placement carried no restore configuration")
	}
	// The cut node comes back: it must not run the workload again, and it
	// sees the new owner.
	n1 := c.Node("n1")
	n1.Start()
	c.Eventually(30*time.Second, "n1 rejoined and sees the new owner", func() (bool, string) {
		e := n1.View().Workloads[counter.String()]
		return n1.View().Connected && e.Owner == holder && e.Epoch == 2, fmt.Sprintf("n1 view: connected=%t %+v", n1.View().Connected, e)
	})
	if got := c.LiveCopies(counter); !slices.Equal(got, []string{holder + "@2"}) {
		t.Fatalf("live copies after n1 rejoined: %v", got)
	}
}

func TestPartitionFencesTheCutOffOwner(t *testing.T) {
	c := New(t, Options{})
	holder := protect(t, c, "n1", counter)
	n1 := c.Node("n1")
	cut := time.Now()
	n1.Switch.Cut()
	c.Eventually(10*time.Second, "n1 fenced and its copy stopped", func() (bool, string) {
		v := n1.View()
		_, running := n1.Fake.Copies()[counter]
		return v.Fenced && !running, fmt.Sprintf("fenced=%t (%s) copy running=%t", v.Fenced, v.FenceWhy, running)
	})
	fencedAfter := time.Since(cut)
	if fencedAfter > Lease {
		t.Errorf("n1 stopped its copy %s after the cut, later than the %s lease", fencedAfter, Lease)
	}
	// The majority moves it once the fence delay has passed.
	var majority []*Node
	for _, n := range c.Nodes {
		if n != n1 {
			majority = append(majority, n)
		}
	}
	c.Eventually(30*time.Second, "the majority placed and restored it", func() (bool, string) {
		for _, n := range majority {
			e := n.View().Workloads[counter.String()]
			if e.Owner != holder || e.Epoch != 2 || e.Status != "running" {
				return false, fmt.Sprintf("%s sees %+v", n.Name, e)
			}
		}
		return true, ""
	})
	t.Logf("n1 fenced %s after the cut; %s serves at epoch 2 after %s", fencedAfter.Round(time.Millisecond), holder, time.Since(cut).Round(time.Millisecond))
	n1.Switch.Heal()
	c.AgreeOn(30*time.Second, counter, holder, 2, "running")
	if v := n1.View(); v.Fenced {
		t.Fatalf("n1 still fenced after the heal: %s", v.FenceWhy)
	}
}

func TestMigrationForwardedToTheOwner(t *testing.T) {
	c := New(t, Options{})
	protect(t, c, "n1", counter)
	// Asked on n3, carried out by n1, restored on n2.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seq, downtime, err := c.Node("n3").Cluster().Migrate(ctx, counter.String(), "n2")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migrated #%d, downtime %s", seq, downtime)
	c.AgreeOn(10*time.Second, counter, "n2", 2, "running")
	rs := c.Node("n2").Fake.Restores()
	if len(rs) != 1 || rs[0].Entry.Seq != seq {
		t.Fatalf("n2 restored %+v, want checkpoint #%d", rs, seq)
	}
	// Refusals name what was refused.
	for _, tc := range []struct{ to, want string }{
		{"n2", "already runs on n2"},
		{"n9", "not an alive member"},
	} {
		_, _, err := c.Node("n1").Cluster().Migrate(ctx, counter.String(), tc.to)
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("migrate to %s: %v, want an error saying %q", tc.to, err, tc.want)
		}
	}
	if _, _, err := c.Node("n1").Cluster().Migrate(ctx, "default/nothing/here", "n3"); err == nil || !contains(err.Error(), "no workload") {
		t.Errorf("migrate of an unknown workload: %v", err)
	}
}

func TestLeaderChangeKeepsTheState(t *testing.T) {
	c := New(t, Options{})
	old := c.Leader()
	owner := "n1"
	if old.Name == owner {
		owner = "n2"
	}
	holder := protect(t, c, owner, counter)
	old.PowerCut()
	c.Eventually(20*time.Second, "a new leader", func() (bool, string) {
		l := c.Leader()
		return l != nil && l != old, "no new leader yet"
	})
	// The workload stays where it is: its owner is alive.
	c.AgreeOn(10*time.Second, counter, owner, 1, "running")
	// The new leader still fails over: cut the owner.
	if holder == old.Name {
		// The only replica was on the cut leader: checkpoint again so a
		// live node holds one.
		holder = replicated(t, c, owner, counter, func(holders []string) (string, bool) {
			for _, h := range holders {
				if h != owner && h != old.Name {
					return h, true
				}
			}
			return "", false
		})
	}
	old.Start()
	c.Eventually(30*time.Second, "the old leader rejoined", func() (bool, string) {
		return old.View().Connected, "not connected"
	})
	c.Node(owner).PowerCut()
	// No checkpoint was taken since: the newest one's other holder gets it.
	c.AgreeOn(30*time.Second, counter, holder, 2, "running")
}

func TestApplicationFailureRestoredOnAPeer(t *testing.T) {
	c := New(t, Options{})
	holder := protect(t, c, "n1", counter)
	if err := c.Node("n1").Fake.Fail(counter, "liveness probe failed 3 times"); err != nil {
		t.Fatal(err)
	}
	c.AgreeOn(20*time.Second, counter, holder, 2, "running")
}

func TestFailedRestoreMovesToTheNextCandidate(t *testing.T) {
	c := New(t, Options{ReplicationFactor: 2})
	protect(t, c, "n1", counter)
	// Both peers hold it; make the first placement fail.
	replicated(t, c, "n1", counter, func(holders []string) (string, bool) { return "", len(holders) == 3 })
	for _, n := range c.Nodes[1:] {
		n.Fake.FailNextRestore(errors.New("injected: CRIU restore failed"))
	}
	c.Node("n1").PowerCut()
	c.Eventually(40*time.Second, "restored on a peer after a failed attempt", func() (bool, string) {
		for _, n := range c.Running() {
			e := n.View().Workloads[counter.String()]
			// The first placement (epoch 2) failed: the one that works is a
			// later one.
			if e.Status != "running" || e.Owner == "n1" || e.Epoch < 3 {
				return false, fmt.Sprintf("%s sees %+v", n.Name, e)
			}
		}
		return len(c.LiveCopies(counter)) == 1, fmt.Sprintf("copies %v", c.LiveCopies(counter))
	})
	failed := 0
	for _, n := range c.Nodes[1:] {
		failed += n.Fake.FailedRestores()
	}
	if failed == 0 {
		t.Fatal("no restore failed: the injected failure was never met")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// The leader that committed a placement is lost while the target
// restores: the target reports to the new leader, and the migration that
// made the placement completes.
func TestLeaderLostInTheMiddleOfAPlacement(t *testing.T) {
	c := New(t, Options{})
	leader := c.Leader()
	var others []string
	for _, n := range c.Nodes {
		if n != leader {
			others = append(others, n.Name)
		}
	}
	owner, target := others[0], others[1]
	protect(t, c, owner, counter)
	c.Node(target).Fake.SlowRestores(1500 * time.Millisecond)
	type result struct {
		seq uint64
		err error
	}
	done := make(chan result, 1)
	from := c.Node(owner).Cluster()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		seq, _, err := from.Migrate(ctx, counter.String(), target)
		done <- result{seq, err}
	}()
	c.Eventually(20*time.Second, "placed on "+target, func() (bool, string) {
		e := c.Node(target).View().Workloads[counter.String()]
		return e.Owner == target && e.Status == "restoring", fmt.Sprintf("%+v", e)
	})
	leader.PowerCut()
	r := <-done
	if r.err != nil {
		t.Fatalf("migration across a leader change: %v", r.err)
	}
	// The target's restore report was committed after the old leader was
	// gone, so by the new one.
	c.AgreeOn(10*time.Second, counter, target, 2, "running")
	if c.Leader() == nil {
		t.Fatal("no leader after the cut")
	}
}
