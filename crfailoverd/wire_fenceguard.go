package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/agent"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/fenceguard"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/logging"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativert"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
)

// cmdFenceGuard runs the fence guard (started by the daemon; not for
// people), or with --stop asks a running one to exit once nothing is left
// to guard (systemd's ExecStopPost).
func cmdFenceGuard(args []string, stderr io.Writer) error {
	fs := newFlags("fence-guard", "fence-guard [--config FILE | --socket PATH] [--stop]",
		"The fence guard: kills this node's protected copies (SIGKILL through a pidfd, after checking the\n"+
			"PID's start time and cgroup, thawing a frozen cgroup) when the daemon stops renewing its lease\n"+
			"(frozen, killed, or restarted and not back in contact with the quorum) by lease - 500 ms after\n"+
			"its last quorum contact. The daemon starts it, in its own session, when cluster.fence_guard is\n"+
			"true and none answers on DATA_DIR/fence-guard.sock; it keeps running across daemon restarts.\n"+
			"SIGTERM or --stop: exit once the deadline passed and the copies are killed (at once when there\n"+
			"is nothing to guard), unless a daemon renews with quorum contact first.", stderr)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file (its node.data_dir holds the socket)")
	socket := fs.String("socket", "", "the guard's socket (default: DATA_DIR/"+fenceguard.SocketName+" of --config)")
	logFormat := fs.String("log-format", "", "text, json or journal (default: node.log_format of --config)")
	stop := fs.Bool("stop", false, "ask the running guard to exit once nothing is left to guard")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: fence-guard takes no arguments", errUsage)
	}
	format := *logFormat
	if *socket == "" || format == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return fmt.Errorf("configuration %s:\n%w", *cfgPath, err)
		}
		if *socket == "" {
			*socket = fenceguard.SocketPath(cfg.Node.DataDir)
		}
		if format == "" {
			format = cfg.Node.LogFormat
		}
	}
	level := new(slog.LevelVar)
	log, _ := logging.New(format, level, stderr)
	log = log.With("component", "fence-guard")
	if *stop {
		rep, err := fenceguard.RequestStop(context.Background(), *socket)
		if err != nil {
			// No guard: nothing to stop.
			log.Info("no fence guard to stop", "socket", *socket, "err", err)
			return nil
		}
		log.Info("fence guard asked to stop", "guard_pid", rep.GuardPID, "armed", rep.Armed, "copies", rep.Copies)
		return nil
	}
	ln, closeFn, err := fenceguard.Listen(*socket)
	if errors.Is(err, fenceguard.ErrRunning) {
		log.Info("a fence guard is already running; this one exits", "socket", *socket)
		return nil
	}
	if err != nil {
		return err
	}
	defer closeFn()
	srv := fenceguard.NewServer(fenceguard.ServerOptions{Log: log})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		for range sigs {
			// A stop request from inside: the same rules as --stop.
			if _, err := fenceguard.RequestStop(context.Background(), *socket); err != nil {
				log.Error("cannot pass SIGTERM on as a stop request", "err", err)
			}
		}
	}()
	log.Info("fence guard running", "socket", *socket, "pid", os.Getpid())
	return srv.Serve(context.Background(), ln)
}

// fenceGuard is the daemon's side: it starts a guard when none answers and
// renews its deadline every 250 ms from the controller's last real quorum
// contact, with the agent's copies and their init PIDs.
type fenceGuard struct {
	socket    string
	lease     time.Duration
	logFormat string
	board     *ownership.Board
	agent     *agent.Agent
	log       *slog.Logger
	pids      *pidResolver
	staticDir string // kubelet's static pod directory when restores go through it ("": none)
	listErr   string // the last error listing it, logged once

	mu     sync.Mutex
	copies []fenceguard.Copy
}

