package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/metrics"
)

// fakeAsker answers as containerd does; restoreOn is its
// enable_experimental_restore_via_create, changeable between detections.
type fakeAsker struct {
	version   string
	restoreOn chan bool // the next detections' setting (the last one kept)
	cur       bool
}

func (f *fakeAsker) RuntimeVersion(context.Context) (string, string, error) {
	return "containerd", f.version, nil
}

func (f *fakeAsker) CheckpointConfig(context.Context) (capability.RuntimeConfig, error) {
	select {
	case f.cur = <-f.restoreOn:
	default:
	}
	on, criu := f.cur, true
	return capability.RuntimeConfig{Reported: true, EnableCRIU: &criu, RestoreViaCreate: &on}, nil
}

func (f *fakeAsker) RestorePodImplemented(context.Context) (bool, error) { return false, nil }

type fakeHost struct{}

func (fakeHost) KernelRelease() (string, error)              { return "6.18.44", nil }
func (fakeHost) CPUInfo() ([]byte, error)                    { return []byte("flags\t: fpu sse2\n"), nil }
func (fakeHost) CRIUVersion(context.Context) (string, error) { return "", errors.New("no criu here") }

func gauges(t *testing.T, rec *metrics.Recorder) string {
	t.Helper()
	srv := httptest.NewServer(rec.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "crfailoverd_restore_capable{") || strings.HasPrefix(l, "crfailoverd_checkpoint_capable ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// The component detects at start, sets the gauges, and follows a change;
// status, the STATUS line and the gauges say the same.
func TestCapabilitiesComponent(t *testing.T) {
	rec := metrics.New(metrics.Options{})
	asker := &fakeAsker{version: "2.3.4", restoreOn: make(chan bool, 1)}
	var logs bytes.Buffer
	w, comp := newCapabilitiesWith(capability.Deps{Runtime: asker, Host: fakeHost{}}, rec, slog.New(slog.NewTextHandler(&logs, nil)))
	if capabilitiesOf(w) != nil || capabilitiesStatus(w) != "" {
		t.Fatal("capabilities reported before the first detection")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	first := w.Changes()
	go func() { done <- comp.run(ctx) }()
	<-first
	waitFor(t, func() bool { return strings.Contains(gauges(t, rec), "crfailoverd_checkpoint_capable 1") })
	if got := gauges(t, rec); !strings.Contains(got, `crfailoverd_restore_capable{path="create"} 0`) {
		t.Errorf("gauges with restore off:\n%s", got)
	}
	st := capabilitiesStatus(w)
	if !strings.HasPrefix(st, "; cannot restore: containerd 2.3.4 has restore via CreateContainer turned off") ||
		!strings.Contains(st, `enable_experimental_restore_via_create = true`) {
		t.Errorf("STATUS suffix = %q", st)
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"this node cannot restore checkpoints") {
		t.Errorf("no cannot-restore warning:\n%s", logs.String())
	}

	// The operator turns restore on; the next refresh sees it.
	asker.restoreOn <- true
	next := w.Changes()
	if !w.Refresh(ctx) {
		t.Fatal("turning restore on was not a change")
	}
	<-next
	waitFor(t, func() bool { return strings.Contains(gauges(t, rec), `crfailoverd_restore_capable{path="create"} 1`) })
	if st := capabilitiesStatus(w); st != "" {
		t.Errorf("STATUS suffix of a capable node = %q", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("component returned %v", err)
	}
}

// waitFor polls cond (the gauges follow the watch in their own goroutine).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCapabilityDepsKubelet(t *testing.T) {
	for _, tc := range []struct {
		mode, method string
		want         bool
	}{
		{"cri", "cri", false},
		{"cri", "auto", false},
		{"cri", "kubelet", true},
		{"static-pod", "auto", true},
	} {
		var c config.Config
		c.Runtime.RestoreMode, c.Checkpoint.Method = tc.mode, tc.method
		if got := capabilityDeps(c, nil, true).Kubelet; got != tc.want {
			t.Errorf("restore_mode %s, method %s: kubelet = %v, want %v", tc.mode, tc.method, got, tc.want)
		}
	}
}

func TestStatusPrintsCapabilities(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	s := api.Status{Node: "n1", Runtime: "containerd 2.3.4", Started: now.Add(-time.Minute),
		Capabilities: &capability.Node{Runtime: capability.Runtime{Name: "containerd", Version: "2.3.4"}, Checkpoint: true,
			Restore: capability.RestoreNone, RestoreReason: "turned off: set X", Kernel: "6.18.44", CRIU: "4.2.1",
			CPUFlags: []string{"fpu", "sse2"}, Checked: now}}
	var b bytes.Buffer
	if err := writeStatus(&b, s, now); err != nil {
		t.Fatal(err)
	}
	want := "Capabilities: containerd 2.3.4, checkpoint yes, restore none, kernel 6.18.44, CRIU 4.2.1, 2 CPU flags: turned off: set X\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("status:\n%s\nwant the line\n%s", b.String(), want)
	}
	b.Reset()
	s.Capabilities = nil
	if err := writeStatus(&b, s, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Capabilities:") {
		t.Errorf("a Capabilities line without capabilities:\n%s", b.String())
	}
	// JSON carries them under "capabilities".
	s.Capabilities = &capability.Node{Restore: capability.RestoreCreate, CPUFlags: []string{"fpu"}}
	j, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back api.Status
	if err := json.Unmarshal(j, &back); err != nil || back.Capabilities == nil || back.Capabilities.Restore != capability.RestoreCreate {
		t.Errorf("JSON round trip: %s -> %+v, %v", j, back.Capabilities, err)
	}
}
