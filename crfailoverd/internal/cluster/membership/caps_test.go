package membership

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

func TestCapsOf(t *testing.T) {
	cases := []struct {
		n    capability.Node
		want Caps
		str  string
	}{
		{capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true, Restore: capability.RestoreCreate,
			CPUFlags: []string{"fpu"}}, Caps{"containerd 2.1.9", true, "create"}, "containerd 2.1.9 restore=create"},
		{capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.3.4"}, Checkpoint: true, Restore: capability.RestoreNone,
			RestoreReason: "long reason that stays out of gossip"}, Caps{"containerd 2.3.4", true, "none"}, "containerd 2.3.4 restore=none"},
		{capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "1.6.20~ds1"}, Restore: capability.RestoreNone},
			Caps{"containerd 1.6.20~ds1", false, "none"}, "containerd 1.6.20~ds1 restore=none no-checkpoint"},
		{capability.Node{}, Caps{"", false, "none"}, "unknown runtime restore=none no-checkpoint"},
	}
	for _, tc := range cases {
		got := CapsOf(tc.n)
		if got != tc.want || got.String() != tc.str {
			t.Errorf("CapsOf(%+v) = %+v %q, want %+v %q", tc.n, got, got.String(), tc.want, tc.str)
		}
	}
	if (Caps{}).String() != "" {
		t.Error("an empty summary prints")
	}
}

// The summary of a runtime with an absurd version stays small enough to
// share memberlist's 512 bytes of metadata with the RPC address.
func TestCapsFitsTheMetadata(t *testing.T) {
	n := capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: strings.Repeat("9", 600)}, Checkpoint: true, Restore: capability.RestorePod,
		CPUFlags: make([]string, 200)}
	b, err := json.Marshal(struct {
		RPC  string `json:"rpc"`
		Caps Caps   `json:"caps"`
	}{"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", CapsOf(n)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 512/2 {
		t.Errorf("metadata with caps = %d bytes, want at most half of 512: %s", len(b), b)
	}
}
