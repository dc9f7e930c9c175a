package state

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
)

var (
	rtContainerd = capability.Runtime{Name: "containerd", Version: "2.1.9"}
	rtCRIO       = capability.Runtime{Name: "cri-o", Version: "1.36.3"}
	flagsBig     = []string{"avx", "avx2", "avx512f", "sse4_2"}
	flagsSmall   = []string{"avx", "avx2", "sse4_2"}
)

func caps(rt capability.Runtime, path capability.RestorePath, flags ...string) capability.Node {
	return capability.Node{Runtime: rt, Checkpoint: true, Restore: path, CPUFlags: flags, Kernel: "6.12.0"}
}

// capsFixture: the fixture with n1 (containerd, avx512f) and n2
// (containerd, no avx512f) reporting capabilities, and n3 reporting none.
func capsFixture(t *testing.T) *State {
	s := fixture()
	must(t, s, &NodeCapabilities{At: t0, Node: "n1", Caps: caps(rtContainerd, capability.RestoreCreate, flagsBig...)})
	must(t, s, &NodeCapabilities{At: t0, Node: "n2", Caps: caps(rtContainerd, capability.RestoreCreate, flagsSmall...)})
	return s
}

func TestNodeCapabilities(t *testing.T) {
	s := fixture()
	before := s.Clone()
	for _, tc := range []struct {
		name string
		cmd  *NodeCapabilities
		want error
	}{
		{"unknown node", &NodeCapabilities{At: t0, Node: "n9", Caps: caps(rtContainerd, capability.RestoreCreate)}, ErrUnknownNode},
		{"no node", &NodeCapabilities{At: t0, Caps: caps(rtContainerd, capability.RestoreCreate)}, ErrInvalid},
		{"too many flags", &NodeCapabilities{At: t0, Node: "n1", Caps: caps(rtContainerd, capability.RestoreCreate, make([]string, MaxCPUFlags+1)...)}, ErrInvalid},
		{"a huge flag", &NodeCapabilities{At: t0, Node: "n1", Caps: caps(rtContainerd, capability.RestoreCreate, strings.Repeat("x", 65))}, ErrInvalid},
		{"a huge reason", &NodeCapabilities{At: t0, Node: "n1", Caps: capability.Node{Restore: capability.RestoreNone, RestoreReason: strings.Repeat("x", 1025)}}, ErrInvalid},
	} {
		if err := s.Apply(tc.cmd); !errors.Is(err, tc.want) {
			t.Errorf("%s: Apply = %v, want %v", tc.name, err, tc.want)
		}
	}
	if !reflect.DeepEqual(s, before) {
		t.Fatal("refused reports changed the state")
	}
	at := t0.Add(time.Minute)
	cmd := &NodeCapabilities{At: at, Node: "n1", Caps: caps(rtContainerd, capability.RestoreCreate, "sse4_2", "avx", "avx", "")}
	must(t, s, cmd)
	n := s.Nodes["n1"]
	if want := []string{"avx", "sse4_2"}; n.Caps == nil || !reflect.DeepEqual(n.Caps.CPUFlags, want) {
		t.Fatalf("recorded %+v, want flags %q", n.Caps, want)
	}
	if n.CPUDigest != capability.FlagsDigest([]string{"avx", "sse4_2"}) || !n.CapsAt.Equal(at) || n.RPCAddr != "n1:7947" {
		t.Fatalf("node record %+v: digest, time or address wrong", n)
	}
	// The command's flags are not aliased by the state.
	cmd.Caps.CPUFlags[0] = "changed"
	if n.Caps.CPUFlags[0] != "avx" {
		t.Fatal("the state shares the command's flags")
	}
	// A later report replaces the earlier one.
	must(t, s, &NodeCapabilities{At: at, Node: "n1", Caps: capability.Node{Restore: capability.RestoreNone, RestoreReason: "off"}})
	if n := s.Nodes["n1"]; n.Caps.CanRestore() || n.CPUDigest != "" {
		t.Fatalf("second report not recorded: %+v", n)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestCapabilitiesSurviveSnapshotAndClone(t *testing.T) {
	s := capsFixture(t)
	must(t, s, &CommitCheckpoint{At: t0, ID: wRun, Node: "n1", Epoch: 2,
		Checkpoint: Checkpoint{Seq: 5, SHA256: "sha-5", Size: 500, Runtime: rtContainerd, CPU: capability.FlagsDigest(flagsBig)}})
	var b bytes.Buffer
	if err := s.WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(&b)
	if err != nil {
		t.Fatalf("ReadSnapshot: %v", err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("restored state differs:\n got %s\nwant %s", dump(got), dump(s))
	}
	if cp := got.Workloads[wRun].Checkpoint(5); cp.Runtime != rtContainerd || cp.TakenOn != "n1" {
		t.Fatalf("checkpoint needs lost: %+v", cp)
	}
	c := s.Clone()
	c.Nodes["n1"].Caps.CPUFlags[0] = "changed"
	if s.Nodes["n1"].Caps.CPUFlags[0] != "avx" {
		t.Fatal("Clone shares the CPU flags")
	}
	// A snapshot whose digest does not match the flags is refused.
	bad := s.Clone()
	bad.Nodes["n2"].CPUDigest = capability.FlagsDigest(flagsBig)
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), `node "n2"`) {
		t.Fatalf("Validate = %v, want the wrong digest of n2", err)
	}
}

func TestCommitCheckpointNeeds(t *testing.T) {
	s := capsFixture(t)
	before := s.Clone()
	bad := Checkpoint{Seq: 5, SHA256: "sha-5", Runtime: rtContainerd, CPU: "not-a-digest"}
	if err := s.Apply(&CommitCheckpoint{At: t0, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a malformed digest: %v, want ErrInvalid", err)
	}
	if !reflect.DeepEqual(s, before) {
		t.Fatal("refused commit changed the state")
	}
	// The digest is of the committing node's flags, whatever TakenOn says.
	must(t, s, &CommitCheckpoint{At: t0, ID: wRun, Node: "n1", Epoch: 2,
		Checkpoint: Checkpoint{Seq: 5, SHA256: "sha-5", Runtime: rtContainerd, CPU: capability.FlagsDigest(flagsBig), TakenOn: "n2"}})
	if cp := s.Workloads[wRun].Checkpoint(5); cp.TakenOn != "n1" {
		t.Fatalf("TakenOn = %q, want the committing node n1", cp.TakenOn)
	}
	// A checkpoint without needs stays as it was.
	must(t, s, &CommitCheckpoint{At: t0, ID: wRun, Node: "n1", Epoch: 2, Checkpoint: Checkpoint{Seq: 6, SHA256: "sha-6"}})
	if cp := s.Workloads[wRun].Checkpoint(6); cp.RecordsNeeds() || cp.TakenOn != "" {
		t.Fatalf("needs recorded for a checkpoint without: %+v", cp)
	}
}

// TestNodeCapabilitiesRefusesUnknownRestorePath: a node may not claim a
// restore path crfailoverd does not know (which would count as able to
// restore).
func TestNodeCapabilitiesRefusesUnknownRestorePath(t *testing.T) {
	s := capsFixture(t)
	err := s.Apply(&NodeCapabilities{At: t0, Node: "n2", Caps: caps(rtContainerd, capability.RestorePath("bogus"))})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `restore path "bogus"`) {
		t.Errorf("NodeCapabilities with restore path bogus: %v; want ErrInvalid naming it", err)
	}
}

func TestCanRestore(t *testing.T) {
	s := capsFixture(t)
	s.Nodes["n4"] = &Node{Name: "n4"}
	must(t, s, &NodeCapabilities{At: t0, Node: "n3", Caps: caps(rtCRIO, capability.RestoreCreate, flagsBig...)})
	must(t, s, &NodeCapabilities{At: t0, Node: "n4", Caps: capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.3.7"},
		Restore: capability.RestoreNone, RestoreReason: "enable_experimental_restore_via_create is off", CPUFlags: flagsBig}})
	s.Nodes["n5"] = &Node{Name: "n5"} // never reported
	big := &Checkpoint{Seq: 1, Runtime: rtContainerd, CPU: capability.FlagsDigest(flagsBig), TakenOn: "n1"}
	small := &Checkpoint{Seq: 2, Runtime: rtContainerd, CPU: capability.FlagsDigest(flagsSmall), TakenOn: "n2"}
	crio := &Checkpoint{Seq: 3, Runtime: rtCRIO, CPU: capability.FlagsDigest(flagsBig), TakenOn: "n3"}
	old := &Checkpoint{Seq: 4}
	lost := &Checkpoint{Seq: 5, Runtime: rtContainerd, CPU: capability.FlagsDigest([]string{"gone"}), TakenOn: "n1"}
	for _, tc := range []struct {
		node string
		cp   *Checkpoint
		want string // "" can; else part of why not
	}{
		{"n1", big, ""},
		{"n2", big, "its CPU lacks avx512f"},
		{"n1", small, ""},
		{"n2", small, ""},
		{"n3", big, "it runs cri-o 1.36.3, the checkpoint was taken by containerd 2.1.9"},
		{"n1", crio, "it runs containerd 2.1.9, the checkpoint was taken by cri-o 1.36.3"},
		{"n3", crio, ""},
		{"n4", small, "cannot restore: enable_experimental_restore_via_create is off"},
		{"n4", old, "cannot restore"},
		{"n5", big, "it has not reported what its runtime can restore"},
		{"n5", old, ""},
		{"n1", old, ""},
		{"n9", old, "not a node of the cluster"},
		// The digest no node records any more (the taking node's CPU
		// changed): only a node with those very flags could be sure, and
		// none reports them.
		{"n2", lost, "whose flags the cluster no longer records"},
		{"n1", lost, "whose flags the cluster no longer records"},
	} {
		ok, why := s.CanRestore(tc.node, tc.cp)
		if tc.want == "" && (!ok || why != "") || tc.want != "" && (ok || !strings.Contains(why, tc.want)) {
			t.Errorf("CanRestore(%s, #%d) = %t, %q; want %q", tc.node, tc.cp.Seq, ok, why, tc.want)
		}
	}
	if _, known := s.Needs(lost); known {
		t.Error("Needs of an unrecorded digest: known")
	}
	// The flags are found on another node with the same digest when the
	// node that took it changed.
	must(t, s, &NodeCapabilities{At: t0, Node: "n1", Caps: caps(rtContainerd, capability.RestoreCreate, "sse")})
	need, known := s.Needs(crio)
	if !known || !reflect.DeepEqual(need.CPUFlags, flagsBig) {
		t.Errorf("Needs = %+v, %t; want n3's flags", need, known)
	}
}

