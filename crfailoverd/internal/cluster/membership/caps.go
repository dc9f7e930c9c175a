package membership

import (
	"fmt"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// Caps is the compact summary of a node's runtime capabilities that goes
// in its gossiped metadata (memberlist's 512 bytes, shared with the RPC
// address): the runtime and the restore path. The reasons and the CPU
// flags do not fit; the cluster state records those.
type Caps struct {
	Runtime    string `json:"rt"`           // "containerd 2.1.9"
	Checkpoint bool   `json:"cp,omitempty"` // the runtime can checkpoint
	Restore    string `json:"rs"`           // create, restore-pod, native, none
}

// capsRuntimeMax bounds the runtime field, so that a runtime reporting a
// long version cannot push the metadata over memberlist's limit.
const capsRuntimeMax = 64

// CapsOf summarizes a node's capabilities for gossip.
func CapsOf(n capability.Node) Caps {
	rt := n.Runtime.String()
	if n.Runtime.Name == "" {
		rt = ""
	}
	if len(rt) > capsRuntimeMax {
		rt = rt[:capsRuntimeMax]
	}
	path := string(n.Restore)
	if !n.CanRestore() {
		path = string(capability.RestoreNone)
	}
	return Caps{Runtime: rt, Checkpoint: n.Checkpoint, Restore: path}
}

// String is what `crfailoverd members` shows: "containerd 2.1.9
// restore=create", with "no-checkpoint" when the runtime cannot
// checkpoint; "" for no summary.
func (c Caps) String() string {
	if c == (Caps{}) {
		return ""
	}
	rt := c.Runtime
	if rt == "" {
		rt = "unknown runtime"
	}
	s := fmt.Sprintf("%s restore=%s", rt, c.Restore)
	if !c.Checkpoint {
		s += " no-checkpoint"
	}
	return s
}
