package peer

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/faultnet"
)

var _ Network = (*faultnet.Switch)(nil)

// TestHostNetworkListenError keeps Listen's error for a bad address.
func TestHostNetworkListenError(t *testing.T) {
	ca := newCA(t, "cluster-ca")
	if _, err := Listen("127.0.0.1:x", ca.nodeTLS(t, "node-a")); err == nil || !strings.Contains(err.Error(), "peer: listen on 127.0.0.1:x") {
		t.Errorf("Listen on a bad address: %v", err)
	}
}

// TestCutThroughFaultnet runs gRPC and Raft between two nodes, each behind
// a faultnet.Switch, and cuts either the dialing or the accepting node:
// the call in progress, the Raft connection and new dials fail, and Heal
// brings them back.
func TestCutThroughFaultnet(t *testing.T) {
	for _, cut := range []string{"dialer", "server"} {
		t.Run("cut the "+cut, func(t *testing.T) {
			ca := newCA(t, "cluster-ca")
			swA, swB := faultnet.New(), faultnet.New()
			started := make(chan struct{}, 1)
			b := startPeerOn(t, swB, ca, "node-b", Handlers{Apply: func(ctx context.Context, cmd []byte) error {
				if string(cmd) != "block" {
					return nil
				}
				started <- struct{}{}
				<-ctx.Done()
				return ctx.Err()
			}})
			a := startPeerOn(t, swA, ca, "node-a", Handlers{})
			dial := func() *Client {
				t.Helper()
				c, err := Dial("node-b", b.addr, a.tls, WithNetwork(swA))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			apply := func(c *Client) error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return c.Apply(ctx, []byte("hello"))
			}
			cl := dial()
			if err := apply(cl); err != nil {
				t.Fatalf("Apply: %v", err)
			}

			// A Raft connection, and a call that blocks in the handler.
			raftB := b.mux.RaftStream(nil)
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := raftB.Accept(); err == nil {
					accepted <- c
				}
			}()
			rc, err := a.mux.RaftStream(nil).Dial(raft.ServerAddress(b.addr), 5*time.Second)
			if err != nil {
				t.Fatalf("raft Dial: %v", err)
			}
			defer rc.Close()
			sc := recvTimeout(t, accepted, "raft accept")
			defer sc.Close()
			if _, err := rc.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(sc, make([]byte, 4)); err != nil {
				t.Fatalf("raft ping: %v", err)
			}
			blocked := make(chan error, 1)
			go func() { blocked <- cl.Apply(context.Background(), []byte("block")) }()
			recvTimeout(t, started, "the blocking call to start")

			sw := map[string]*faultnet.Switch{"dialer": swA, "server": swB}[cut]
			sw.Cut()
			if !sw.IsCut() || swA.IsCut() == swB.IsCut() {
				t.Fatal("IsCut does not tell which switch is cut")
			}
			if err := recvTimeout(t, blocked, "the call in progress to fail"); status.Code(err) != codes.Unavailable {
				t.Errorf("call in progress: %v, want Unavailable", err)
			}
			rc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := rc.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				t.Errorf("read on the raft connection after the cut: %v, want it closed", err)
			}
			if err := apply(cl); err == nil {
				t.Error("Apply on the old client works while cut")
			}
			if err := apply(dial()); err == nil {
				t.Error("Apply on a new client works while cut")
			} else if cut == "dialer" && !strings.Contains(err.Error(), faultnet.ErrCut.Error()) {
				t.Errorf("Apply on a new client while cut: %v, want %v", err, faultnet.ErrCut)
			}
			_, err = a.mux.RaftStream(nil).Dial(raft.ServerAddress(b.addr), 5*time.Second)
			if err == nil {
				t.Error("raft Dial works while cut")
			} else if cut == "dialer" && !errors.Is(err, faultnet.ErrCut) {
				t.Errorf("raft Dial while cut: %v, want %v", err, faultnet.ErrCut)
			}

			sw.Heal()
			if sw.IsCut() {
				t.Fatal("IsCut after Heal")
			}
			if err := apply(dial()); err != nil {
				t.Errorf("Apply on a new client after Heal: %v", err)
			}
			go func() {
				if c, err := raftB.Accept(); err == nil {
					accepted <- c
				}
			}()
			rc2, err := a.mux.RaftStream(nil).Dial(raft.ServerAddress(b.addr), 5*time.Second)
			if err != nil {
				t.Fatalf("raft Dial after Heal: %v", err)
			}
			rc2.Close()
			recvTimeout(t, accepted, "raft accept after Heal").Close()
			// The old client reconnects by itself (after gRPC's backoff).
			deadline := time.Now().Add(20 * time.Second)
			for apply(cl) != nil {
				if time.Now().After(deadline) {
					t.Fatal("the old client did not reconnect after Heal")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
