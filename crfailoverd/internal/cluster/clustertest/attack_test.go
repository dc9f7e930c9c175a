package clustertest

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
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/authz"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func encode(t *testing.T, cmd state.Command) []byte {
	t.Helper()
	b, err := state.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// privileged is a restore configuration asking for root on the node.
func privileged(t *testing.T) []byte {
	t.Helper()
	b, err := restorecfg.Marshal(&runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: counter.Pod, Namespace: counter.Namespace, Uid: "evil"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Privileged: true,
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE}}},
	}, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: counter.Container}, Image: &runtimeapi.ImageSpec{Image: "counter:latest"},
		Mounts: []*runtimeapi.Mount{{HostPath: "/", ContainerPath: "/host"}},
		Linux:  &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeArchive writes bytes to push and returns an entry for them.
func fakeArchive(t *testing.T, seq uint64) store.Entry {
	t.Helper()
	p := filepath.Join(t.TempDir(), "evil.tar")
	b := []byte(strings.Repeat("not a checkpoint ", 100))
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return store.Entry{Workload: counter, Seq: seq, Path: p, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b)), Created: time.Now(), Source: "n1", Method: "cri"}
}

// TestEveryRuleRefusesOtherCallers: for each row of the authorization
// table, a caller with another node's valid certificate (or one for a
// name that is no member, or a compromised owner asking for more than
// its registration) is refused with PermissionDenied, and the state does
// not change.
func TestEveryRuleRefusesOtherCallers(t *testing.T) {
	c := New(t, Options{})
	leader := c.Leader()
	owner := "n1"
	if leader.Name == owner {
		owner = "n2"
	}
	holder := protect(t, c, owner, counter)
	var other string // a member that is neither the owner nor the holder
	for _, n := range c.Nodes {
		if n.Name != owner && n.Name != holder {
			other = n.Name
		}
	}
	before, _ := leader.Cluster().Workloads(), 0
	w := before[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	apply := func(as string, cmd state.Command) error {
		return c.ClientAs(as, leader).Apply(ctx, encode(t, cmd))
	}
	now := time.Now()
	attacks := []struct {
		name string
		do   func() error
		want string
	}{
		{"a registration naming another node", func() error {
			return apply(other, &state.RegisterWorkload{At: now, ID: counter.String(), Node: owner, Interval: time.Second, Config: privileged(t), CopyEpoch: w.Epoch})
		}, "a node reports only for itself"},
		{"a registration of a workload another node owns", func() error {
			return apply(other, &state.RegisterWorkload{At: now, ID: counter.String(), Node: other, Interval: time.Second, Config: privileged(t), CopyEpoch: w.Epoch})
		}, "is owned by " + owner},
		{"the owner re-registering with a privileged configuration", func() error {
			return apply(owner, &state.RegisterWorkload{At: now, ID: counter.String(), Node: owner, Interval: time.Second, Config: privileged(t), CopyEpoch: w.Epoch})
		}, "security-relevant fields"},
		{"a checkpoint of 2^64-1 for the owner", func() error {
			return apply(other, &state.CommitCheckpoint{At: now, ID: counter.String(), Node: owner, Epoch: w.Epoch,
				Checkpoint: state.Checkpoint{Seq: math.MaxUint64, SHA256: strings.Repeat("0", 64), Size: 1, Created: now, Holders: []string{owner}}})
		}, "a node reports only for itself"},
		{"a holder record from a node that does not own it", func() error {
			return apply(other, &state.AddHolder{At: now, ID: counter.String(), Seq: w.Newest.Seq, Node: other})
		}, "is owned by"},
		{"a holder drop naming another node", func() error {
			return apply(other, &state.DropHolder{At: now, ID: counter.String(), Seq: w.Newest.Seq, SHA256: w.Newest.SHA256, Node: holder, Reason: "forged"})
		}, "a node reports only for itself"},
		{"a holder record of the owner's with another digest", func() error {
			return apply(owner, &state.AddHolder{At: now, ID: counter.String(), Seq: w.Newest.Seq, SHA256: strings.Repeat("0", 64), Size: w.Newest.Size, Node: other})
		}, "sha256"},
		{"a forged placement", func() error {
			return apply(other, &state.Place{At: now, ID: counter.String(), Owner: other, Epoch: w.Epoch + 1, Seq: w.Newest.Seq, Reason: "forged"})
		}, "placement comes from the leader's own loop"},
		{"a give-up", func() error {
			return apply(owner, &state.GiveUp{At: now, ID: counter.String(), Epoch: w.Epoch, Reason: "forged"})
		}, "never forwarded"},
		{"a node record", func() error {
			return apply(owner, &state.UpsertNode{At: now, Name: "mallory", RPCAddr: "127.0.0.1:1"})
		}, "never forwarded"},
		{"a push with a spoofed source and seq 2^64-1", func() error {
			return c.ClientAs(other, c.Node(holder)).Push(ctx, fakeArchive(t, math.MaxUint64), nil)
		}, "is owned by"},
		{"the owner pushing a checkpoint the state does not record", func() error {
			return c.ClientAs(owner, c.Node(holder)).Push(ctx, fakeArchive(t, math.MaxUint64), nil)
		}, "records no checkpoint"},
		{"a fetch by a name that is no member", func() error {
			st, err := store.Open(t.TempDir(), 3)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.ClientAs("mallory", c.Node(holder)).Fetch(ctx, st, counter, w.Newest.Seq, peer.Expect{})
			return err
		}, "not a node of the cluster"},
		{"a fetch by a member that holds nothing of it", func() error {
			st, err := store.Open(t.TempDir(), 3)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.ClientAs(other, c.Node(holder)).Fetch(ctx, st, counter, w.Newest.Seq, peer.Expect{})
			return err
		}, "neither placed there nor a holder"},
		{"a registration of a new privileged workload by a name that is no member", func() error {
			return apply("mallory", &state.RegisterWorkload{At: now, ID: "default/evil/evil", Node: "mallory", Interval: time.Second, Config: privileged(t)})
		}, "not a node of the cluster"},
		{"a member pulling a workload to itself", func() error {
			_, _, err := c.ClientAs(other, c.Node(owner)).Migrate(ctx, counter.String(), other)
			return err
		}, "may not have a workload migrated to itself"},
		{"a migration to a name that is no member", func() error {
			_, _, err := c.ClientAs("mallory", c.Node(owner)).Migrate(ctx, counter.String(), "mallory")
			return err
		}, "not a node of the cluster"},
	}
	refused := 0
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			err := a.do()
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("got %v (code %s), want PermissionDenied", err, status.Code(err))
			}
			if !strings.Contains(err.Error(), a.want) {
				t.Fatalf("refusal %q does not say %q", err, a.want)
			}
			refused++
		})
	}
	// A certificate of another CA fails the handshake.
	if _, err := c.ClientOfOtherCA("n9", leader).Identify(ctx); err == nil || status.Code(err) == codes.OK {
		t.Fatal("a certificate of another CA was accepted")
	}
	// A Raft connection from a name that is no Raft server is closed.
	if raftAccepted(t, c, "mallory", leader) {
		t.Fatal("a raft connection from mallory was accepted")
	}
	if !raftAccepted(t, c, other, leader) {
		t.Fatal("a raft connection from a member was refused")
	}
	after := leader.Cluster().Workloads()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the state changed:\n%+v\n%+v", before, after)
	}
	t.Logf("attacks=%d refused=%d state_changed=0 (authorization table: %d rows)", len(attacks)+2, refused+2, len(authz.Table))
	// The cluster still works: the owner's power cut moves the workload.
	c.Node(owner).PowerCut()
	c.AgreeOn(30*time.Second, counter, holder, 2, "running")
	rs := c.Node(holder).Fake.Restores()
	cfg, err := restorecfg.Parse(rs[len(rs)-1].Config)
	if err != nil {
		t.Fatal(err)
	}
	if p := restorecfg.Privileged(cfg); len(p) != 0 {
		t.Fatalf("restored with %v", p)
	}
}