// newFenceGuard returns the daemon's guard component, or none when the
// guard is off (no cluster, or cluster.fence_guard = false).
func newFenceGuard(c config.Config, board *ownership.Board, a *agent.Agent, log *slog.Logger) []component {
	if !c.Cluster.Enabled || board == nil {
		return nil
	}
	log = log.With("component", "fence-guard")
	if !c.Cluster.FenceGuard {
		log.Warn("cluster.fence_guard = false: a frozen or killed daemon leaves its copies running while peers restore them")
		return nil
	}
	g := &fenceGuard{socket: fenceguard.SocketPath(c.Node.DataDir), lease: c.Cluster.Lease, logFormat: c.Node.LogFormat,
		board: board, agent: a, log: log, pids: newPIDResolver(c, log)}
	if staticpod.Mode(c.Runtime.RestoreMode, c.Runtime.StaticPodDir) == staticpod.ModeStaticPod {
		g.staticDir = c.Runtime.StaticPodDir
	}
	return []component{{"fence guard renewals", g.run}}
}

func (g *fenceGuard) run(ctx context.Context) error {
	defer g.pids.close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.resolve(ctx)
	}()
	w := &fenceguard.Renewer{Socket: g.socket, Log: g.log, Next: g.next, Start: g.start}
	return w.Run(ctx)
}

// next builds a renewal from what is known now; it never blocks on the
// runtime or the agent (a late renewal is a killed copy).
func (g *fenceGuard) next(context.Context) (fenceguard.Renewal, bool) {
	r := fenceguard.Renewal{DaemonPID: os.Getpid(), ParkDir: g.agent.ParkedDir()}
	// Only real quorum contact gives a deadline; a daemon that had none
	// since it started keeps the one its predecessor gave.
	r.Deadline, r.Contact = fenceguard.DeadlineFrom(g.board.QuorumContact(), time.Now(), fenceguard.MonoNow(), g.lease)
	g.mu.Lock()
	r.Copies = append([]fenceguard.Copy(nil), g.copies...)
	g.mu.Unlock()
	return r, true
}

