package testbed

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWorkloadIndex: every name a copy of a workload can have on a node
// maps back to it, and nothing else does.
func TestWorkloadIndex(t *testing.T) {
	ws := soakWorkloads([]string{"n1", "n2", "n3"})
	for _, tc := range []struct {
		name                     string
		node, ns, pod, container string
		ann                      map[string]string
		want                     int
	}{
		{"original CRI pod", "n1", "default", "counter-a", "counter", nil, 0},
		{"restored CRI pod keeps its name", "n4", "default", "counter-b", "counter", map[string]string{"crfailoverd.io/epoch": "3"}, 1},
		{"kubelet's static pod name", "n3", "default", "bigstate-n3", "counter", nil, 2},
		{"static pod restored by crfailoverd", "n5", "default", "bigstate-n5", "counter", map[string]string{annWorkload: "default/bigstate/counter"}, 2},
		{"the annotation wins over the name", "n5", "default", "counter-a-n5", "counter", map[string]string{annWorkload: "default/counter-b/counter"}, 1},
		{"another node's suffix is not stripped", "n2", "default", "counter-a-n1", "counter", nil, -1},
		{"other namespace", "n1", "kube-system", "counter-a", "counter", nil, -1},
		{"other container", "n1", "default", "counter-a", "sidecar", nil, -1},
		{"unknown pod", "n1", "default", "counter", "counter", nil, -1},
		{"annotation naming no workload", "n1", "default", "counter-a", "counter", map[string]string{annWorkload: "default/x/counter"}, -1},
	} {
		if got := workloadIndex(ws, tc.node, tc.ns, tc.pod, tc.container, tc.ann); got != tc.want {
			t.Errorf("%s: workloadIndex(%s %s/%s/%s) = %d, want %d", tc.name, tc.node, tc.ns, tc.pod, tc.container, got, tc.want)
		}
	}
}

// TestSoakWorkloads: three workloads on the first three nodes, each on a
// port of its own, only the big-state app with the state flags.
func TestSoakWorkloads(t *testing.T) {
	ws := soakWorkloads([]string{"n1", "n2", "n3", "n4", "n5"})
	if len(ws) != 3 {
		t.Fatalf("%d workloads, want 3", len(ws))
	}
	ports := map[int]bool{}
	for i, w := range ws {
		if w.Node != []string{"n1", "n2", "n3"}[i] {
			t.Errorf("%s starts on %s, want n%d", w.ID, w.Node, i+1)
		}
		if ports[w.Port] || w.Port == AppPort {
			t.Errorf("%s: port %d shared", w.ID, w.Port)
		}
		ports[w.Port] = true
		if !slices.Contains(w.Args, ":"+strconv.Itoa(w.Port)) {
			t.Errorf("%s: args %v do not listen on %d", w.ID, w.Args, w.Port)
		}
		if big := slices.Contains(w.Args, "-state-mb"); big != w.Big {
			t.Errorf("%s: args %v, big %v", w.ID, w.Args, w.Big)
		}
	}
	if !ws[2].Big || !slices.Equal(ws[2].Args[2:], []string{"-state-mb", "100", "-state-seed", "7"}) {
		t.Errorf("big-state app args %v", ws[2].Args)
	}
}

// TestClassifyLogLine: crashes and error-level lines are found, with their
// time when the line has one.
func TestClassifyLogLine(t *testing.T) {
	ts := time.Date(2026, 12, 3, 10, 0, 1, 500_000_000, time.UTC)
	for _, tc := range []struct {
		line     string
		kind     logKind
		ok       bool
		wantTime bool
	}{
		{`time=2026-12-03T10:00:01.500Z level=ERROR msg="restore failed" workload=default/counter-a/counter`, logError, true, true},
		{`time=2026-12-03T10:00:01.500Z level=INFO msg="restored"`, 0, false, true},
		{`time=2026-12-03T10:00:01.500Z level=WARN msg="checkpoint failed: level=ERROR in text"`, 0, false, true},
		{`panic: runtime error: invalid memory address or nil pointer dereference`, logCrash, true, false},
		{`fatal error: concurrent map writes`, logCrash, true, false},
		{`WARNING: DATA RACE`, logCrash, true, false},
		{`goroutine 1 [running]:`, 0, false, false},
	} {
		kind, when, ok := classifyLogLine(tc.line)
		if ok != tc.ok || (ok && kind != tc.kind) {
			t.Errorf("%q: kind %v ok %v, want %v %v", tc.line, kind, ok, tc.kind, tc.ok)
		}
		if tc.wantTime && !when.Equal(ts) {
			t.Errorf("%q: time %v, want %v", tc.line, when, ts)
		}
		if !tc.wantTime && !when.IsZero() {
			t.Errorf("%q: time %v, want none", tc.line, when)
		}
	}
}

