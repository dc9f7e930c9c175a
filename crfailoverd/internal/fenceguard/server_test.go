package fenceguard

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuf is a log sink safe for the server's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fakeKiller struct {
	mu     sync.Mutex
	killed []string
	refuse map[string]error
}

func (k *fakeKiller) Kill(c Copy) (bool, []string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.refuse[c.ContainerID]; err != nil {
		return false, nil, err
	}
	k.killed = append(k.killed, c.ContainerID)
	return false, nil, nil
}

func (k *fakeKiller) got() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.killed...)
}

// startServer runs a guard on a socket in a temporary directory.
func startServer(t *testing.T, o ServerOptions) (socket string, srv *Server, logs *syncBuf) {
	t.Helper()
	logs = &syncBuf{}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(logs, nil))
	}
	socket = filepath.Join(t.TempDir(), SocketName)
	ln, closeFn, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	srv = NewServer(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		closeFn()
	})
	return socket, srv, logs
}

// poll waits for cond, failing after a generous deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func send(t *testing.T, socket string, r Renewal) Reply {
	t.Helper()
	c, err := Dial(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := c.Send(r, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestServerKillsAfterDeadline(t *testing.T) {
	var mu sync.Mutex
	now := int64(1000)
	clock := func() int64 { mu.Lock(); defer mu.Unlock(); return now }
	k := &fakeKiller{refuse: map[string]error{"reused": errors.New("refused to kill container reused (pid 3): the process has start time 9, the daemon listed 1 (the PID was reused)")}}
	socket, srv, logs := startServer(t, ServerOptions{Kill: k, Alive: allAlive, Now: clock, Tick: 5 * time.Millisecond})

	if rep := send(t, socket, Renewal{Contact: true, Deadline: 2000, Copies: []Copy{cp("a", 2, 1), cp("reused", 3, 1)}}); !rep.Armed || rep.Copies != 2 || rep.Deadline != 2000 {
		t.Fatalf("reply %+v", rep)
	}
	// A renewal without contact does not extend it.
	send(t, socket, Renewal{Deadline: 99999})
	if d, _, _ := srv.State(); d != 2000 {
		t.Fatalf("deadline %d after a renewal without contact, want 2000", d)
	}
	// Before the deadline: a look kills nothing.
	srv.check()
	if got := k.got(); len(got) != 0 {
		t.Fatalf("killed %v before the deadline", got)
	}
	mu.Lock()
	now = 2100
	mu.Unlock()
	poll(t, "the kill", func() bool { return len(k.got()) == 1 })
	poll(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "PID was reused") })
	if got := k.got(); got[0] != "a" {
		t.Fatalf("killed %v, want [a]", got)
	}
	l := logs.String()
	for _, want := range []string{"FENCE GUARD: killed", "container_id=a", "late_ms=0", "FENCE GUARD: refused or failed to kill", "container_id=reused"} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q:\n%s", want, l)
		}
	}
	if _, _, killed := srv.State(); killed != 1 {
		t.Errorf("killed count %d, want 1", killed)
	}
}

func TestServerRefusesOtherUIDs(t *testing.T) {
	socket, srv, logs := startServer(t, ServerOptions{Alive: allAlive, Kill: &fakeKiller{},
		Peer: func(net.Conn) (uint32, int32, error) { return 1000, 42, nil }})
	_ = srv
	c, err := Dial(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(Renewal{Contact: true, Deadline: 1}, 5*time.Second); err == nil {
		t.Fatal("a renewal from uid 1000 was answered")
	}
	poll(t, "the refusal", func() bool { return strings.Contains(logs.String(), "its uid may not renew") })
	if d, _, _ := srv.State(); d != 0 {
		t.Fatalf("a refused peer set the deadline to %d", d)
	}
	if !strings.Contains(logs.String(), "peer_uid=1000") {
		t.Errorf("refusal does not name the uid:\n%s", logs.String())
	}
}

func TestListenRefusesSecondGuard(t *testing.T) {
	socket := filepath.Join(t.TempDir(), SocketName)
	_, closeFn, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if _, _, err := Listen(socket); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Listen: %v, want ErrRunning", err)
	}
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
}