func TestAtRisk(t *testing.T) {
	s := capsFixture(t)
	must(t, s, &NodeCapabilities{At: t0, Node: "n3", Caps: caps(rtCRIO, capability.RestoreCreate, flagsBig...)})
	w := func(owner string, status Status, cps ...Checkpoint) *Workload {
		return &Workload{ID: "x/y/z", Owner: owner, Epoch: 1, Status: status, Checkpoints: cps}
	}
	big := func(seq uint64, holders ...string) Checkpoint {
		c := cp(seq, holders...)
		c.Runtime, c.CPU, c.TakenOn = rtContainerd, capability.FlagsDigest(flagsBig), "n1"
		return c
	}
	for _, tc := range []struct {
		name string
		w    *Workload
		want string // "" not at risk
	}{
		{"a capable replica", w("n2", StatusRunning, big(2, "n2", "n3"), big(1, "n1", "n2")), ""},
		{"an old checkpoint on a node that has not reported", w("n1", StatusRunning, cp(1, "n1", "n2")), ""},
		{"only incapable replicas", w("n1", StatusRunning, big(2, "n1", "n2", "n3")),
			"at risk: no capable node holds a checkpoint (n2: its CPU lacks avx512f (a restored process would crash with SIGILL); n3: it runs cri-o 1.36.3, the checkpoint was taken by containerd 2.1.9 (archives are runtime-specific))"},
		{"no replica", w("n1", StatusRunning, big(2, "n1")), "at risk: no capable node holds a checkpoint (no node but the owner n1 holds one)"},
		{"no checkpoint yet", w("n1", StatusRunning), ""},
		{"failed", &Workload{ID: "x/y/z", Epoch: 1, Status: StatusFailed, Checkpoints: []Checkpoint{big(2, "n2")}}, ""},
	} {
		risk, why := s.AtRisk(tc.w)
		if risk != (tc.want != "") || why != tc.want {
			t.Errorf("%s: AtRisk = %t, %q; want %q", tc.name, risk, why, tc.want)
		}
	}
}

