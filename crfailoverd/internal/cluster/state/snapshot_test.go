package state

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func snapshot(t *testing.T, s *State) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.WriteSnapshot(&b); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return b.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	for name, s := range map[string]*State{"empty": New(), "fixture": fixture()} {
		t.Run(name, func(t *testing.T) {
			b := snapshot(t, s)
			got, err := ReadSnapshot(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("ReadSnapshot: %v\n%s", err, b)
			}
			if !reflect.DeepEqual(got, s) {
				t.Errorf("restored state differs:\n got %s\nwant %s", dump(got), dump(s))
			}
			// Deterministic: the same state writes the same bytes.
			if again := snapshot(t, got); !bytes.Equal(again, b) {
				t.Errorf("snapshot of the restored state differs:\n%s\n%s", again, b)
			}
			// The restored state applies commands like the original.
			cmd := &Place{At: t0, ID: wRun, Owner: "n2", Epoch: 3, Seq: 4}
			errA, errB := s.Clone().Apply(cmd), got.Apply(cmd)
			if (errA == nil) != (errB == nil) {
				t.Errorf("Apply on original: %v, on restored: %v", errA, errB)
			}
		})
	}
}

func TestSnapshotFormat(t *testing.T) {
	b := snapshot(t, fixture())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if want := 1 + 3 + 5 + 1; len(lines) != want {
		t.Fatalf("%d lines, want %d (header, 3 nodes, 5 workloads, trailer):\n%s", len(lines), want, b)
	}
	if lines[0] != `{"format":"crfailoverd-state","version":1}` {
		t.Errorf("header %s", lines[0])
	}
	if !strings.HasPrefix(lines[1], `{"type":"node","node":{"name":"n1"`) || !strings.HasPrefix(lines[4], `{"type":"workload","workload":{"id":"ns/appfailed/c"`) {
		t.Errorf("records not typed and sorted:\n%s", b)
	}
	if lines[9] != `{"type":"end","nodes":3,"workloads":5}` {
		t.Errorf("trailer %s", lines[9])
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriteSnapshotError(t *testing.T) {
	if err := fixture().WriteSnapshot(&failWriter{n: 10}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("WriteSnapshot to a failing writer = %v", err)
	}
}

func TestReadSnapshotRejects(t *testing.T) {
	good := string(snapshot(t, fixture()))
	lines := strings.SplitAfter(good, "\n")
	header, trailer := lines[0], lines[len(lines)-2]
	node := `{"type":"node","node":{"name":"n1"}}` + "\n"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "truncated"},
		{"garbage", "\x00\x01garbage", "invalid character"},
		{"not json at all", "hello world", "invalid character"},
		{"other format", `{"format":"etcd","version":1}`, "not a crfailoverd state snapshot"},
		{"no format", `{"version":1}`, "not a crfailoverd state snapshot"},
		{"newer version", `{"format":"crfailoverd-state","version":2}`, "unsupported version 2"},
		{"version zero", `{"format":"crfailoverd-state"}`, "unsupported version 0"},
		{"header only", header, "truncated"},
		{"cut before the trailer", strings.Join(lines[:len(lines)-2], ""), "truncated"},
		{"cut inside a record", good[:len(good)/2], "truncated"},
		{"data after the trailer", good + "{}\n", "data after the trailer"},
		{"garbage after the trailer", good + "xyz", "data after the trailer"},
		{"unknown record type", header + `{"type":"job","job":{}}` + "\n" + trailer, "unknown or malformed record"},
		{"record without payload", header + `{"type":"node"}` + "\n", "unknown or malformed record"},
		{"record with two payloads", header + `{"type":"node","node":{"name":"a"},"workload":{"id":"b"}}` + "\n", "unknown or malformed record"},
		{"duplicate node", header + node + node, "node \"n1\" twice"},
		{"counts do not match", header + node + trailer, "trailer counts 3 nodes and 5 workloads"},
		{"invalid workload", header + `{"type":"workload","workload":{"id":"a/b/c","status":"running","epoch":1}}` + "\n" +
			`{"type":"end","workloads":1}` + "\n", "without an owner"},
		{"record is not an object", header + "[1,2,3]\n", "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ReadSnapshot(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("ReadSnapshot accepted it: %s", dump(s))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadSnapshot error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestSnapshotAfterApply: a state built by commands, snapshotted and
// restored, then both apply the same further commands and stay equal.
func TestSnapshotAfterApply(t *testing.T) {
	a := fixture()
	b, err := ReadSnapshot(bytes.NewReader(snapshot(t, a)))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range allCommands() {
		errA, errB := a.Apply(cmd), b.Apply(cmd)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%T: original %v, restored %v", cmd, errA, errB)
		}
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("diverged:\n%s\n%s", dump(a), dump(b))
	}
}
