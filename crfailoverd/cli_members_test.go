package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
)

// TestWriteMembers: the members table has a CAPABILITIES column, aligned
// under its header, with each member's gossiped summary or "-" for a
// member that gossips none; dead members say for how long.
func TestWriteMembers(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	ms := []api.Member{
		{Name: "n1", Addr: "10.0.0.1:7946", RPCAddr: "10.0.0.1:7947", Status: "alive", Raft: "Voter", Leader: true,
			Capabilities: "containerd 2.3.7 restore=create"},
		{Name: "n2", Addr: "10.0.0.2:7946", RPCAddr: "10.0.0.2:7947", Status: "dead", DeadSince: now.Add(-90 * time.Second),
			Raft: "Voter", Capabilities: "containerd 2.4.2 restore=none"},
		{Name: "n3", Addr: "10.0.0.3:7946", RPCAddr: "10.0.0.3:7947", Status: "alive"},
	}
	var b bytes.Buffer
	if err := writeMembers(&b, ms, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want a header and 3 rows:\n%s", len(lines), b.String())
	}
	col := strings.Index(lines[0], "CAPABILITIES")
	if col < 0 {
		t.Fatalf("no CAPABILITIES column in the header %q", lines[0])
	}
	want := []struct{ fields, caps string }{
		{"n1 alive 10.0.0.1:7946 10.0.0.1:7947 Voter *", "containerd 2.3.7 restore=create"},
		{"n2 dead (1m30s ago) 10.0.0.2:7946 10.0.0.2:7947 Voter -", "containerd 2.4.2 restore=none"},
		{"n3 alive 10.0.0.3:7946 10.0.0.3:7947 - -", "-"},
	}
	for i, w := range want {
		l := lines[i+1]
		if len(l) < col || strings.TrimSpace(l[col:]) != w.caps {
			t.Errorf("row %d: %q under CAPABILITIES, want %q:\n%s", i+1, l[min(col, len(l)):], w.caps, b.String())
			continue
		}
		if got := strings.Join(strings.Fields(l[:col]), " "); got != w.fields {
			t.Errorf("row %d: %q before CAPABILITIES, want %q", i+1, got, w.fields)
		}
	}
}