func TestUnplaceable(t *testing.T) {
	s := fixture()
	before := s.Clone()
	for _, tc := range []struct {
		cmd  *Unplaceable
		want error
	}{
		{&Unplaceable{At: t0, ID: wRun, Epoch: 1, Reason: "r"}, ErrStale},
		{&Unplaceable{At: t0, ID: wFailed, Epoch: 4, Reason: "r"}, ErrStatus},
		{&Unplaceable{At: t0, ID: "no/such/w", Epoch: 1, Reason: "r"}, ErrUnknownWorkload},
		{&Unplaceable{At: t0, ID: wRun, Epoch: 2}, ErrInvalid},
	} {
		if err := s.Apply(tc.cmd); !errors.Is(err, tc.want) {
			t.Errorf("Apply(%+v) = %v, want %v", tc.cmd, err, tc.want)
		}
	}
	if !reflect.DeepEqual(s, before) {
		t.Fatal("refused commands changed the state")
	}
	must(t, s, &Unplaceable{At: t0, ID: wRun, Epoch: 2, Reason: "no node can restore it: n2: x"})
	want := before.Clone()
	want.Workloads[wRun].LastError = "no node can restore it: n2: x"
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("Unplaceable changed more than LastError:\n got %s\nwant %s", dump(s), dump(want))
	}
	// An older node skips it: the type has the ignore flag.
	if TypeUnplaceable&IgnoreUnknownFlag == 0 || TypeNodeCapabilities&IgnoreUnknownFlag != 0 {
		t.Fatal("Unplaceable must be skippable, NodeCapabilities must not")
	}
}

