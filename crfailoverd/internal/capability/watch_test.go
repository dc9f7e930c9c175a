package capability

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// scripted answers Detect's findings one after another (the last again
// when they run out).
type scripted struct {
	mu    sync.Mutex
	nodes []Node
	errs  []error
	calls int
}

func (s *scripted) detect(context.Context) (Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.nodes)-1)
	s.calls++
	var err error
	if i < len(s.errs) {
		err = s.errs[i]
	}
	return s.nodes[i], err
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestWatchSignalsChangesOnly(t *testing.T) {
	can := Node{Runtime: Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true, Restore: RestoreCreate, CPUFlags: []string{"fpu"}, Checked: time.Unix(1, 0)}
	canLater := can
	canLater.Checked = time.Unix(2, 0) // only the time differs
	cannot := Node{Runtime: Runtime{Name: "containerd", Version: "2.3.4"}, Checkpoint: true, Restore: RestoreNone, RestoreReason: "turned off: set X", CPUFlags: []string{"fpu"}}
	otherFlags := can
	otherFlags.CPUFlags = []string{"fpu", "sse2"}
	s := &scripted{nodes: []Node{can, canLater, cannot, cannot, otherFlags}}
	var logs bytes.Buffer
	w := NewWatch(s.detect, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()

	if w.Current().CanRestore() {
		t.Fatal("before the first detection the node must not claim it can restore")
	}
	steps := []struct {
		name        string
		wantChanged bool
		want        Node
	}{
		{"first detection", true, can},
		{"same but for the time", false, canLater},
		{"restore turned off", true, cannot},
		{"still off", false, cannot},
		{"flags changed", true, otherFlags},
	}
	for _, st := range steps {
		sig := w.Changes()
		got := w.Refresh(ctx)
		if got != st.wantChanged || closed(sig) != st.wantChanged {
			t.Errorf("%s: Refresh = %v, signal closed = %v; want %v", st.name, got, closed(sig), st.wantChanged)
		}
		if cur := w.Current(); !Same(cur, st.want) || !cur.Checked.Equal(st.want.Checked) {
			t.Errorf("%s: Current = %+v, want %+v", st.name, cur, st.want)
		}
		if closed(w.Changes()) {
			t.Errorf("%s: the next signal is already closed", st.name)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "level=WARN msg=\"this node cannot restore checkpoints: turned off: set X\""); n != 1 {
		t.Errorf("cannot-restore warnings = %d, want 1 for one change:\n%s", n, out)
	}
	if n := strings.Count(out, "runtime capabilities changed"); n != 2 {
		t.Errorf("change logs = %d, want 2:\n%s", n, out)
	}
}

// Current hands out a copy: a caller changing its flags does not change
// the holder's.
func TestWatchCurrentIsACopy(t *testing.T) {
	s := &scripted{nodes: []Node{{Restore: RestoreCreate, CPUFlags: []string{"fpu"}}}}
	w := NewWatch(s.detect, nil)
	w.Refresh(context.Background())
	w.Current().CPUFlags[0] = "changed"
	if got := w.Current().CPUFlags[0]; got != "fpu" {
		t.Errorf("flags = %q after a caller's change", got)
	}
}

// A detection error is logged at warning once while it stays the same;
// the node it found is still taken.
func TestWatchErrorLoggedOnce(t *testing.T) {
	n := Node{Restore: RestoreCreate}
	e := errors.New("ask CRIU its version: exec format error")
	s := &scripted{nodes: []Node{n}, errs: []error{e, e, e}}
	var logs bytes.Buffer
	w := NewWatch(s.detect, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 3 {
		w.Refresh(context.Background())
	}
	if c := strings.Count(logs.String(), "level=WARN"); c != 1 {
		t.Errorf("warnings = %d, want 1:\n%s", c, logs.String())
	}
	if !w.Current().CanRestore() {
		t.Error("the node found despite the error was not taken")
	}
}

// Run detects at start, and stops with its context.
func TestWatchRunDetectsAtStart(t *testing.T) {
	s := &scripted{nodes: []Node{{Restore: RestoreCreate}}}
	w := NewWatch(s.detect, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sig := w.Changes()
	go func() { done <- w.Run(ctx, time.Hour) }()
	select {
	case <-sig:
	case <-time.After(10 * time.Second):
		t.Fatal("no detection at start")
	}
	if !w.Current().CanRestore() {
		t.Error("Current after the start detection")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}