// cgroupV2 makes a fresh cgroup v2 child for a test, or skips.
func cgroupV2(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a cgroup and kills a process in it")
	}
	m, err := FindCgroupMounts("/proc/self/mountinfo")
	if err != nil || m.V2 == "" {
		t.Skipf("no cgroup v2 hierarchy mounted (%v)", err)
	}
	dir := filepath.Join(m.V2, "crf-fenceguard-test-"+strconv.Itoa(os.Getpid())+"-"+strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup v2 child: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.freeze")); err != nil {
		os.Remove(dir)
		t.Skipf("cgroup v2 without the freezer (kernel before 5.2?): %v", err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644)
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		poll(t, "the test cgroup to empty", func() bool { return os.Remove(dir) == nil || errors.Is(os.Remove(dir), os.ErrNotExist) })
	})
	return dir
}

// sleeper starts a sleep in cgroup dir; exited is closed when it is reaped.
func sleeper(t *testing.T, dir string) (pid int, exited chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the sleep into %s: %v", dir, err)
	}
	return cmd.Process.Pid, exited
}

func freeze(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	poll(t, "the cgroup to freeze", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		return strings.Contains(string(b), "frozen 1")
	})
}

func TestKillFrozenCopy(t *testing.T) {
	dir := cgroupV2(t)
	pid, exited := sleeper(t, dir)
	freeze(t, dir)
	c, err := Proc{}.Describe("frozen-copy", pid)
	if err != nil {
		t.Fatal(err)
	}
	socket, srv, logs := startServer(t, ServerOptions{})
	send(t, socket, Renewal{Contact: true, Deadline: MonoNow() - int64(time.Millisecond), Copies: []Copy{c}})
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("the frozen copy is still alive; guard log:\n%s", logs.String())
	}
	// Logged once Kill returned, after it thawed the cgroup.
	poll(t, "the kill in the log", func() bool { return strings.Contains(logs.String(), "FENCE GUARD: killed") })
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("cgroup.freeze is %q after the kill, want 0", b)
	}
	if !strings.Contains(logs.String(), "cgroup.freeze") {
		t.Errorf("the log does not name the thawed cgroup:\n%s", logs.String())
	}
	if _, _, killed := srv.State(); killed != 1 {
		t.Errorf("killed %d, want 1", killed)
	}
}

func TestPIDReuseNotKilled(t *testing.T) {
	dir := cgroupV2(t)
	pid, exited := sleeper(t, dir)
	c, err := Proc{}.Describe("reused", pid)
	if err != nil {
		t.Fatal(err)
	}
	c.StartTime++ // the listed process was another one with this PID
	_, _, err = Killer{}.Kill(c)
	if err == nil || !strings.Contains(err.Error(), "refused to kill container reused") || !strings.Contains(err.Error(), "PID was reused") {
		t.Fatalf("Kill: %v, want a refusal naming the PID reuse", err)
	}
	// Through the server: refused, logged, and the process lives.
	socket, _, logs := startServer(t, ServerOptions{Alive: func(Copy) bool { return true }})
	send(t, socket, Renewal{Contact: true, Deadline: MonoNow() - 1, Copies: []Copy{c}})
	poll(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "FENCE GUARD: refused or failed to kill") })
	select {
	case <-exited:
		t.Fatal("a process with another start time was killed")
	default:
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the process is gone: %v", err)
	}
	if strings.Contains(logs.String(), "FENCE GUARD: killed") {
		t.Fatalf("the log claims a kill:\n%s", logs.String())
	}
}