// raftAccepted opens a Raft-protocol connection to n as name and reports
// whether n kept it open.
func raftAccepted(t *testing.T, c *Cluster, name string, n *Node) bool {
	t.Helper()
	cfg := c.TLSAs(name).ClientConfig("127.0.0.1", "crfailoverd-raft")
	conn, err := tls.Dial("tcp", n.RPCAddr(), cfg)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	// A kept connection times out waiting for data; a refused one is
	// closed (EOF).
	return err != nil && errors.As(err, &ne) && ne.Timeout()
}

// TestGossipAloneNeverMakesAVoter: a member that gossips a name but cannot
// prove it over mutual TLS (its RPC port serves another node's
// certificate) never becomes a Raft server.
func TestGossipAloneNeverMakesAVoter(t *testing.T) {
	c := New(t, Options{Verbose: os.Getenv("CRF_VERBOSE") != ""})
	mux, err := peer.Listen("127.0.0.1:0", c.TLSAs("mallory"))
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	srv := peer.NewServer(peer.Handlers{Node: "ghost"})
	go func() { _ = srv.Serve(mux.GRPCListener()) }()
	defer srv.Stop()
	_, port, _ := net.SplitHostPort(mux.Addr().String())
	p, _ := strconv.Atoi(port)
	ghost, err := membership.Start(membership.Options{Name: "ghost", BindAddr: "127.0.0.1:0", RPCPort: p, Join: []string{c.Nodes[0].gossip}, Profile: "lan"})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go ghost.JoinLoop(stop)
	defer func() { close(stop); _ = ghost.Shutdown() }()
	c.Eventually(10*time.Second, "the leader sees the ghost alive", func() (bool, string) {
		for _, m := range c.Leader().Cluster().Members() {
			if m.Name == "ghost" && m.Status == "alive" {
				return true, ""
			}
		}
		return false, "not yet"
	})
	// Well past the stabilization time, it is still no Raft server.
	time.Sleep(2 * time.Second)
	for _, p := range c.Leader().Cluster().RaftPeers().Peers {
		if p.ID == "ghost" {
			t.Fatalf("a gossip-only member became a raft server: %+v", p)
		}
	}
}

// TestANewNodeJoinsTheFormedCluster: a fourth node whose name sorts first
// (so it is among the first bootstrap_expect alive members by name) joins
// the cluster that exists instead of bootstrapping one of its own.
func TestANewNodeJoinsTheFormedCluster(t *testing.T) {
	c := New(t, Options{})
	a0 := c.AddNode("a0")
	c.Eventually(30*time.Second, "a0 in the cluster's raft configuration, following its leader", func() (bool, string) {
		r := a0.Cluster().RaftPeers()
		leader := c.Leader()
		if leader == nil || leader == a0 {
			return false, "leader " + fmt.Sprint(leader)
		}
		in := false
		for _, p := range leader.Cluster().RaftPeers().Peers {
			in = in || p.ID == "a0"
		}
		return in && r.Leader == leader.Name, fmt.Sprintf("a0 sees leader %q (%s); in the leader's configuration: %t", r.Leader, r.State, in)
	})
}
