// Package authz decides what one cluster node may ask of another: the
// authorization table. A caller is the node its certificate names (peer
// binds every request to it); a valid certificate of the cluster CA makes
// a caller authenticated, and this table decides, from the replicated
// state, what it may do about which workload. Every refusal says who was
// refused what and why. It does no I/O.
package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// ErrDenied is wrapped by every refusal.
var ErrDenied = errors.New("permission denied")

// ErrNotRecorded is wrapped (besides ErrDenied) by a refusal that may be
// only a matter of time: the state does not record yet what the request
// is about (a checkpoint committed on the leader, not yet applied here).
var ErrNotRecorded = errors.New("not recorded in the cluster state (yet)")

// Denied is a refusal.
type Denied struct {
	Caller string
	What   string
	Why    string
	cause  error
}

func (d *Denied) Error() string { return fmt.Sprintf("%s may not %s: %s", d.Caller, d.What, d.Why) }

// Is makes errors.Is(err, ErrDenied) hold, and ErrNotRecorded for those.
func (d *Denied) Is(target error) bool {
	return target == ErrDenied || (d.cause != nil && target == d.cause)
}

func deny(caller, what, why string, args ...any) error {
	return &Denied{Caller: caller, What: what, Why: fmt.Sprintf(why, args...)}
}

func notYet(caller, what, why string, args ...any) error {
	return &Denied{Caller: caller, What: what, Why: fmt.Sprintf(why, args...), cause: ErrNotRecorded}
}

// Rule is one row of the table, for the README and the tests.
type Rule struct {
	Request string // the RPC, or the Raft command a follower forwards
	Who     string // who may send it
	About   string // about what
}

// Table is the authorization table.
var Table = []Rule{
	{"every request but Identify and Raft", "a node the state records (recorded by the leader once it proved its name)", "as below"},
	{"Apply RegisterWorkload", "the node it names", "a workload nobody else owns; a recorded restore configuration is never changed in its security-relevant fields (image, privileged, capabilities, host namespaces, users, profiles, sysctls, mounts, devices, CDI)"},
	{"Apply CommitCheckpoint", "the node it names, the workload's owner", "its own copy's checkpoint"},
	{"Apply AppFailed, RestoreDone", "the node it names", "its own copy or restore (epochs are checked by the state)"},
	{"Apply AddHolder", "the workload's owner", "a checkpoint the state records, held by a known node, with the recorded sha256 and size"},
	{"Apply DropHolder", "the node it names", "its own holder record of a checkpoint (its copy did not match the record, or was refused before a restore)"},
	{"Apply NodeCapabilities", "the node it names", "what its own runtime can do (bounded in size by the state)"},
	{"Apply Place", "the workload's owner (a migration)", "its own running workload, to a known node that holds the checkpoint and can restore it (state.CanRestore), at the next epoch"},
	{"Apply GiveUp, Unplaceable, UpsertNode, RemoveNode", "nobody: the leader's own loop only", "never forwarded"},
	{"Push", "the workload's owner", "a checkpoint the state records for that workload with the same sha256 and size"},
	{"Fetch", "the node the workload is placed on, or a holder of one of its checkpoints", "that workload"},
	{"Migrate", "a node the state knows (asked on its admin socket)", "a workload, to another node the state knows (never to the caller itself)"},
	{"Raft", "the Raft servers; before the cluster has a configuration, alive gossip members", "the Raft protocol"},
}

// Forwarded decides a Raft command that caller forwarded to this node (the
// leader) to commit.
func Forwarded(s *state.State, caller string, cmd state.Command) error {
	what := fmt.Sprintf("forward %T", cmd)
	what = "forward " + strings.TrimPrefix(what[len("forward "):], "*state.")
	if err := member(s, caller, what); err != nil {
		return err
	}
	node := func(n string) error {
		if n != caller {
			return deny(caller, what, "it names node %q: a node reports only for itself", n)
		}
		return nil
	}
	switch c := cmd.(type) {
	case *state.RegisterWorkload:
		if err := node(c.Node); err != nil {
			return err
		}
		w, ok := s.Workloads[c.ID]
		if !ok {
			return nil
		}
		if w.Status != state.StatusFailed && w.Owner != caller {
			return deny(caller, what, "workload %s is owned by %s", c.ID, w.Owner)
		}
		if len(w.Config) == 0 {
			return nil
		}
		return sameSecurity(caller, what, c.ID, w.Config, c.Config)
	case *state.CommitCheckpoint:
		if err := node(c.Node); err != nil {
			return err
		}
		return owner(s, caller, what, c.ID)
	case *state.AppFailed:
		return node(c.Node)
	case *state.RestoreDone:
		return node(c.Node)
	case *state.AddHolder:
		if err := owner(s, caller, what, c.ID); err != nil {
			return err
		}
		if s.Nodes[c.Node] == nil {
			return deny(caller, what, "holder %q is not a node of the cluster", c.Node)
		}
		cp := s.Workloads[c.ID].Checkpoint(c.Seq)
		switch {
		case cp == nil:
			return notYet(caller, what, "workload %s has no checkpoint #%d", c.ID, c.Seq)
		case c.SHA256 != cp.SHA256 || c.Size != cp.Size:
			return deny(caller, what, "it names sha256 %.12s and %d bytes for checkpoint #%d of %s, the state records %.12s and %d bytes",
				c.SHA256, c.Size, c.Seq, c.ID, cp.SHA256, cp.Size)
		}
		return nil
	case *state.NodeCapabilities:
		return node(c.Node)
	case *state.DropHolder:
		// A node drops only its own record; a dead node's records go with
		// RemoveNode, from the leader's own loop.
		return node(c.Node)
	case *state.Place:
		w, ok := s.Workloads[c.ID]
		if !ok || w.Owner != caller {
			return deny(caller, what, "a placement comes from the leader's own loop, or from the owner migrating its own workload (%s is owned by %q)", c.ID, ownerOf(w))
		}
		cp := w.Checkpoint(c.Seq)
		switch {
		case w.Status != state.StatusRunning:
			return deny(caller, what, "workload %s is %s, not running: only a running workload is migrated", c.ID, w.Status)
		case c.Epoch != w.Epoch+1:
			return deny(caller, what, "epoch %d is not the next one (%d)", c.Epoch, w.Epoch+1)
		case c.Owner == caller || s.Nodes[c.Owner] == nil:
			return deny(caller, what, "target %q is not another node of the cluster", c.Owner)
		case cp == nil || !slices.Contains(cp.Holders, c.Owner):
			return deny(caller, what, "target %s holds no copy of checkpoint #%d", c.Owner, c.Seq)
		}
		if ok, why := s.CanRestore(c.Owner, cp); !ok {
			return deny(caller, what, "target %s cannot restore checkpoint #%d: %s", c.Owner, c.Seq, why)
		}
		return nil
	case *state.GiveUp, *state.Unplaceable, *state.UpsertNode, *state.RemoveNode:
		return deny(caller, what, "only the leader's own loop makes it; it is never forwarded")
	}
	return deny(caller, what, "no rule admits this command")
}

