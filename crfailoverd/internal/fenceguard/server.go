package fenceguard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrRunning: another guard holds the socket's lock.
var ErrRunning = errors.New("another fence guard is running")

// Listen takes the guard's lock (SOCKET.lock, held while the returned
// closer is not called) and listens on socket, mode 0600. A stale socket
// of a dead guard is replaced; a live guard's lock gives ErrRunning.
func Listen(socket string) (net.Listener, func(), error) {
	lockPath := socket + ".lock"
	lf, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("fence guard lock %s: %w", lockPath, err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("listen on %s: %w (it holds %s)", socket, ErrRunning, lockPath)
		}
		return nil, nil, fmt.Errorf("fence guard lock %s: %w", lockPath, err)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		lf.Close()
		return nil, nil, fmt.Errorf("remove stale fence guard socket %s: %w", socket, err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		lf.Close()
		return nil, nil, fmt.Errorf("fence guard listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		lf.Close()
		return nil, nil, fmt.Errorf("fence guard socket %s: %w", socket, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // removed by the closer, under the lock
	return ln, func() {
		ln.Close()
		_ = os.Remove(socket)
		lf.Close()
	}, nil
}

// killer is what the server needs to kill a copy (Killer).
type killer interface {
	Kill(c Copy) (gone bool, thawed []string, err error)
}

// ServerOptions configure Serve. Zero fields get the real thing.
type ServerOptions struct {
	Log   *slog.Logger
	Kill  killer                                            // default Killer{}
	Alive func(Copy) bool                                   // default Proc{}.Alive
	Now   func() int64                                      // CLOCK_MONOTONIC ns; default MonoNow
	Tick  time.Duration                                     // how often the deadline is looked at (default 50 ms)
	UIDs  map[uint32]bool                                   // peers allowed besides uid 0 (default: this process's uid)
	Peer  func(net.Conn) (uid uint32, pid int32, err error) // default SO_PEERCRED
	Park  func(manifest, dir string) (string, error)        // default Park
}

// Server is a running guard.
type Server struct {
	o ServerOptions

	mu        sync.Mutex
	st        State
	killed    int
	lastRenew int64
	expiredAt int64 // deadline whose expiry was logged
}

// NewServer makes a guard; Serve runs it.
func NewServer(o ServerOptions) *Server {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Kill == nil {
		o.Kill = Killer{}
	}
	if o.Alive == nil {
		o.Alive = Proc{}.Alive
	}
	if o.Now == nil {
		o.Now = MonoNow
	}
	if o.Tick <= 0 {
		o.Tick = 50 * time.Millisecond
	}
	if o.UIDs == nil {
		o.UIDs = map[uint32]bool{uint32(os.Geteuid()): true}
	}
	if o.Peer == nil {
		o.Peer = peerCred
	}
	if o.Park == nil {
		o.Park = Park
	}
	return &Server{o: o}
}

// State returns a copy of what the guard knows (for tests and logs).
func (s *Server) State() (deadline int64, copies []Copy, killed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Deadline, append([]Copy(nil), s.st.Copies...), s.killed
}

// Serve answers renewals on ln and kills the copies when the deadline
// passes, until ctx ends or a stop request is done (then it returns nil).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		t := time.NewTicker(s.o.Tick)
		defer t.Stop()
		for {
			if s.check() {
				s.o.Log.Info("fence guard stopping: asked to, and nothing is left to guard")
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fence guard accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	uid, pid, err := s.o.Peer(conn)
	if err != nil {
		s.o.Log.Warn("fence guard refused a connection: cannot read its peer credentials", "err", err)
		return
	}
	if uid != 0 && !s.o.UIDs[uid] {
		s.o.Log.Warn("fence guard refused a connection: its uid may not renew", "peer_uid", uid, "peer_pid", pid)
		return
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	enc := json.NewEncoder(conn)
	for sc.Scan() {
		var r Renewal
		rep := Reply{GuardPID: os.Getpid()}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			rep.Err = fmt.Sprintf("refused a renewal from pid %d: %v", pid, err)
			s.o.Log.Warn("fence guard refused a malformed renewal", "peer_pid", pid, "err", err)
		} else {
			s.renew(r, &rep)
		}
		if err := enc.Encode(rep); err != nil {
			return
		}
	}
}

func (s *Server) renew(r Renewal, rep *Reply) {
	now := s.o.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	wasStopping := s.st.Stopping
	s.st.Apply(r, s.o.Alive)
	if r.Contact {
		s.lastRenew = now
	}
	if s.st.Stopping && !wasStopping {
		in := int64(0)
		if s.st.Deadline != 0 {
			in = -s.st.LateBy(now).Milliseconds()
		}
		s.o.Log.Info("fence guard asked to stop: exits once the deadline passed and the copies are killed, unless a daemon renews with quorum contact",
			"copies", len(s.st.Copies), "armed", s.st.Deadline != 0, "deadline_in_ms", in)
	}
	rep.Armed = s.st.Deadline != 0
	rep.Deadline = s.st.Deadline
	rep.Copies = len(s.st.Copies)
	rep.Killed = s.killed
	rep.Stopping = s.st.Stopping
}

// check kills what is due; it reports whether a stopping guard is done.
func (s *Server) check() bool {
	now := s.o.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Apply(Renewal{}, s.o.Alive) // forget copies whose process is gone
	due := s.st.Due(now)
	if len(due) > 0 && s.expiredAt != s.st.Deadline {
		s.expiredAt = s.st.Deadline
		s.o.Log.Error("FENCE GUARD: the daemon did not renew its lease in time: killing the local copies",
			"late_ms", s.st.LateBy(now).Milliseconds(), "since_renewal_ms", s.sinceRenewal(now), "copies", len(due))
	}
	for _, c := range due {
		// The manifest first: kubelet must not start the copy again.
		if c.Manifest != "" {
			if parked, err := s.o.Park(c.Manifest, s.st.ParkDir); err != nil {
				s.o.Log.Error("FENCE GUARD: cannot park the copy's static pod manifest: kubelet may start it again", "container_id", c.ContainerID, "manifest", c.Manifest, "err", err)
			} else if parked != "" {
				s.o.Log.Error("FENCE GUARD: parked the copy's static pod manifest", "container_id", c.ContainerID, "manifest", c.Manifest, "parked", parked)
			}
		}
		gone, thawed, err := s.o.Kill.Kill(c)
		s.st.Handled(c)
		switch {
		case err != nil:
			s.o.Log.Error("FENCE GUARD: refused or failed to kill", "container_id", c.ContainerID, "pid", c.PID, "err", err)
		case gone:
			s.o.Log.Info("fence guard: copy already gone", "container_id", c.ContainerID, "pid", c.PID)
		default:
			s.killed++
			s.o.Log.Error("FENCE GUARD: killed", "container_id", c.ContainerID, "pid", c.PID,
				"late_ms", s.st.LateBy(now).Milliseconds(), "since_renewal_ms", s.sinceRenewal(now), "thawed", thawed)
		}
	}
	return s.st.Done(now)
}

func (s *Server) sinceRenewal(now int64) int64 {
	if s.lastRenew == 0 {
		return -1
	}
	return time.Duration(now - s.lastRenew).Milliseconds()
}

// peerCred reads SO_PEERCRED of a unix connection.
func peerCred(c net.Conn) (uint32, int32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, 0, fmt.Errorf("peer credentials: %T is no unix connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, 0, fmt.Errorf("peer credentials: SO_PEERCRED: %w", cerr)
	}
	return cred.Uid, cred.Pid, nil
}

// SocketPath is the guard's socket in a data directory.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, SocketName) }