// TestClampCapabilities: what a node would report beyond the limits is cut
// to what NodeCapabilities accepts, so the report is not refused for ever.
func TestClampCapabilities(t *testing.T) {
	s := capsFixture(t)
	long := strings.Repeat("x", 5000)
	flags := []string{strings.Repeat("f", 100)}
	for i := 0; i < MaxCPUFlags+10; i++ {
		flags = append(flags, fmt.Sprintf("flag%d", i))
	}
	c := caps(rtContainerd, capability.RestoreNone)
	c.RestoreReason, c.Kernel, c.CPUFlags = long, long, flags
	if err := s.Apply(&NodeCapabilities{At: t0, Node: "n2", Caps: c}); err == nil {
		t.Fatal("over-long capabilities accepted: the clamp would not be needed")
	}
	cl := ClampCapabilities(c)
	if err := s.Apply(&NodeCapabilities{At: t0, Node: "n2", Caps: cl}); err != nil {
		t.Fatalf("clamped capabilities refused: %v", err)
	}
	if len(cl.RestoreReason) > maxCapsText || !strings.HasSuffix(cl.RestoreReason, "...") || len(cl.CPUFlags) != MaxCPUFlags || cl.CPUFlags[0] != "flag0" {
		t.Errorf("clamped: reason %d bytes, %d flags (first %q)", len(cl.RestoreReason), len(cl.CPUFlags), cl.CPUFlags[0])
	}
}