// member checks that caller is a node the state records (the leader
// records a node only after it proved its name over mutual TLS).
func member(s *state.State, caller, what string) error {
	if s.Nodes[caller] == nil {
		return deny(caller, what, "it is not a node of the cluster (the leader records a node once it has proven its name)")
	}
	return nil
}

// owner checks that caller owns workload id.
func owner(s *state.State, caller, what, id string) error {
	w, ok := s.Workloads[id]
	switch {
	case !ok:
		return notYet(caller, what, "workload %s is unknown", id)
	case w.Owner != caller:
		return deny(caller, what, "workload %s is owned by %q", id, w.Owner)
	}
	return nil
}

// sameSecurity refuses a configuration that differs from the recorded one
// in what a restored copy may do to its node.
func sameSecurity(caller, what, id string, old, new []byte) error {
	a, err := restorecfg.Parse(old)
	if err != nil {
		return deny(caller, what, "the recorded configuration of %s cannot be read: %v", id, err)
	}
	b, err := restorecfg.Parse(new)
	if err != nil {
		return deny(caller, what, "its configuration of %s cannot be read: %v", id, err)
	}
	if diff := restorecfg.SecurityDiff(a, b); len(diff) > 0 {
		return deny(caller, what, "it changes the security-relevant fields of %s's recorded configuration: %s", id, strings.Join(diff, "; "))
	}
	return nil
}

// Push decides an archive that caller pushes to this node.
func Push(s *state.State, caller, workload string, seq uint64, sha string, size int64) error {
	what := fmt.Sprintf("push %s #%d", workload, seq)
	if err := member(s, caller, what); err != nil {
		return err
	}
	if err := owner(s, caller, what, workload); err != nil {
		return err
	}
	cp := s.Workloads[workload].Checkpoint(seq)
	switch {
	case cp == nil:
		return notYet(caller, what, "the state records no checkpoint #%d of it", seq)
	case cp.SHA256 != sha || cp.Size != size:
		return deny(caller, what, "it announces sha256 %.12s and %d bytes, the state records %.12s and %d bytes", sha, size, cp.SHA256, cp.Size)
	}
	return nil
}

// Fetch decides a request of caller for a checkpoint of workload.
func Fetch(s *state.State, caller, workload string) error {
	what := "fetch " + workload
	if err := member(s, caller, what); err != nil {
		return err
	}
	w, ok := s.Workloads[workload]
	if !ok {
		return notYet(caller, what, "workload %s is unknown", workload)
	}
	if w.Owner == caller {
		return nil
	}
	for _, cp := range w.Checkpoints {
		if slices.Contains(cp.Holders, caller) {
			return nil
		}
	}
	return deny(caller, what, "it is neither placed there nor a holder of one of its checkpoints (owner %q)", w.Owner)
}

// Migrate decides a migration caller asks this node (the owner) to make.
func Migrate(s *state.State, caller, workload, to string) error {
	what := "migrate " + workload + " to " + to
	switch {
	case s.Nodes[caller] == nil:
		return deny(caller, what, "the caller is not a node of the cluster")
	case s.Nodes[to] == nil:
		return deny(caller, what, "the target is not a node of the cluster")
	case to == caller:
		// A node pulling a workload's memory to itself: a migration to a
		// node is asked on the owner or on a third node.
		return deny(caller, what, "a node may not have a workload migrated to itself through the owner; ask on the owner's (or a third node's) admin socket")
	}
	return nil
}

// Raft decides a Raft connection from (or to) caller: servers is the Raft
// configuration (empty before the cluster has one), alive the gossip
// members alive now.
func Raft(servers []string, alive map[string]bool, caller string) error {
	switch {
	case slices.Contains(servers, caller):
		return nil
	case len(servers) == 0 && alive[caller]:
		return nil
	case len(servers) == 0:
		return deny(caller, "speak Raft", "the cluster has no configuration yet and it is not an alive gossip member")
	}
	return deny(caller, "speak Raft", "it is not a Raft server (servers: %s)", strings.Join(servers, ", "))
}

func ownerOf(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.Owner
}
