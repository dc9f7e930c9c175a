package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/pki"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// malloryTLS is a valid certificate of the bed's cluster CA for a name
// that is no member: what a stolen or mis-issued certificate gives.
func malloryTLS(t *testing.T, b *testbed.Bed) *peer.TLS {
	t.Helper()
	dir := t.TempDir()
	if err := pki.WriteNodeCert(dir, b.PKI.Dir, "mallory", []net.IP{net.IPv4(10, 77, 0, 99)}, nil); err != nil {
		t.Fatal(err)
	}
	tl, err := peer.LoadTLS(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), b.PKI.CACert)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// dialAs is a peer client of node with the certificate tl, closed when
// the test ends.
func dialAs(t *testing.T, b *testbed.Bed, node string, tl *peer.TLS) *peer.Client {
	t.Helper()
	c, err := peer.Dial(node, rpcAddr(t, b, node), tl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// encode is cmd as a Raft log entry.
func encode(t *testing.T, cmd state.Command) []byte {
	t.Helper()
	b, err := state.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rpcAddr(t *testing.T, b *testbed.Bed, node string) string {
	t.Helper()
	n, err := b.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(n.Addr.String(), "7947")
}

// TestE2EHostilePeer: a machine with a valid certificate of the cluster CA
// for a name that is no member tries every attack of the authorization
// table against the real daemons; each is refused, the cluster state does
// not change, and a power cut of the owner afterwards still brings the
// counter back on a member with its state and its original, unprivileged
// configuration.
func TestE2EHostilePeer(t *testing.T) {
	cb := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cb.runCounter(ctx, "n1")
	// n2 may be a checkpoint behind n1, and n1's newest checkpoint may
	// not be replicated yet: wait until n2 knows a peer holding one.
	var before api.ClusterWorkload
	holder, leader := "", ""
	poll.Until(t, 30*time.Second, "n2 knows the counter's leader and a replica on a peer", func() (bool, string) {
		var err error
		if before, err = cb.workload(ctx, "n2"); err != nil || before.Newest == nil {
			return false, fmt.Sprintf("record %+v, %v", before, err)
		}
		holder = ""
		for _, h := range before.Newest.Holders {
			if h != "n1" {
				holder = h
			}
		}
		leader = cb.leader(ctx, "n2")
		return holder != "" && leader != "", fmt.Sprintf("newest %+v, leader %q", before.Newest, leader)
	})
	mt := malloryTLS(t, cb.b)
	dial := func(node string) *peer.Client { return dialAs(t, cb.b, node, mt) }
	evil, err := restorecfg.Marshal(&runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "default", Uid: "evil"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Privileged: true,
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE}}},
	}, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}, Image: &runtimeapi.ImageSpec{Image: cb.b.CounterImage()},
		Mounts: []*runtimeapi.Mount{{HostPath: "/", ContainerPath: "/host"}},
		Linux:  &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}})
	if err != nil {
		t.Fatal(err)
	}
	enc := func(cmd state.Command) []byte { return encode(t, cmd) }
	now := time.Now()
	archive := filepath.Join(t.TempDir(), "evil.tar")
	payload := []byte(strings.Repeat("not a checkpoint ", 64))
	if err := os.WriteFile(archive, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	wid := store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}
	attacks := []struct {
		name string
		do   func() error
	}{
		{"forwarded RegisterWorkload with a privileged configuration, as the owner", func() error {
			return dial(leader).Apply(ctx, enc(&state.RegisterWorkload{At: now, ID: counterWL, Node: "n1", Interval: time.Second, Config: evil, CopyEpoch: before.Epoch}))
		}},
		{"forwarded RegisterWorkload with a privileged configuration, as itself", func() error {
			return dial(leader).Apply(ctx, enc(&state.RegisterWorkload{At: now, ID: counterWL, Node: "mallory", Interval: time.Second, Config: evil, CopyEpoch: before.Epoch}))
		}},
		{"forged Place on itself", func() error {
			return dial(leader).Apply(ctx, enc(&state.Place{At: now, ID: counterWL, Owner: "mallory", Epoch: before.Epoch + 1, Seq: before.Newest.Seq, Reason: "forged"}))
		}},
		{"forged UpsertNode", func() error {
			return dial(leader).Apply(ctx, enc(&state.UpsertNode{At: now, Name: "mallory", RPCAddr: "10.77.0.99:7947"}))
		}},
		{"Push with a spoofed source and seq 2^64-1", func() error {
			return dial(holder).Push(ctx, store.Entry{Workload: wid, Seq: math.MaxUint64, Path: archive, SHA256: hex.EncodeToString(sum[:]),
				Size: int64(len(payload)), Created: now, Method: "cri", Source: "n1"}, nil)
		}},
		{"Migrate to itself", func() error {
			_, _, err := dial("n1").Migrate(ctx, counterWL, "mallory")
			return err
		}},
		{"Fetch of the counter's memory", func() error {
			st, err := store.Open(t.TempDir(), 3)
			if err != nil {
				t.Fatal(err)
			}
			_, err = dial(holder).Fetch(ctx, st, wid, before.Newest.Seq, peer.Expect{})
			return err
		}},
	}
	refused := 0
	for _, a := range attacks {
		err := a.do()
		if status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), "mallory may not") {
			refused++
			t.Logf("refused: %s: %v", a.name, err)
		} else {
			t.Errorf("%s: %v (code %s), want PermissionDenied naming mallory", a.name, err, status.Code(err))
		}
	}
	// A Raft request: the connection is closed after the handshake.
	conn, err := tls.Dial("tcp", rpcAddr(t, cb.b, leader), mt.ClientConfig(leader, "crfailoverd-raft"))
	raftRefused := false
	if err != nil {
		raftRefused = true
	} else {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, rerr := conn.Read(make([]byte, 1))
		var ne net.Error
		raftRefused = rerr != nil && !(errors.As(rerr, &ne) && ne.Timeout())
		conn.Close()
	}
	if raftRefused {
		refused++
		t.Log("refused: a Raft connection")
	} else {
		t.Error("a Raft connection from mallory was kept open")
	}
	total := len(attacks) + 1
	after, err := cb.workload(ctx, "n2")
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	if after.Owner != before.Owner || after.Epoch != before.Epoch || after.Status != "running" {
		changed++
		t.Errorf("the workload moved: %+v -> %+v", before, after)
	}
	if after.Newest == nil || after.Newest.Seq == math.MaxUint64 {
		changed++
		t.Errorf("newest checkpoint %+v", after.Newest)
	}
	for _, m := range cb.b.Nodes() {
		raft, err := cb.admin(m.Name).RaftPeers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range raft.Peers {
			if p.ID == "mallory" {
				changed++
				t.Errorf("%s has mallory as a raft server", m.Name)
			}
		}
	}
	// The owner's power cut: the counter comes back on a member, with
	// its state, restored with its original configuration.
	readCfg := func(node string) restorecfg.Config {
		n, err := cb.b.Node(node)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(n.DaemonDir(), "workloads", "default_counter_counter.json"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := restorecfg.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	original := readCfg("n1")
	r, err := cb.b.PowerCutFailover(ctx, "n1", "n2", testbed.TestWriter{T: t})
	if err != nil {
		t.Fatal(err)
	}
	// What the restored copy runs with, as its runtime reports it (the
	// recorded file on its node is the registration's until the node's
	// agent adopts the copy, then the copy's own: reading it right after
	// the counter answers tells nothing about the copy).
	var restored restorecfg.Config
	poll.Until(t, 30*time.Second, "the configuration of the copy running on "+r.ServedOn, func() (bool, string) {
		restored, err = runningConfig(ctx, mustNode(t, cb.b, r.ServedOn))
		return err == nil, fmt.Sprint(err)
	})
	diff := restorecfg.SecurityDiff(asKubeletDefault(original, mustNode(t, cb.b, "n1"), original),
		asKubeletDefault(restored, mustNode(t, cb.b, r.ServedOn), original))
	// The bed's counter runs in its node's network namespace (host network)
	// and nothing else: the restored copy has no more than that.
	restoredOK := r.ServedOn != "mallory" && r.Lost() < 20 && len(diff) == 0 && !restored.Container.GetLinux().GetSecurityContext().GetPrivileged()
	if !restoredOK {
		t.Errorf("restored on %s, lost %d ticks, configuration changed in %v (privileges now %v)", r.ServedOn, r.Lost(), diff, restorecfg.Privileged(restored))
		b1, _ := restorecfg.Marshal(original.Sandbox, original.Container)
		b2, _ := restorecfg.Marshal(restored.Sandbox, restored.Container)
		t.Logf("recorded on n1:\n%s\nthe copy on %s:\n%s", b1, r.ServedOn, b2)
	}
	if !t.Failed() {
		fmt.Printf("E2E hostile-peer: runtime=%s attacks=%d refused=%d state_changed=%d restored_ok=%t\n", cb.b.Flavor(), total, refused, changed, restoredOK)
	}
}

// runningConfig is the sandbox and container configuration of the
// running counter container on n, as its runtime reports them (what the
// agent records for a copy).
func runningConfig(ctx context.Context, n testbed.Node) (restorecfg.Config, error) {
	c, err := testbed.DialCRI(n.Socket)
	if err != nil {
		return restorecfg.Config{}, err
	}
	defer c.Close()
	resp, err := c.Runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{testbed.LabelContainerName: "counter"}}})
	if err != nil {
		return restorecfg.Config{}, fmt.Errorf("list the counter's containers on %s: %w", n.Name, err)
	}
	if len(resp.Containers) != 1 {
		return restorecfg.Config{}, fmt.Errorf("%d running counter containers on %s, want 1", len(resp.Containers), n.Name)
	}
	ctr := resp.Containers[0]
	rt, err := cri.Dial(n.Socket, 10*time.Second)
	if err != nil {
		return restorecfg.Config{}, err
	}
	defer rt.Close()
	var cfg restorecfg.Config
	if cfg.Sandbox, err = rt.SandboxConfig(ctx, ctr.PodSandboxId); err != nil {
		return cfg, fmt.Errorf("the counter's sandbox configuration on %s: %w", n.Name, err)
	}
	if cfg.Container, err = rt.ContainerConfig(ctx, ctr.Id); err != nil {
		return cfg, fmt.Errorf("the counter's container configuration on %s: %w", n.Name, err)
	}
	return cfg, nil
}

