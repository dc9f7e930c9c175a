package clustertest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// TestPlacementOnlyWhereItCanBeRestored: three nodes, the counter on n1
// replicated to n2 and n3; then n2's runtime stops being able to restore
// (its restore path turned off). The power cut of n1 places the counter
// on n3, though n2 holds the newest checkpoint too and comes first by
// name: placements_on_incapable=0. The workloads list shows the runtime
// the checkpoint needs. (A workload no node can restore is reported by the
// leader's decisions, tested in failover and leader: here a third node
// down would take the quorum with it.)
func TestPlacementOnlyWhereItCanBeRestored(t *testing.T) {
	var mu sync.Mutex
	caps := map[string]capability.Node{}
	for _, n := range []string{"n1", "n2", "n3"} {
		caps[n] = capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true,
			Restore: capability.RestoreCreate, CPUFlags: []string{"avx", "avx2", "sse4_2"}, Checked: time.Now()}
	}
	c := New(t, Options{ReplicationFactor: 2, Capabilities: func(node string) capability.Node {
		mu.Lock()
		defer mu.Unlock()
		return caps[node]
	}})
	c.Eventually(20*time.Second, "every node's capabilities recorded", func() (bool, string) {
		st := c.Node("n1").Cluster().State()
		for _, n := range []string{"n1", "n2", "n3"} {
			if st.Nodes[n] == nil || st.Nodes[n].Caps == nil {
				return false, n + " not recorded"
			}
		}
		return true, ""
	})
	c.Node("n1").Fake.StartOriginal(counter)
	c.AgreeOn(20*time.Second, counter, "n1", 1, "running")
	replicated(t, c, "n1", counter, func(holders []string) (string, bool) {
		return "", strings.Join(holders, ",") == "n1,n2,n3"
	})
	mu.Lock()
	off := caps["n2"]
	off.Restore, off.RestoreReason = capability.RestoreNone, "enable_experimental_restore_via_create is off"
	caps["n2"] = off
	mu.Unlock()
	c.Eventually(20*time.Second, "n2's change recorded on n3", func() (bool, string) {
		n := c.Node("n3").Cluster().State().Nodes["n2"]
		return n.Caps != nil && !n.Caps.CanRestore(), fmt.Sprintf("%+v", n.Caps)
	})
	c.Eventually(20*time.Second, "n2's gossiped capabilities say it cannot restore, on n3", func() (bool, string) {
		for _, m := range c.Node("n3").Cluster().Members() {
			if m.Name == "n2" {
				return strings.Contains(m.Capabilities, "containerd 2.1.9") && strings.Contains(m.Capabilities, "restore=none"), m.Capabilities
			}
		}
		return false, "n2 is no member"
	})
	for _, w := range c.Node("n3").Cluster().Workloads() {
		if w.ID == counter.String() && (w.Newest == nil || w.Newest.Runtime != "containerd 2.1.9" || w.AtRisk != "") {
			t.Fatalf("workload %+v: want the newest checkpoint's runtime, and not at risk (n3 can restore it)", w)
		}
	}
	c.Node("n1").PowerCut()
	c.AgreeOn(30*time.Second, counter, "n3", 2, "running")
	incapable := len(c.Node("n2").Fake.Restores())
	t.Logf("placements_on_incapable=%d restores_on_n3=%d", incapable, len(c.Node("n3").Fake.Restores()))
	if incapable != 0 {
		t.Fatalf("n2, which cannot restore, was given %d restores", incapable)
	}
}
