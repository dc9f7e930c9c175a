package membership

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

// capsOn returns the caps that from sees member name gossip (nil: none),
// and whether from knows name at all.
func capsOn(from *node, name string) (*Caps, bool) {
	for _, m := range from.Members() {
		if m.Name == name {
			return m.Caps, true
		}
	}
	return nil, false
}

// TestSetCapsGossiped: caps set on a member reach the other member's view
// of it (and its own), beside an unchanged RPC address, and a change of
// caps replaces them there.
func TestSetCapsGossiped(t *testing.T) {
	a := startNode(t, "a", 7101, nil)
	b := startNode(t, "b", 7102, nil, a.GossipAddr())
	eventually(t, 10*time.Second, "a and b see each other alive", sees([]*node{a, b}, map[string]Status{"a": StatusAlive, "b": StatusAlive}))
	if c, _ := capsOn(b, "a"); c != nil {
		t.Fatalf("before SetCaps b sees a gossip caps %+v, want none", *c)
	}

	for _, want := range []Caps{
		{Runtime: "containerd 2.3.7", Checkpoint: true, Restore: "create"},
		{Runtime: "containerd 2.3.7", Checkpoint: true, Restore: "none"}, // the option turned off
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := a.SetCaps(ctx, want)
		cancel()
		if err != nil {
			t.Fatalf("SetCaps(%+v): %v", want, err)
		}
		eventually(t, 10*time.Second, "b seeing a's caps "+want.String(), func() bool {
			c, _ := capsOn(b, "a")
			return c != nil && *c == want
		})
		if c, _ := capsOn(a, "a"); c == nil || *c != want {
			t.Errorf("a sees its own caps as %v, want %+v", c, want)
		}
		for _, m := range b.Members() {
			if m.Name == "a" && m.RPCAddr != a.RPCAddr() {
				t.Errorf("after SetCaps b sees a's RPC address %q, want %q", m.RPCAddr, a.RPCAddr())
			}
		}
	}
}

// TestSetCapsRefusesOversizedMeta: caps that would push the metadata past
// memberlist's 512 bytes are refused and the gossiped metadata stays as it
// was; a cancelled context sets nothing either.
func TestSetCapsRefusesOversizedMeta(t *testing.T) {
	m, err := Start(Options{Name: "a", BindAddr: "127.0.0.1:0", RPCPort: 7103, Profile: ProfileLocal})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()
	d := &delegate{m: m}
	good := Caps{Runtime: "cri-o 1.36.3", Checkpoint: true, Restore: "create"}
	if err := m.SetCaps(context.Background(), good); err != nil {
		t.Fatalf("SetCaps(%+v): %v", good, err)
	}
	before := string(d.NodeMeta(memberlist.MetaMaxSize))

	big := Caps{Runtime: strings.Repeat("x", memberlist.MetaMaxSize), Restore: "create"}
	err = m.SetCaps(context.Background(), big)
	if err == nil || !strings.Contains(err.Error(), "at most 512") {
		t.Fatalf("SetCaps with a %d-byte runtime: err %v, want a refusal naming memberlist's 512 bytes", len(big.Runtime), err)
	}
	if got := string(d.NodeMeta(memberlist.MetaMaxSize)); got != before {
		t.Errorf("after the refused SetCaps the metadata is %s, want it unchanged: %s", got, before)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other := Caps{Runtime: "containerd 2.4.2", Checkpoint: true, Restore: "native"}
	if err := m.SetCaps(ctx, other); err == nil {
		t.Errorf("SetCaps with a cancelled context: no error")
	}
	if got := string(d.NodeMeta(memberlist.MetaMaxSize)); got != before {
		t.Errorf("after a cancelled SetCaps the metadata is %s, want it unchanged: %s", got, before)
	}
}

// TestCapsOfFitsMeta: whatever a runtime reports, CapsOf's summary fits in
// the metadata beside the longest RPC address (a bracketed IPv6 address),
// even when JSON escapes every character of the runtime (6 bytes each).
func TestCapsOfFitsMeta(t *testing.T) {
	rpc := net.JoinHostPort("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "65535")
	for _, version := range []string{
		strings.Repeat("9", 4096),
		strings.Repeat("<", 4096), // \u003c each
		strings.Repeat("\x01", 4096),
		strings.Repeat("\xff", 4096), // invalid UTF-8: \ufffd each
	} {
		n := capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: version}, Checkpoint: true, Restore: capability.RestorePod}
		b, err := encodeMeta(Meta{RPCAddr: rpc, Caps: new(CapsOf(n))})
		if err != nil {
			t.Errorf("CapsOf with a %q... version: %v", version[:4], err)
			continue
		}
		var back Meta
		if err := json.Unmarshal(b, &back); err != nil || back.RPCAddr != rpc || back.Caps == nil || back.Caps.Restore != "restore-pod" {
			t.Errorf("metadata %s decodes to %+v (%v)", b, back, err)
		}
	}
}