// TestE2ELeaderRestart: the leader's daemon is stopped and started again
// while the others keep running; a new leader is elected, and no workload
// is placed elsewhere (its owner never died).
func TestE2ELeaderRestart(t *testing.T) {
	cb := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	leader := cb.leader(ctx, "n1")
	owner := "n1"
	if leader == owner {
		owner = "n2"
	}
	cb.runCounter(ctx, owner)
	before, err := cb.workload(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	// Sample the live copies every 100 ms while the leader restarts.
	stop := make(chan struct{})
	maxCopies := make(chan int, 1)
	go func() {
		most := 0
		for {
			select {
			case <-stop:
				maxCopies <- most
				return
			case <-time.After(100 * time.Millisecond):
			}
			if m, err := cb.copies(ctx); err == nil {
				most = max(most, total(m))
			}
		}
	}()
	if err := testbed.Signal(cb.pids[leader], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var other string
	for _, n := range []string{"n1", "n2", "n3"} {
		if n != leader {
			other = n
		}
	}
	waitUntil(t, 30*time.Second, "a new leader", func() (bool, error) {
		l := cb.leader(ctx, other)
		return l != "" && l != leader, nil
	})
	cfg, err := cb.b.DaemonConfig(leader, "cri", "")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cb.b.ClusterConfig(leader, 3)
	if err != nil {
		t.Fatal(err)
	}
	if cb.pids[leader], err = cb.b.StartDaemon(ctx, leader, cb.bin, cfg+cl); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "the restarted node back in the cluster", func() (bool, error) {
		r, err := cb.admin(leader).RaftPeers(ctx)
		return err == nil && r.Leader != "" && !r.Fenced, nil
	})
	// Well past a fence delay and a failover.
	time.Sleep(8 * time.Second)
	close(stop)
	most := <-maxCopies
	after, err := cb.workload(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	placements := int(after.Epoch - before.Epoch)
	if placements != 0 || after.Owner != owner {
		t.Errorf("the counter was placed elsewhere: %+v -> %+v", before, after)
	}
	if most != 1 {
		t.Errorf("at most %d live copies during the restart, want 1", most)
	}
	if !t.Failed() {
		fmt.Printf("E2E leader-restart: runtime=%s placements=%d copies_max=%d\n", cb.b.Flavor(), placements, most)
	}
}

// asKubeletDefault is c as it would read on a node whose kubelet keeps its
// pods in /var/lib/kubelet (the daemons compare kubelet's per-pod paths
// there only: the bed's kubelets have a root directory per node, which
// the test, knowing them, maps back), and with the original's image ID
// when c runs the image the original's user named (containerd reports a
// restored copy by that reference, kubelet creates it by ID).
func asKubeletDefault(c restorecfg.Config, n testbed.Node, original restorecfg.Config) restorecfg.Config {
	out := restorecfg.Config{Sandbox: proto.Clone(c.Sandbox).(*runtimeapi.PodSandboxConfig),
		Container: proto.Clone(c.Container).(*runtimeapi.ContainerConfig)}
	root := filepath.Join(n.KubeletDir, "pods") + "/"
	for _, m := range out.Container.GetMounts() {
		if rest, ok := strings.CutPrefix(m.HostPath, root); ok {
			m.HostPath = "/var/lib/kubelet/pods/" + rest
		}
	}
	img, orig := out.Container.GetImage(), original.Container.GetImage()
	if img != nil && orig != nil && img.GetImage() != orig.GetImage() && img.GetImage() == orig.GetUserSpecifiedImage() {
		out.Container.Image = proto.Clone(orig).(*runtimeapi.ImageSpec)
	}
	return out
}