// resolve turns the agent's copies into PIDs, start times and cgroups,
// every renewal period, away from the renewals.
func (g *fenceGuard) resolve(ctx context.Context) {
	t := time.NewTicker(fenceguard.RenewEvery)
	defer t.Stop()
	known := map[string]fenceguard.Copy{}
	proc := fenceguard.Proc{}
	failed := map[string]string{}
	for {
		locals, ok := g.agent.LocalCopies()
		if ok {
			manifests := g.manifests()
			next := map[string]fenceguard.Copy{}
			for _, l := range locals {
				if c, ok := known[l.ContainerID]; ok && proc.Alive(c) {
					c.Manifest = manifests[l.Workload.String()]
					next[l.ContainerID] = c
					continue
				}
				c, err := g.pids.describe(ctx, l.ContainerID)
				if err != nil {
					if failed[l.ContainerID] != err.Error() {
						g.log.Warn("cannot find a copy's process: the fence guard cannot kill it", "workload", l.Workload.String(), "container_id", l.ContainerID, "err", err)
						failed[l.ContainerID] = err.Error()
					}
					continue
				}
				delete(failed, l.ContainerID)
				c.Manifest = manifests[l.Workload.String()]
				next[l.ContainerID] = c
			}
			known = next
			copies := make([]fenceguard.Copy, 0, len(known))
			for _, c := range known {
				copies = append(copies, c)
			}
			g.mu.Lock()
			g.copies = copies
			g.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// manifests maps workloads to the static pod manifests crfailoverd wrote
// for them (none when restores do not go through kubelet).
func (g *fenceGuard) manifests() map[string]string {
	if g.staticDir == "" {
		return nil
	}
	mine, err := staticpod.List(g.staticDir)
	if err != nil {
		if err.Error() != g.listErr {
			g.log.Warn("cannot list the static pod manifests: the fence guard cannot park them", "err", err)
		}
		g.listErr = err.Error()
		return nil
	}
	g.listErr = ""
	out := make(map[string]string, len(mine))
	for path, pod := range mine {
		if id := pod.Annotations[discovery.AnnWorkload]; id != "" {
			out[id] = path
		}
	}
	return out
}

// start runs a guard in its own session, so that a signal to the daemon's
// process group (or the daemon's death) does not reach it, and waits until
// it answers. Its output goes where the daemon's goes.
func (g *fenceGuard) start(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start the fence guard: %w", err)
	}
	cmd := exec.Command(exe, "fence-guard", "--socket", g.socket, "--log-format", g.guardLogFormat())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the fence guard %s: %w", exe, err)
	}
	go func() { _ = cmd.Wait() }() // reaped when it exits before the daemon
	for end := time.Now().Add(5 * time.Second); ; {
		rep, err := fenceguard.Ping(ctx, g.socket)
		if err == nil {
			g.log.Info("fence guard started", "guard_pid", rep.GuardPID, "socket", g.socket)
			return nil
		}
		if time.Now().After(end) || ctx.Err() != nil {
			return fmt.Errorf("start the fence guard: it does not answer on %s: %w", g.socket, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (g *fenceGuard) guardLogFormat() string {
	if g.logFormat == "auto" {
		if os.Getenv("JOURNAL_STREAM") != "" {
			return "journal"
		}
		return "text"
	}
	return g.logFormat
}

// pidResolver finds a container's init PID: from the runtime's verbose
// ContainerStatus (containerd and CRI-O both report "pid" in its info),
// or, for a copy restored natively, from containerd's own API.
type pidResolver struct {
	c   config.Config
	log *slog.Logger

	mu     sync.Mutex
	conn   *grpc.ClientConn
	rt     runtimeapi.RuntimeServiceClient
	native *nativerestore.Restorer
}

func newPIDResolver(c config.Config, log *slog.Logger) *pidResolver {
	return &pidResolver{c: c, log: log}
}

func (p *pidResolver) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		_ = p.conn.Close()
	}
	if p.native != nil {
		_ = p.native.Close()
	}
}

func (p *pidResolver) describe(ctx context.Context, containerID string) (fenceguard.Copy, error) {
	pid, err := p.pid(ctx, containerID)
	if err != nil {
		return fenceguard.Copy{}, err
	}
	return fenceguard.Proc{}.Describe(containerID, pid)
}

func (p *pidResolver) pid(ctx context.Context, id string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, p.c.Runtime.CallTimeout)
	defer cancel()
	if nativert.IsNative(id) {
		return p.nativePID(ctx, strings.TrimPrefix(id, nativert.IDPrefix))
	}
	p.mu.Lock()
	if p.rt == nil {
		conn, err := grpc.NewClient("unix://"+p.c.Runtime.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			p.mu.Unlock()
			return 0, fmt.Errorf("connect to CRI at %s: %w", p.c.Runtime.SocketPath(), err)
		}
		p.conn, p.rt = conn, runtimeapi.NewRuntimeServiceClient(conn)
	}
	rt := p.rt
	p.mu.Unlock()
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("CRI ContainerStatus %s: %w", id, err)
	}
	return pidFromInfo(st.GetInfo())
}

// pidFromInfo reads "pid" from a verbose ContainerStatus's info["info"].
func pidFromInfo(info map[string]string) (int, error) {
	raw, ok := info["info"]
	if !ok {
		return 0, errors.New(`the runtime's verbose status has no "info"`)
	}
	var v struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return 0, fmt.Errorf("the runtime's verbose status info: %w", err)
	}
	if v.PID <= 1 {
		return 0, fmt.Errorf("the runtime's verbose status gives pid %d", v.PID)
	}
	return v.PID, nil
}

func (p *pidResolver) nativePID(ctx context.Context, id string) (int, error) {
	p.mu.Lock()
	if p.native == nil {
		r, err := nativerestore.New(p.c.Runtime.SocketPath(), nativerestore.Options{StateDir: nativeStateDir(p.c),
			Log: p.log.With("component", "native-restore")})
		if err != nil {
			p.mu.Unlock()
			return 0, fmt.Errorf("containerd client for native copies: %w", err)
		}
		p.native = r
	}
	r := p.native
	p.mu.Unlock()
	cs, err := r.List(ctx)
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		if c.ID == id && c.PID > 1 {
			return int(c.PID), nil
		}
	}
	return 0, fmt.Errorf("containerd has no running native container %s", id)
}
