package testbed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// MixedRuntimes is the bed TestE2EMixedRuntimes is meant for: Debian's
// containerd 2.1.9, a 2.3.7 with restore through CreateContainer on, a
// 2.4.2 (restore only by the native path, if the daemon has it), a 2.3.7
// with restore left off, and CRI-O.
const MixedRuntimes = "n1=containerd,n2=containerd-2.3.7+restore,n3=containerd-2.4.2,n4=containerd-2.3.7,n5=crio"

// TestE2EMixedRuntimes clusters crfailoverd on a bed of mixed runtimes
// (CRF_BED_NODE_RUNTIMES, best MixedRuntimes), runs the protected counter
// on n1 and power-cuts its node twice. Which nodes can restore the
// counter's checkpoint is read from every daemon's own capabilities
// (status), not assumed: the counter must come back only on those, no
// placement or restore the cluster reports (every node's events, the
// workload's owner) may name another, and it must keep its state (GET
// /restore says restored, the counter not below its value before the
// cut). When no capable node is left for the second cut, the workload
// must show CANNOT MOVE naming every alive node and why.
func TestE2EMixedRuntimes(t *testing.T) {
	c := requireE2E(t)
	if len(c.Containerd.Nodes) == 0 {
		t.Skipf("set %s (e.g. %s) to fail over on a bed of mixed runtimes", EnvNodeRuntimes, MixedRuntimes)
	}
	if c.Kubelet {
		t.Skipf("the mixed-runtimes failover runs on nodes without kubelet (2.4's native path is for those): unset %s", EnvKubelet)
	}
	n := 0
	for name := range c.Containerd.Nodes {
		i, _ := strconv.Atoi(strings.TrimPrefix(name, "n"))
		n = max(n, i)
	}
	if n < 3 || c.nodeRuntime("n1").Runtime != RuntimeContainerd {
		t.Skipf("%s=%q: want at least 3 nodes (two power cuts keep a quorum of 5) and containerd on n1, e.g. %s", EnvNodeRuntimes, os.Getenv(EnvNodeRuntimes), MixedRuntimes)
	}
	bin := buildDaemon(t, c)
	b := upBed(t, c, n)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ensureNodeRestore(ctx, t, b)

	if _, err := b.StartCluster(ctx, bin, "replication_factor = 4"); err != nil {
		t.Fatal(err)
	}
	caps := waitCapabilities(ctx, t, b)
	var runtimes []string
	for _, node := range b.Nodes() {
		t.Logf("%s (%s): %s", node.Name, c.nodeRuntime(node.Name), caps[node.Name].Summary())
		checkDetection(t, b, node, caps[node.Name])
		runtimes = append(runtimes, node.Name+"="+caps[node.Name].Runtime.Name+"-"+caps[node.Name].Runtime.Version+"/"+string(caps[node.Name].Restore))
	}
	// What the counter's checkpoints need: n1's runtime and CPU, as the
	// cluster records them with each checkpoint.
	need := capability.Needs{Runtime: caps["n1"].Runtime, CPUFlags: caps["n1"].CPUFlags}
	capable := capableNodes(caps, need)
	if !capable["n1"] {
		t.Fatalf("n1 cannot restore its own checkpoints (%s): nothing to fail over to", caps["n1"].Summary())
	}
	t.Logf("nodes that can restore the counter's checkpoints (taken by %s): %s", need.Runtime, strings.Join(sortedSet(capable), ","))

	col := newPlacementWatch(b, capable)
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); col.run(watchCtx) }()
	defer func() { stopWatch(); wg.Wait() }()

	if err := b.RunProtectedCounter(ctx, "n1", true); err != nil {
		t.Fatal(err)
	}
	// The newest checkpoint records the runtime that took it, and with
	// replication_factor 4 every capable peer holds it: the cluster has
	// the capabilities the daemons report. Capable peers are chosen
	// first; the factor's other slots go to incapable ones (the copies
	// survive the owner's disk), so all five nodes hold it.
	err := poll(ctx, 60*time.Second, "the newest checkpoint recorded with its runtime and held by every capable node", func() (bool, error) {
		w, err := b.ClusterWorkload(ctx, "n1", CounterWorkload)
		if err != nil {
			return false, err
		}
		if w.Newest == nil || w.Newest.Runtime == "" {
			return false, fmt.Errorf("newest checkpoint %+v without a runtime", w.Newest)
		}
		for node := range capable {
			if !slices.Contains(w.Newest.Holders, node) {
				return false, fmt.Errorf("capable %s does not hold #%d (holders %v)", node, w.Newest.Seq, w.Newest.Holders)
			}
		}
		if len(w.Newest.Holders) != len(b.Nodes()) {
			return false, fmt.Errorf("#%d held by %v, want all %d nodes (factor 4)", w.Newest.Seq, w.Newest.Holders, len(b.Nodes()))
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Two power cuts: the counter's node, then the node it moved to. A
	// third would leave 2 of 5 voters, no quorum.
	owner, dead, failovers, restoredOK := "n1", map[string]bool{}, 0, true
	for cut := 1; cut <= 2; cut++ {
		var left []string
		for node := range capable {
			if node != owner && !dead[node] {
				left = append(left, node)
			}
		}
		observer := observerNode(b, capable, dead, owner)
		if len(left) == 0 {
			t.Logf("cut %d: no capable node is left but %s: its workload must show CANNOT MOVE", cut, owner)
			if err := b.KillNode(ctx, owner); err != nil {
				t.Fatal(err)
			}
			dead[owner] = true
			// The newest checkpoints were taken on owner.
			checkCannotMove(ctx, t, b, bin, observer, caps, capability.Needs{Runtime: caps[owner].Runtime, CPUFlags: caps[owner].CPUFlags}, dead)
			break
		}
		before, err := b.Counter(ctx, owner)
		if err != nil {
			t.Fatal(err)
		}
		// A peer must hold a checkpoint begun after before was read, or
		// "not below before" would not follow from a kept state.
		waitProtected(ctx, t, b, owner, time.Now())
		r, err := b.PowerCutFailover(ctx, owner, observer, testWriter{t})
		if err != nil {
			t.Fatalf("cut %d of %s (capable nodes left: %v): %v", cut, owner, left, err)
		}
		dead[owner] = true
		if !slices.Contains(left, r.ServedOn) {
			t.Errorf("cut %d: the counter came back on %s, want one of the capable %v", cut, r.ServedOn, left)
		}
		var ans struct {
			Restore bool  `json:"restore"`
			Counter int64 `json:"counter"`
		}
		served, _ := b.Node(r.ServedOn)
		if err := httpGet(ctx, served.AppURL()+"/restore", &ans); err != nil {
			t.Fatalf("GET /restore on %s: %v", r.ServedOn, err)
		}
		// The state is kept when the counter goes on from at least its
		// value two seconds before the cut (a fresh start counts from 0).
		// The app's own restore flag is only a hint: it notices a restore
		// by a pause of its clock, which a restore soon after the dump
		// hides.
		ok := r.CounterAfter >= before && before > 0
		if !ok {
			restoredOK = false
			t.Errorf("cut %d: on %s counter %d after the restore, %d two seconds before the cut, %d at the cut (restore flag %v): want not below %d", cut, r.ServedOn, r.CounterAfter, before, r.CounterLast, ans.Restore, before)
		}
		t.Logf("cut %d: %s -> %s detect_ms=%d downtime_ms=%d counter %d -> %d (lost %d ticks) restore=%v owner=%s epoch=%d",
			cut, owner, r.ServedOn, r.Detect.Milliseconds(), r.Downtime.Milliseconds(), r.CounterLast, r.CounterAfter, r.Lost(), ans.Restore, r.Workload.Owner, r.Workload.Epoch)
		failovers++
		owner = r.ServedOn
		if cut < 2 {
			waitProtected(ctx, t, b, owner, r.Cut)
		}
	}

	stopWatch()
	wg.Wait()
	col.collect(ctx) // what happened until now, on every node still alive
	bad, seen := col.result()
	for _, b := range bad {
		t.Errorf("placed on a node that cannot restore the counter: %s", b)
	}
	t.Logf("placements and restores seen: %s", strings.Join(seen, "; "))
	line := fmt.Sprintf("E2E mixed-runtimes: nodes=%d capable=%d placements_on_incapable=%d restored_ok=%v failovers=%d runtimes=%s",
		n, len(capable), len(bad), restoredOK, failovers, strings.Join(runtimes, ","))
	if t.Failed() {
		t.Log(line)
		return
	}
	fmt.Println(line)
}

// waitProtected waits until owner has taken a checkpoint of the counter
// after since and a peer holds it, as before the first cut (with no
// capable peer alive, replication sends it to the others, from which a
// capable node could fetch it).
func waitProtected(ctx context.Context, t *testing.T, b *Bed, owner string, since time.Time) {
	t.Helper()
	var w api.ClusterWorkload
	err := poll(ctx, 60*time.Second, "a checkpoint of the counter on "+owner+" held by a peer", func() (bool, error) {
		var err error
		if w, err = b.ClusterWorkload(ctx, owner, CounterWorkload); err != nil {
			return false, err
		}
		return w.Owner == owner && w.Status == "running" && w.Newest != nil && w.Newest.Created.After(since) && len(w.Newest.Holders) >= 2, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the counter is protected again on %s: #%d (%s) held by %v", owner, w.Newest.Seq, w.Newest.Runtime, w.Newest.Holders)
}

// capableNodes are the nodes whose capabilities can restore a checkpoint
// that needs need.
func capableNodes(caps map[string]capability.Node, need capability.Needs) map[string]bool {
	out := map[string]bool{}
	for node, cn := range caps {
		if ok, _ := capability.Compatible(cn, need); ok {
			out[node] = true
		}
	}
	return out
}

// observerNode is an alive node that will not be cut: an incapable one
// first (those keep running), else a capable one other than owner.
func observerNode(b *Bed, capable, dead map[string]bool, owner string) string {
	var fallback string
	for _, n := range b.Nodes() {
		switch {
		case dead[n.Name] || n.Name == owner:
		case !capable[n.Name]:
			return n.Name
		case fallback == "":
			fallback = n.Name
		}
	}
	return fallback
}

// checkCannotMove waits until the cluster (asked on observer) reports the
// counter unplaceable after its last capable node was cut, and checks
// that `crfailoverd workloads` says CANNOT MOVE and names every alive
// node with why it cannot take it.
func checkCannotMove(ctx context.Context, t *testing.T, b *Bed, bin, observer string, caps map[string]capability.Node, need capability.Needs, dead map[string]bool) {
	t.Helper()
	err := poll(ctx, 90*time.Second, "the counter reported unplaceable", func() (bool, error) {
		w, err := b.ClusterWorkload(ctx, observer, CounterWorkload)
		if err != nil {
			return false, err
		}
		return strings.Contains(w.LastError, "no node can restore it"), fmt.Errorf("owner %s status %s last error %q", w.Owner, w.Status, w.LastError)
	})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := b.Node(observer)
	out, err := exec.CommandContext(ctx, bin, "workloads", "--socket", n.DaemonSocket()).CombinedOutput()
	if err != nil {
		t.Fatalf("crfailoverd workloads on %s: %v: %s", observer, err, out)
	}
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, CounterWorkload+": CANNOT MOVE: ") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("crfailoverd workloads on %s has no CANNOT MOVE line for %s:\n%s", observer, CounterWorkload, out)
	}
	t.Logf("crfailoverd workloads on %s: %s", observer, line)
	for node, cn := range caps {
		if dead[node] {
			continue
		}
		ok, why := capability.Compatible(cn, need)
		if ok {
			t.Errorf("alive %s can restore the counter, yet it cannot move: %s", node, line)
			continue
		}
		if !strings.Contains(line, node+": "+why) {
			t.Errorf("the CANNOT MOVE line does not name %s with why (%q):\n%s", node, why, line)
		}
	}
}

// checkDetection checks that what a daemon found out about its runtime
// agrees with what the bed runs there.
func checkDetection(t *testing.T, b *Bed, node Node, cn capability.Node) {
	t.Helper()
	want := b.cfg.nodeRuntime(node.Name)
	switch {
	case want.Runtime == RuntimeCRIO:
		if cn.Runtime.Name != "cri-o" || !cn.CanRestore() {
			t.Errorf("%s runs CRI-O with restore on: its daemon reports %s", node.Name, cn.Summary())
		}
	case want.Containerd == "":
		if cn.Runtime.Name != "containerd" || cn.Runtime.Version != b.Versions().Containerd || cn.Restore != capability.RestoreCreate {
			t.Errorf("%s runs Debian's containerd %s, which restores through CreateContainer: its daemon reports %s", node.Name, b.Versions().Containerd, cn.Summary())
		}
	case CompareVersions(want.Containerd, "2.4.0") >= 0:
		// No CRI restore: the native path where the daemon has it, else none.
		if cn.Runtime.Version != want.Containerd || (cn.Restore != capability.RestoreNative && cn.Restore != capability.RestoreNone) {
			t.Errorf("%s runs containerd %s (no CRI restore): its daemon reports %s", node.Name, want.Containerd, cn.Summary())
		}
	default:
		on := containerdRestoreViaCreate(want.Containerd, true, b.cfg.containerdRestore(node.Name))
		if cn.Runtime.Version != want.Containerd || cn.CanRestore() != on || (on && cn.Restore != capability.RestoreCreate) {
			t.Errorf("%s runs containerd %s with restore via create %v: its daemon reports %s", node.Name, want.Containerd, on, cn.Summary())
		}
		if !on && !strings.Contains(cn.RestoreReason, "enable_experimental_restore_via_create") {
			t.Errorf("%s cannot restore, but its reason does not name the option that would let it: %q", node.Name, cn.RestoreReason)
		}
	}
}

// waitCapabilities waits until every daemon reports its runtime's
// capabilities (crfailoverd status --json: capabilities) and returns them
// by node.
func waitCapabilities(ctx context.Context, t *testing.T, b *Bed) map[string]capability.Node {
	t.Helper()
	caps := map[string]capability.Node{}
	err := poll(ctx, 60*time.Second, "every daemon's capabilities", func() (bool, error) {
		var missing []string
		for _, n := range b.Nodes() {
			if _, ok := caps[n.Name]; ok {
				continue
			}
			a, err := b.Admin(n.Name)
			if err != nil {
				return false, err
			}
			st, err := a.Status(ctx)
			if err != nil || st.Capabilities == nil || st.Capabilities.Checked.IsZero() {
				missing = append(missing, n.Name)
				continue
			}
			caps[n.Name] = *st.Capabilities
		}
		return len(missing) == 0, fmt.Errorf("no capabilities yet from %v", missing)
	})
	if err != nil {
		t.Fatal(err)
	}
	return caps
}

// placementWatch gathers, from every node's events and from the cluster's
// record of the counter, each node the counter was placed on or restored
// on, and those that cannot restore it.
type placementWatch struct {
	b       *Bed
	capable map[string]bool

	mu    sync.Mutex
	after map[string]uint64 // last event seen, by node
	seen  []string
	bad   []string
	owner string
}

func newPlacementWatch(b *Bed, capable map[string]bool) *placementWatch {
	return &placementWatch{b: b, capable: capable, after: map[string]uint64{}}
}

// run collects every 200 ms until ctx ends: the leader's placements are
// in its own events only, and a cut node's go with it.
func (p *placementWatch) run(ctx context.Context) {
	for {
		p.collect(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// collect reads the new events of every node that answers, and the
// counter's owner.
func (p *placementWatch) collect(ctx context.Context) {
	for _, n := range p.b.Nodes() {
		a, err := p.b.Admin(n.Name)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		p.mu.Lock()
		after := p.after[n.Name]
		p.mu.Unlock()
		evs, err := a.Events(cctx, after, false)
		if err == nil {
			if w, werr := p.b.ClusterWorkload(cctx, n.Name, CounterWorkload); werr == nil {
				p.note("owner", n.Name, w.Owner, fmt.Sprintf("epoch %d (%s)", w.Epoch, w.Reason))
			}
		}
		cancel()
		if err != nil {
			continue // a node that was cut
		}
		for _, e := range evs {
			p.mu.Lock()
			p.after[n.Name] = max(p.after[n.Name], e.Seq)
			p.mu.Unlock()
			if e.Workload != CounterWorkload {
				continue
			}
			switch e.Kind {
			case "failover":
				if to := e.Fields["to"]; to != "" {
					p.note("failover", n.Name, to, e.Message)
				}
			case "restore", "restore-failed":
				if on := e.Fields["node"]; on != "" {
					p.note(e.Kind, n.Name, on, e.Message)
				}
			}
		}
	}
}

// note records that reporter saw the counter placed (what) on node.
func (p *placementWatch) note(what, reporter, node, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if what == "owner" {
		if node == p.owner {
			return
		}
		p.owner = node
	}
	s := fmt.Sprintf("%s %s (seen on %s: %s)", what, node, reporter, detail)
	if slices.Contains(p.seen, s) {
		return
	}
	p.seen = append(p.seen, s)
	if !p.capable[node] {
		p.bad = append(p.bad, s)
	}
}

func (p *placementWatch) result() (bad, seen []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.bad), slices.Clone(p.seen)
}

func sortedSet(m map[string]bool) []string {
	var out []string
	for k, v := range m {
		if v {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// ensureNodeRestore turns restore through CreateContainer on where
// EnvNodeRuntimes asks for it ("+restore") and the node's containerd
// still has it off: the bed writes a node's containerd configuration with
// the bed-wide EnvContainerdRestore until node.go's containerdConfig asks
// Config.containerdRestore(node). The node is restarted with its option on
// (before any daemon runs); then every built 2.2/2.3 node's CRI must
// report what the bed asks.
func ensureNodeRestore(ctx context.Context, t *testing.T, b *Bed) {
	t.Helper()
	for _, node := range b.Nodes() {
		if node.Runtime != RuntimeContainerd || node.Containerd == "" || !containerdRestoreViaCreate(node.Containerd, true, true) {
			continue
		}
		want := containerdRestoreViaCreate(node.Containerd, true, b.cfg.containerdRestore(node.Name))
		on := liveRestoreViaCreate(ctx, t, node)
		if on == want {
			continue
		}
		if !want || b.cfg.Containerd.Restore {
			t.Fatalf("%s: containerd %s has restore via create %v, the bed asks %v", node.Name, node.Containerd, on, want)
		}
		t.Logf("%s: the bed started containerd %s without restore via create (node.go does not read %s's %s yet): restarting it with the option on", node.Name, node.Containerd, EnvNodeRuntimes, restoreSuffix)
		b.cfg.Containerd.Restore = true
		err := b.KillNode(ctx, node.Name)
		if err == nil {
			err = b.StartNode(ctx, node.Name)
		}
		b.cfg.Containerd.Restore = false
		if err != nil {
			t.Fatal(err)
		}
		if on := liveRestoreViaCreate(ctx, t, node); !on {
			t.Fatalf("%s: containerd %s still has restore via create off after its restart", node.Name, node.Containerd)
		}
	}
}

// liveRestoreViaCreate is enable_experimental_restore_via_create as the
// node's containerd reports it.
func liveRestoreViaCreate(ctx context.Context, t *testing.T, node Node) bool {
	t.Helper()
	cri, err := DialCRI(node.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cri.Close()
	on, err := restoreViaCreate(ctx, cri)
	if err != nil {
		t.Fatalf("%s: %v", node.Name, err)
	}
	return on
}

// buildDaemon builds crfailoverd for the bed (with the race detector under
// CRF_E2E_RACE, as the acceptance suite does).
func buildDaemon(t *testing.T, c Config) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "crfailoverd")
	args := []string{"build", "-o", bin}
	if os.Getenv("CRF_E2E_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./crfailoverd")...)
	cmd.Dir = c.ModuleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build crfailoverd: %v: %s", err, out)
	}
	return bin
}

// TestParseNodeRuntimesRestore: "+restore" turns restore through
// CreateContainer on for one built 2.2/2.3 node, and only there.
func TestParseNodeRuntimesRestore(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[string]NodeRuntime
		wantErr string
	}{
		{in: MixedRuntimes, want: map[string]NodeRuntime{
			"n1": {Runtime: RuntimeContainerd}, "n2": {Runtime: RuntimeContainerd, Containerd: "2.3.7", Restore: true},
			"n3": {Runtime: RuntimeContainerd, Containerd: "2.4.2"}, "n4": {Runtime: RuntimeContainerd, Containerd: "2.3.7"},
			"n5": {Runtime: RuntimeCRIO},
		}},
		{in: "n1=containerd-v2.3.7+restore", want: map[string]NodeRuntime{"n1": {Runtime: RuntimeContainerd, Containerd: "2.3.7", Restore: true}}},
		{in: "n1=containerd-2.4.2+restore", wantErr: "containerd 2.4.2 has no enable_experimental_restore_via_create"},
		{in: "n1=containerd+restore", wantErr: `runtime "containerd+restore"`},
		{in: "n1=crio+restore", wantErr: `runtime "crio+restore"`},
		{in: "n1=containerd-2.3.7+restor", wantErr: `containerd version "2.3.7+restor"`},
	} {
		got, err := ParseNodeRuntimes(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want one containing %q", tc.in, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case !reflect.DeepEqual(got, tc.want):
			t.Errorf("%s: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
	c := Config{Containerd: ContainerdFlavor{Nodes: map[string]NodeRuntime{"n2": {Runtime: RuntimeContainerd, Containerd: "2.3.7", Restore: true}}}}
	if !c.containerdRestore("n2") || c.containerdRestore("n4") {
		t.Errorf("containerdRestore: n2 %v (asked), n4 %v (not asked), want true and false", c.containerdRestore("n2"), c.containerdRestore("n4"))
	}
	c.Containerd.Restore = true
	if !c.containerdRestore("n4") {
		t.Error("containerdRestore: the bed-wide option does not reach n4")
	}
	if s := c.nodeRuntime("n2").String(); s != "containerd-2.3.7+restore" {
		t.Errorf("String: %s, want containerd-2.3.7+restore", s)
	}
}