// TestNodeMetaLimit: asked for less than the current metadata, NodeMeta
// returns the RPC address alone (valid JSON), never a cut document.
func TestNodeMetaLimit(t *testing.T) {
	m := &Membership{rpcAddr: "10.0.0.1:7947"}
	var err error
	if m.meta, err = encodeMeta(Meta{RPCAddr: m.rpcAddr, Caps: &Caps{Runtime: "containerd 2.1.9", Checkpoint: true, Restore: "create"}}); err != nil {
		t.Fatal(err)
	}
	d := &delegate{m: m}
	if got := d.NodeMeta(memberlist.MetaMaxSize); string(got) != string(m.meta) {
		t.Errorf("NodeMeta(512) = %s, want %s", got, m.meta)
	}
	got := d.NodeMeta(30)
	var meta Meta
	if err := json.Unmarshal(got, &meta); err != nil || meta.RPCAddr != m.rpcAddr || meta.Caps != nil {
		t.Errorf("NodeMeta(30) = %s, want {\"rpc\":%q} alone", got, m.rpcAddr)
	}
}

// TestRecordCaps: a member's caps come from its metadata; a daemon from
// before capabilities (no caps key) and unreadable metadata give none.
func TestRecordCaps(t *testing.T) {
	cases := []struct {
		name, meta string
		rpc        string
		caps       *Caps
	}{
		{"new", `{"rpc":"10.0.0.2:7947","caps":{"rt":"containerd 2.4.2","cp":true,"rs":"native"}}`, "10.0.0.2:7947",
			&Caps{Runtime: "containerd 2.4.2", Checkpoint: true, Restore: "native"}},
		{"old", `{"rpc":"10.0.0.3:7947"}`, "10.0.0.3:7947", nil},
		{"garbage", `{"rpc":`, "", nil},
	}
	m := &Membership{members: map[string]*Member{}, deadAddr: map[string]string{}, leaving: map[string]bool{}}
	for _, tc := range cases {
		m.record(&memberlist.Node{Name: tc.name, Addr: net.ParseIP("10.0.0.9"), Port: 7946, Meta: []byte(tc.meta)}, true)
		x := m.members[tc.name]
		if x.RPCAddr != tc.rpc || (x.Caps == nil) != (tc.caps == nil) || (x.Caps != nil && *x.Caps != *tc.caps) {
			t.Errorf("%s: recorded rpc %q caps %v, want %q %v", tc.name, x.RPCAddr, x.Caps, tc.rpc, tc.caps)
		}
	}
}

// TestSetCapsConcurrent: SetCaps from several goroutines while memberlist
// reads the metadata (run with -race); the last caps set are what a second
// member ends up seeing.
func TestSetCapsConcurrent(t *testing.T) {
	a := startNode(t, "a", 7104, nil)
	b := startNode(t, "b", 7105, nil, a.GossipAddr())
	eventually(t, 10*time.Second, "a and b see each other alive", sees([]*node{a, b}, map[string]Status{"a": StatusAlive, "b": StatusAlive}))
	var wg sync.WaitGroup
	d := &delegate{m: a.Membership}
	for i := range 8 {
		wg.Go(func() {
			c := Caps{Runtime: "containerd 2.3.7", Checkpoint: i%2 == 0, Restore: "create"}
			if err := a.SetCaps(context.Background(), c); err != nil {
				t.Errorf("SetCaps(%+v): %v", c, err)
			}
			_ = d.NodeMeta(memberlist.MetaMaxSize)
		})
	}
	wg.Wait()
	last := Caps{Runtime: "containerd 2.4.2", Checkpoint: true, Restore: "native"}
	if err := a.SetCaps(context.Background(), last); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b seeing a's last caps", func() bool {
		c, _ := capsOn(b, "a")
		return c != nil && *c == last
	})
}