// TestScanDaemonLog: lines before the soak's start are not counted; a
// panic gets the time of the line before it.
func TestScanDaemonLog(t *testing.T) {
	start := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	log := strings.Join([]string{
		`time=2026-12-03T09:59:59.000Z level=ERROR msg="before the soak"`,
		`time=2026-12-03T10:00:02.000Z level=INFO msg=ok`,
		`time=2026-12-03T10:00:03.000Z level=ERROR msg="replicate failed"`,
		`time=2026-12-03T10:00:04.000Z level=DEBUG msg=tick`,
		`panic: boom`,
		`goroutine 7 [running]:`,
	}, "\n") + "\n"
	path := filepath.Join(t.TempDir(), "crfailoverd.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	crashes, errs, err := scanDaemonLog(path, "n2", start)
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != 1 || errs[0].At != 3*time.Second || errs[0].Node != "n2" || !strings.Contains(errs[0].What, "replicate failed") {
		t.Errorf("error lines %+v, want the one at 3 s on n2", errs)
	}
	if len(crashes) != 1 || crashes[0].At != 4*time.Second || crashes[0].What != "panic: boom" {
		t.Errorf("crashes %+v, want the panic at 4 s", crashes)
	}
}

// TestFillDiskRefusesNonTmpfs: disk-full never fills a directory that is
// not a tmpfs of its own (the host's disk).
func TestFillDiskRefusesNonTmpfs(t *testing.T) {
	dir := t.TempDir()
	if isTmpfs(dir) {
		t.Skipf("%s is a tmpfs mount point", dir)
	}
	path, err := fillDisk(dir)
	if err == nil || !strings.Contains(err.Error(), "refused disk-full") {
		t.Fatalf("fillDisk(%s) = %q, %v; want a refusal", dir, path, err)
	}
	if _, err := os.Stat(filepath.Join(dir, fillName)); !os.IsNotExist(err) {
		t.Errorf("the refused fill left %s behind (%v)", fillName, err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if isTmpfs(sub) {
		t.Errorf("isTmpfs(%s) on the disk: true", sub)
	}
}

// TestNetnsDialer: HTTP through a dialer that entered a namespace (here
// this process's own, which needs root) reaches a server there, and a
// closed port fails fast.
func TestNetnsDialer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("entering a network namespace needs root")
	}
	d, err := newNetnsDialer("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"counter":42}`))
	}))
	defer srv.Close()
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	var s struct{ Counter int64 }
	for i := 0; i < 3; i++ {
		if err := getJSON(context.Background(), c, srv.URL+"/state", &s); err != nil || s.Counter != 42 {
			t.Fatalf("GET through the dialer: %+v, %v; want counter 42", s, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := getJSON(context.Background(), c, "http://"+addr+"/state", &s); err == nil {
		t.Errorf("GET of closed %s through the dialer succeeded", addr)
	}
}

// TestFillDiskTmpfs: on a tmpfs of its own, fillDisk leaves no byte free
// and freeDisk gives the space back.
func TestFillDiskTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	if !isTmpfs(dir) {
		t.Fatalf("isTmpfs(%s) after mounting one: false", dir)
	}
	free := func() uint64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Bavail
	}
	before := free()
	path, err := fillDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f := free(); f != 0 {
		t.Errorf("after fillDisk %d blocks free, want 0", f)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o600); err == nil {
		t.Error("a write after fillDisk succeeded, want ENOSPC")
	}
	if err := freeDisk(path); err != nil {
		t.Fatal(err)
	}
	if f := free(); f < before-1 {
		t.Errorf("after freeDisk %d blocks free, want %d", f, before)
	}
}
