package state

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"

	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// allCommands has one command of every known type with every field set.
func allCommands() []Command {
	cp := Checkpoint{Seq: 7, SHA256: "abc", Size: 1234, Created: t0.Add(-time.Minute), Holders: []string{"n1"}}
	return []Command{
		&RegisterWorkload{At: t0, ID: "ns/p/c", Node: "n1", Interval: 10 * time.Second, Config: []byte(`{"x":1}`), CopyEpoch: 3},
		&CommitCheckpoint{At: t0, ID: "ns/p/c", Node: "n1", Epoch: 3, Checkpoint: cp},
		&AddHolder{At: t0, ID: "ns/p/c", Seq: 7, SHA256: "abc", Size: 1234, Node: "n2"},
		&DropHolder{At: t0, ID: "ns/p/c", Seq: 7, SHA256: "abc", Node: "n2", Reason: "sha256 mismatch"},
		&Place{At: t0, ID: "ns/p/c", Owner: "n2", Epoch: 4, Seq: 7, Reason: "node n1 dead"},
		&RestoreDone{At: t0, ID: "ns/p/c", Node: "n2", Epoch: 4, Seq: 7, OK: false, Error: "criu: boom"},
		&AppFailed{At: t0, ID: "ns/p/c", Node: "n2", Epoch: 4, Reason: "probe failed", Kind: FailProbe},
		&GiveUp{At: t0, ID: "ns/p/c", Epoch: 4, Reason: "no candidate"},
		&RemoveWorkload{At: t0, ID: "ns/p/c"},
		&UpsertNode{At: t0, Name: "n3", RPCAddr: "10.0.0.3:7947"},
		&RemoveNode{At: t0, Name: "n3"},
		&NodeCapabilities{At: t0, Node: "n2", Caps: capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.1.9"},
			Checkpoint: true, Restore: capability.RestoreCreate, Kernel: "6.12.0", CRIU: "4.2.1", CPUFlags: []string{"avx", "sse4_2"}, Checked: t0}},
		&Unplaceable{At: t0, ID: "ns/p/c", Epoch: 4, Reason: "no node can restore it: n3: it runs cri-o 1.36.3"},
		&RetryWorkload{At: t0, ID: "ns/p/c", Epoch: 5, Reason: "retry after giving up 30s ago"},
		&MarkCheckpointBad{At: t0, ID: "ns/p/c", Seq: 7, SHA256: "abc", Why: "failed 900ms after its restore"},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	seen := map[CommandType]bool{}
	for _, cmd := range allCommands() {
		b, err := Encode(cmd)
		if err != nil {
			t.Fatalf("Encode(%T): %v", cmd, err)
		}
		if CommandType(b[0]) != cmd.Type() {
			t.Errorf("Encode(%T): type byte %d, want %d", cmd, b[0], cmd.Type())
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(%T)): %v", cmd, err)
		}
		if !reflect.DeepEqual(got, cmd) {
			t.Errorf("round trip of %T:\n got %#v\nwant %#v", cmd, got, cmd)
		}
		seen[cmd.Type()] = true
	}
	// Every row of the dispatch table is covered, and decodes to its own type.
	for typ, c := range commands {
		if !seen[typ] {
			t.Errorf("command type %d (%s) not covered by allCommands", typ, c.name)
		}
		// Only advisory records may be skipped by a node that does not know
		// them.
		if typ&IgnoreUnknownFlag != 0 && typ != TypeUnplaceable {
			t.Errorf("known command type %d has the ignore flag", typ)
		}
		cmd, err := c.decode([]byte(`{}`))
		if err != nil || cmd.Type() != typ {
			t.Errorf("table row %d decodes {} to %v (type %v), %v", typ, cmd, cmd.Type(), err)
		}
		if typ.String() != c.name {
			t.Errorf("CommandType(%d).String() = %q, want %q", typ, typ.String(), c.name)
		}
	}
	if got := CommandType(99).String(); got != "type-99" {
		t.Errorf("unknown type String() = %q", got)
	}
}