// TestKillFrozenCopyV1: on a hybrid host (runc freezes with the v1
// freezer there) a v1-frozen process dies only once thawed.
func TestKillFrozenCopyV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a cgroup and kills a process in it")
	}
	m, err := FindCgroupMounts("/proc/self/mountinfo")
	if err != nil || m.Freezer == "" {
		t.Skipf("no cgroup v1 freezer mounted (%v)", err)
	}
	dir := filepath.Join(m.Freezer, "crf-fenceguard-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a v1 freezer cgroup: %v", err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644)
		poll(t, "the test cgroup to go", func() bool { err := os.Remove(dir); return err == nil || errors.Is(err, os.ErrNotExist) })
	})
	pid, exited := sleeper(t, dir)
	// Runs before sleeper's cleanup: a v1-frozen sleep dies only thawed.
	t.Cleanup(func() { _ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644) })
	if err := os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("FROZEN"), 0o644); err != nil {
		t.Fatal(err)
	}
	poll(t, "the v1 cgroup to freeze", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "freezer.state"))
		return strings.TrimSpace(string(b)) == "FROZEN"
	})
	c, err := Proc{}.Describe("frozen-v1", pid)
	if err != nil {
		t.Fatal(err)
	}
	socket, _, logs := startServer(t, ServerOptions{})
	send(t, socket, Renewal{Contact: true, Deadline: MonoNow() - 1, Copies: []Copy{c}})
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("the v1-frozen copy is still alive; guard log:\n%s", logs.String())
	}
	poll(t, "the kill in the log", func() bool { return strings.Contains(logs.String(), "FENCE GUARD: killed") })
	if !strings.Contains(logs.String(), "freezer.state") {
		t.Errorf("the log does not name the thawed freezer:\n%s", logs.String())
	}
}

func TestPark(t *testing.T) {
	dir := t.TempDir()
	manifests, parked := filepath.Join(dir, "manifests"), filepath.Join(dir, "parked")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(manifests, "crfailoverd-counter.yaml")
	if err := os.WriteFile(m, []byte("kind: Pod\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, manifest, dir, want, wantErr string
	}{
		{"moved", m, parked, filepath.Join(parked, "crfailoverd-counter.yaml"), ""},
		{"gone already", m, parked, "", ""},
		{"none", "", parked, "", ""},
		{"relative refused", "manifests/x.yaml", parked, "", "refused to park"},
	}
	for _, tt := range tests {
		got, err := Park(tt.manifest, tt.dir)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: %q, %v; want %q, %q", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
	if b, err := os.ReadFile(filepath.Join(parked, "crfailoverd-counter.yaml")); err != nil || string(b) != "kind: Pod\n" {
		t.Errorf("parked manifest: %q, %v", b, err)
	}
	if _, err := os.Stat(m); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the manifest is still in kubelet's directory: %v", err)
	}
}

func TestServerParksBeforeKill(t *testing.T) {
	var mu sync.Mutex
	var order []string
	k := killFunc(func(c Copy) (bool, []string, error) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "kill "+c.ContainerID)
		return false, nil, nil
	})
	park := func(m, dir string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "park "+m+" in "+dir)
		return filepath.Join(dir, filepath.Base(m)), nil
	}
	socket, _, logs := startServer(t, ServerOptions{Kill: k, Alive: allAlive, Park: park})
	c := cp("a", 5, 1)
	c.Manifest = "/m/a.yaml"
	send(t, socket, Renewal{Contact: true, Deadline: MonoNow() - 1, Copies: []Copy{c}, ParkDir: "/data/parked"})
	poll(t, "the kill", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 2 })
	mu.Lock()
	got := strings.Join(order, "; ")
	mu.Unlock()
	if got != "park /m/a.yaml in /data/parked; kill a" {
		t.Fatalf("order %q, want the park before the kill", got)
	}
	poll(t, "the park in the log", func() bool { return strings.Contains(logs.String(), "parked the copy's static pod manifest") })
}

type killFunc func(Copy) (bool, []string, error)

func (f killFunc) Kill(c Copy) (bool, []string, error) { return f(c) }
