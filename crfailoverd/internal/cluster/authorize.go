package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/authz"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
)

// catchUp is how long a request the local state does not justify yet
// waits for it (a checkpoint the leader has committed and this node not
// yet applied) before it is refused.
const catchUp = 3 * time.Second

// authorizer applies the authorization table (package authz) to the
// requests peers make of this node, against this node's replicated state.
type authorizer struct{ c *Cluster }

func (a authorizer) Authorize(ctx context.Context, caller string, r peer.Request) error {
	var decide func(*state.State) error
	switch r.Method {
	case "Apply":
		cmd, err := state.Decode(r.Command)
		if err != nil {
			return fmt.Errorf("%s may not forward this command: it cannot be decoded: %w", caller, err)
		}
		decide = func(s *state.State) error { return authz.Forwarded(s, caller, cmd) }
	case "Push":
		decide = func(s *state.State) error { return authz.Push(s, caller, r.Workload, r.Seq, r.SHA256, r.Size) }
	case "Fetch":
		decide = func(s *state.State) error { return authz.Fetch(s, caller, r.Workload) }
	case "Migrate":
		decide = func(s *state.State) error { return authz.Migrate(s, caller, r.Workload, r.To) }
	default:
		return fmt.Errorf("%s may not call %s: no rule admits it", caller, r.Method)
	}
	deadline := time.NewTimer(catchUp)
	defer deadline.Stop()
	for {
		changed := a.c.fsm.Changed()
		err := a.c.fsm.Read(decide) // no copy of the state per request
		if err == nil || !errors.Is(err, authz.ErrNotRecorded) {
			if err != nil {
				a.c.log.Warn("REFUSED a peer request", "caller", caller, "method", r.Method, "workload", r.Workload, "seq", r.Seq, "err", err)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-deadline.C:
			a.c.log.Warn("REFUSED a peer request", "caller", caller, "method", r.Method, "workload", r.Workload, "seq", r.Seq, "err", err)
			return err
		case <-changed:
		}
	}
}

// authorizeRaft decides a Raft connection from or to the node name.
func (c *Cluster) authorizeRaft(name string) error {
	r := c.raftUp.Load()
	if r == nil {
		return fmt.Errorf("%s may not speak Raft yet: Raft is not started on %s", name, c.o.Node)
	}
	var servers []string
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			servers = append(servers, string(s.ID))
		}
	}
	if err := authz.Raft(servers, c.ml.Alive(), name); err != nil {
		c.log.Warn("REFUSED a raft connection", "peer", name, "err", err)
		return err
	}
	return nil
}