func TestDecodeGarbage(t *testing.T) {
	place := byte(TypePlace)
	for _, tc := range []struct {
		name string
		in   []byte
		want error // nil: any error
	}{
		{"nil", nil, nil},
		{"empty", []byte{}, nil},
		{"type zero", []byte{0, '{', '}'}, ErrUnknownCommand},
		{"unknown type without flag", append([]byte{99}, `{"id":"x"}`...), ErrUnknownCommand},
		{"unknown type 127", []byte{127}, ErrUnknownCommand},
		{"no payload", []byte{place}, nil},
		{"not json", append([]byte{place}, "hello"...), nil},
		{"truncated json", append([]byte{place}, `{"id":"x"`...), nil},
		{"trailing data", append([]byte{place}, `{"id":"x"} {}`...), nil},
		{"wrong field type", append([]byte{place}, `{"epoch":"four"}`...), nil},
		{"array payload", append([]byte{place}, `[1,2]`...), nil},
		{"json text without type byte", []byte(`{"id":"x"}`), ErrUnknownCommand}, // '{' is 123: no flag
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := Decode(tc.in)
			if err == nil {
				t.Fatalf("Decode(%q) = %#v, want an error", tc.in, cmd)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Decode(%q) error %v, want %v", tc.in, err, tc.want)
			}
		})
	}
}

func TestIgnorableFlag(t *testing.T) {
	s := fixture()
	before := s.Clone()

	// A future ignorable type decodes to Unknown, applies as a no-op and
	// encodes back unchanged.
	entry := append([]byte{byte(IgnoreUnknownFlag) | 5}, `{"some":"future record"}`...)
	cmd, err := Decode(entry)
	if err != nil {
		t.Fatalf("Decode of an unknown ignorable type: %v", err)
	}
	u, ok := cmd.(*Unknown)
	if !ok || u.T != IgnoreUnknownFlag|5 {
		t.Fatalf("Decode = %#v, want *Unknown of type 133", cmd)
	}
	if err := s.Apply(cmd); err != nil {
		t.Errorf("Apply(unknown ignorable) = %v, want nil", err)
	}
	if !reflect.DeepEqual(s, before) {
		t.Errorf("Apply(unknown ignorable) changed the state")
	}
	again, err := Encode(cmd)
	if err != nil || !bytes.Equal(again, entry) {
		t.Errorf("Encode(Unknown) = %q, %v; want %q", again, err, entry)
	}
	// The payload is copied: the entry's buffer may be reused.
	entry[1] = 'X'
	if u.Payload[0] != '{' {
		t.Errorf("Unknown shares the entry's buffer")
	}

	// Without the flag an unknown type is an error, at Decode and at Apply.
	if _, err := Decode(append([]byte{42}, `{}`...)); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("Decode(type 42) = %v, want ErrUnknownCommand", err)
	}
	if err := s.Apply(&Unknown{T: 42}); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("Apply(Unknown type 42) = %v, want ErrUnknownCommand", err)
	}
	if _, err := Encode(&Unknown{T: 200, Payload: []byte(`{}`)}); err != nil {
		t.Errorf("Encode(Unknown type 200) = %v", err)
	}
	if !reflect.DeepEqual(s, before) {
		t.Errorf("failed applies changed the state")
	}
}

func TestEncodeRejects(t *testing.T) {
	if _, err := Encode(nil); err == nil {
		t.Error("Encode(nil) succeeded")
	}
	if _, err := Encode((*Unknown)(nil)); err == nil {
		t.Error("Encode(nil *Unknown) succeeded")
	}
	if err := New().Apply(nil); err == nil {
		t.Error("Apply(nil) succeeded")
	}
	if err := New().Apply((*Place)(nil)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply(nil *Place) = %v, want ErrInvalid", err)
	}
}

// FuzzDecode: Decode never panics, and what it accepts encodes to an entry
// that decodes to the same command.
func FuzzDecode(f *testing.F) {
	for _, cmd := range allCommands() {
		b, err := Encode(cmd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{200, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := Decode(b)
		if err != nil {
			return
		}
		b2, err := Encode(cmd)
		if err != nil {
			t.Fatalf("Encode(Decode(%q)): %v", b, err)
		}
		cmd2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))): %v", b, err)
		}
		if !reflect.DeepEqual(cmd, cmd2) {
			t.Fatalf("re-encoding changed the command: %#v vs %#v", cmd, cmd2)
		}
		s := fixture()
		_ = s.Apply(cmd) // must not panic
		if err := s.Validate(); err != nil {
			t.Fatalf("Apply(%#v) broke the state: %v", cmd, err)
		}
	})
}
