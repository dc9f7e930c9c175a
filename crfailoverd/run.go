package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/agent"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/event"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/membership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/kubelet"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/logging"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/metrics"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ownership"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/staticpod"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// shutdownGrace bounds how long SIGTERM may take.
const shutdownGrace = 10 * time.Second

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlags("run", "run [--config FILE]",
		"Runs the daemon: discovers annotated containers through the runtime, checkpoints them on\n"+
			"their interval, and restores a failed one from its newest checkpoint. SIGHUP reloads the\n"+
			"configuration (an invalid one is refused and the running one kept); SIGTERM stops it.", stderr)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: run takes no arguments", errUsage)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("configuration %s:\n%w", *cfgPath, err)
	}
	level := new(slog.LevelVar)
	level.Set(cfg.Node.LogLevel)
	log, format := logging.New(cfg.Node.LogFormat, level, stderr)
	d := &daemonRun{cfgPath: *cfgPath, cfg: cfg, level: level, log: log}
	if err := d.run(format); err != nil {
		log.Error("crfailoverd stopped", "err", err)
		return err
	}
	return nil
}

type daemonRun struct {
	cfgPath string
	cfg     config.Config
	level   *slog.LevelVar
	log     *slog.Logger
	agent   *agent.Agent
	cluster *cluster.Cluster
	rec     *metrics.Recorder
	caps    *capability.Watch // what this node's runtime can do
}

func (d *daemonRun) setGauges() {
	alive, raftState, fenced := 1, "", false
	if d.cluster != nil {
		r := d.cluster.RaftPeers()
		raftState, fenced = r.State, r.Fenced
		alive = 0
		for _, m := range d.cluster.Members() {
			if m.Status == string(membership.StatusAlive) {
				alive++
			}
		}
	}
	d.rec.SetGauges(len(d.agent.Status().Workloads), alive, raftState, fenced)
}

func (d *daemonRun) statusLine() string {
	s := d.agent.StatusLine()
	if d.cluster != nil {
		s += "; " + d.cluster.StatusLine()
	}
	return s + capabilitiesStatus(d.caps)
}

// newCluster sets up the cluster side from the [cluster] configuration.
// The node is the agent, which the cluster asks to act; board is where the
// cluster publishes the ownership view the agent reads.
//
// caps is what this node's runtime can do (the zero Node until it is
// found out): the cluster records it, and places and replicates only
// where a checkpoint can be restored.
func newCluster(c config.Config, st *store.Store, node *agent.Agent, board *ownership.Board, caps func() capability.Node, log *slog.Logger, onEvent event.Sink) (*cluster.Cluster, error) {
	t, err := peer.LoadTLS(c.Cluster.TLSCert, c.Cluster.TLSKey, c.Cluster.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("cluster TLS: %w", err)
	}
	var key []byte
	if c.Cluster.GossipKeyFile != "" {
		if key, err = membership.ReadKey(c.Cluster.GossipKeyFile); err != nil {
			return nil, fmt.Errorf("cluster.gossip_key_file: %w", err)
		}
	}
	return cluster.New(cluster.Options{
		Node: c.Node.Name, DataDir: c.Node.DataDir, BindAddr: c.Cluster.BindAddr, AdvertiseAddr: c.Cluster.AdvertiseAddr,
		RPCAddr: c.Cluster.RPCAddr, Join: c.Cluster.Join, BootstrapExpect: c.Cluster.BootstrapExpect, GossipKey: key, TLS: t,
		ReplicationFactor: c.Cluster.ReplicationFactor, Profile: c.Cluster.FailureProfile, Lease: c.Cluster.Lease,
		DeadServerGrace: c.Cluster.DeadServerGrace, MaxVoters: c.Cluster.MaxVoters, Policy: c.Restore.Policy,
		MaxAttempts: c.Restore.MaxAttempts, Store: st, Local: node, Board: board, Capabilities: caps, Log: log, OnEvent: onEvent,
	})
}

func settingsOf(c config.Config) agent.Settings {
	return agent.Settings{
		Node:   c.Node.Name,
		Method: c.Checkpoint.Method,
		Defaults: discovery.Defaults{Interval: c.Checkpoint.DefaultInterval, ProbePeriod: c.Probe.Period,
			FailureThreshold: c.Probe.FailureThreshold, NodeName: c.Node.Name},
		CheckpointTimeout: c.Checkpoint.Timeout,
		Retention:         c.Checkpoint.Retention,
		ProbeTimeout:      c.Probe.Timeout,
		ProbeInitialDelay: c.Probe.InitialDelay,
		Restore: agent.RestorePolicy{MaxAttempts: c.Restore.MaxAttempts, BackoffInitial: c.Restore.BackoffInitial,
			BackoffMax: c.Restore.BackoffMax},
	}
}

// newKubelet builds the kubelet client when the method may use it. With
// "auto", a kubelet that cannot be set up means CRI only.
func newKubelet(c config.Config, log *slog.Logger) (agent.Kubelet, error) {
	if c.Checkpoint.Method == agent.MethodCRI {
		return nil, nil
	}
	k, err := kubelet.New(kubelet.Options{URL: c.Kubelet.URL, Cert: c.Kubelet.ClientCert, Key: c.Kubelet.ClientKey, CA: c.Kubelet.CA})
	if err != nil {
		if c.Checkpoint.Method == agent.MethodKubelet {
			return nil, fmt.Errorf("checkpoint method kubelet: %w", err)
		}
		log.Warn("kubelet client unavailable; checkpointing through the CRI", "err", err)
		return nil, nil
	}
	return k, nil
}

func (d *daemonRun) run(format string) error {
	c := d.cfg
	d.log.Info("crfailoverd starting", "version", versionString(), "node", c.Node.Name, "config", d.cfgPath,
		"runtime_endpoint", c.Runtime.SocketPath(), "method", c.Checkpoint.Method, "data_dir", c.Node.DataDir, "log_format", format)
	if c.Cluster.Enabled && c.Cluster.InsecureGossip {
		d.log.Warn("INSECURE: cluster.insecure_gossip = true: gossip is neither encrypted nor authenticated; anyone who reaches bind_addr can join the membership or forge its messages; set cluster.gossip_key_file (crfailoverd keygen --out FILE)",
			"bind_addr", c.Cluster.BindAddr)
	}
	if c.Images.ListenAddr != "" && c.Images.AllowRemote {
		d.log.Warn("INSECURE: images.allow_remote = true: the image endpoint serves every protected container's checkpoint (its memory) over plain HTTP to whoever reaches listen_addr and holds this node's image credentials (data_dir/images/secret, written into images.pull_secret_files); the credentials cross the network in clear text",
			"listen_addr", c.Images.ListenAddr)
	}
	var static *agent.StaticPods
	if mode := staticpod.Mode(c.Runtime.RestoreMode, c.Runtime.StaticPodDir); mode == staticpod.ModeStaticPod {
		if c.Images.ListenAddr == "" {
			return fmt.Errorf("runtime.restore_mode %q restores through kubelet static pods, which pull from this daemon's image endpoint: set images.listen_addr", c.Runtime.RestoreMode)
		}
		_, port, err := net.SplitHostPort(c.Images.ListenAddr)
		if err != nil {
			return fmt.Errorf("images.listen_addr: %w", err)
		}
		static = &agent.StaticPods{Dir: c.Runtime.StaticPodDir, Endpoint: "localhost:" + port}
		d.log.Info("restores go through kubelet static pods", "static_pod_dir", c.Runtime.StaticPodDir, "image_endpoint", static.Endpoint)
	}
	// Every reader of an archive walks it under these limits.
	archive.SetDefaultLimits(c.Store.MaxMemberBytes, c.Store.MaxArchiveBytes)
	st, dataKey, err := openStore(c, d.log)
	if err != nil {
		return err
	}
	rt, err := cri.Dial(c.Runtime.SocketPath(), c.Runtime.CallTimeout)
	if err != nil {
		return err
	}
	defer rt.Close()
	// containerd 2.4 and later on a node without kubelet: restores (and
	// the restored copies' checkpoints) go through containerd's own client.
	vctx, vcancel := context.WithTimeout(context.Background(), 30*time.Second)
	agentRT, native, closeNative, err := newRuntime(vctx, c, rt, d.log)
	vcancel()
	if err != nil {
		return err
	}
	defer closeNative()
	kc, err := newKubelet(c, d.log)
	if err != nil {
		return err
	}
	rec := metrics.New(metrics.Options{DSN: c.Metrics.PostgresDSN, QueueSize: c.Metrics.QueueSize, Node: c.Node.Name,
		Log: d.log.With("component", "metrics")})
	d.rec = rec
	// What the runtime can do, found out at start and every 5 minutes.
	caps, capsComp := newCapabilities(c, rt, rec, native, d.log)
	d.caps = caps
	// The cluster publishes who owns what on the board; the agent reads it
	// and queues its reports; the cluster asks the agent to act. Nothing
	// else connects them.
	var own agent.Ownership
	var board *ownership.Board
	if c.Cluster.Enabled {
		board = ownership.NewBoard(c.Node.Name)
		own = board
	}
	d.agent = agent.New(agent.Options{Settings: settingsOf(c), Runtime: agentRT, Kubelet: kc, Store: st, Ownership: own, StaticPods: static, Observer: observer{rec: rec, node: c.Node.Name, archives: st}, DataDir: c.Node.DataDir,
		MaxConcurrent: c.Checkpoint.MaxConcurrent, Log: d.log})
	var cl *cluster.Cluster
	if c.Cluster.Enabled {
		if cl, err = newCluster(c, st, d.agent, board, d.caps.Current, d.log, rec.ClusterEvent); err != nil {
			return err
		}
	}
	d.cluster = cl

	ln, err := admin.Listen(c.Node.AdminSocket)
	if err != nil {
		return err
	}
	var cb admin.ClusterBackend
	var comps []component
	if cl != nil {
		cb = cl
		comps = append(comps, component{"cluster", cl.Run})
	}
	comps = append(comps, capsComp)
	comps = append(comps, newFenceGuard(c, board, d.agent, d.log)...) // kills the copies if this daemon stops renewing
	comps = append(comps, component{"metrics recorder", func(ctx context.Context) error { rec.Run(ctx); return nil }})
	if addr := c.Metrics.PrometheusAddr; addr != "" {
		comps = append(comps, component{"prometheus endpoint on " + addr, func(ctx context.Context) error {
			return servePrometheus(ctx, addr, rec.Handler())
		}})
		d.log.Info("prometheus endpoint listening", "addr", addr)
	}
	if addr := c.Images.ListenAddr; addr != "" {
		img, err := newImageServer(c, st, dataKey, static != nil, d.log.With("component", "images"))
		if err != nil {
			return fmt.Errorf("image endpoint: %w", err)
		}
		// Only a checkpoint whose restore is handed to kubelet here is
		// served: every pod's pull on the node holds the credentials.
		img.Serves = d.agent.ImagePending
		comps = append(comps, component{"image endpoint on " + addr, func(ctx context.Context) error { return img.Serve(ctx, addr) }})
		d.log.Info("image endpoint listening", "addr", addr)
	}
	comps = append(comps,
		component{"admin socket", func(ctx context.Context) error {
			return admin.Serve(ctx, ln, admin.Handler(statusWithVersion{d}, cb, d.log))
		}},
		component{"agent", d.agent.Run})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, gctx := runComponents(ctx, comps)
	defer os.Remove(c.Node.AdminSocket)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	statusTick := time.NewTicker(5 * time.Second)
	defer statusTick.Stop()
	var watchdog <-chan time.Time
	if wd, err := daemon.SdWatchdogEnabled(false); err == nil && wd > 0 {
		t := time.NewTicker(wd / 2)
		defer t.Stop()
		watchdog = t.C
		d.log.Info("systemd watchdog enabled", "interval", wd)
	}
	ready := d.agent.Ready()
	for {
		select {
		case <-ready:
			ready = nil
			d.notify("READY=1\nSTATUS=" + d.statusLine())
			d.log.Info("crfailoverd ready", "status", d.statusLine())
		case <-statusTick.C:
			d.notify("STATUS=" + d.statusLine())
			d.setGauges()
		case <-watchdog:
			if d.agent.Alive(3 * time.Second) {
				d.notify("WATCHDOG=1")
			} else {
				d.log.Error("discovery loop stuck; withholding the watchdog ping")
			}
		case s := <-sigs:
			if s == syscall.SIGHUP {
				d.reload()
				continue
			}
			d.log.Info("stopping", "signal", s.String())
			d.notify("STOPPING=1")
			cancel()
			d.waitStopped(g)
			return nil
		case <-gctx.Done():
			// A component stopped early: the group has cancelled the rest,
			// with that component's error as the cause.
			err := context.Cause(gctx)
			d.log.Error("stopping", "err", err)
			d.notify("STOPPING=1")
			d.waitStopped(g)
			return err
		}
	}
}

// component is one long-running part of the daemon. run returns when ctx
// is cancelled; returning before that, with an error or not, stops the
// daemon.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// runComponents starts every component in one errgroup under ctx. The
// group's context is cancelled, and Wait returns an error naming the
// component, as soon as one returns while ctx is still live; after ctx is
// cancelled, components stopping is the shutdown and is not an error.
func runComponents(ctx context.Context, comps []component) (*errgroup.Group, context.Context) {
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range comps {
		g.Go(func() error {
			err := c.run(gctx)
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				return fmt.Errorf("%s stopped: %w", c.name, err)
			default:
				return fmt.Errorf("%s stopped unexpectedly", c.name)
			}
		})
	}
	return g, gctx
}

// waitStopped waits, at most shutdownGrace, for the components to return
// after their context was cancelled.
func (d *daemonRun) waitStopped(g *errgroup.Group) {
	stopped := make(chan struct{})
	go func() {
		_ = g.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
		d.log.Info("stopped")
	case <-time.After(shutdownGrace):
		d.log.Error("shutdown took too long; exiting anyway", "grace", shutdownGrace)
	}
}

func (d *daemonRun) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		d.log.Debug("sd_notify failed", "err", err)
	}
}

// reload re-reads the configuration: an invalid one is refused and the
// running one kept. Settings that need a restart are named.
func (d *daemonRun) reload() {
	d.notify("RELOADING=1\nMONOTONIC_USEC=" + daemon.SdNotifyMonotonicUsec())
	defer d.notify("READY=1")
	c, err := config.Load(d.cfgPath)
	if err != nil {
		d.log.Error("configuration reload refused; keeping the running configuration", "config", d.cfgPath, "err", err)
		return
	}
	old := d.cfg
	restart := config.RestartNeeded(old, c)
	if c.Kubelet != old.Kubelet || c.Checkpoint.Method != old.Checkpoint.Method {
		kc, err := newKubelet(c, d.log)
		if err != nil {
			d.log.Error("configuration reload refused; keeping the running configuration", "config", d.cfgPath, "err", err)
			return
		}
		d.agent.SetKubelet(kc)
	}
	d.level.Set(c.Node.LogLevel)
	s := settingsOf(c)
	s.Node = old.Node.Name
	d.agent.Reload(s)
	d.cfg.Checkpoint, d.cfg.Probe, d.cfg.Restore, d.cfg.Kubelet, d.cfg.Node.LogLevel = c.Checkpoint, c.Probe, c.Restore, c.Kubelet, c.Node.LogLevel
	d.cfg.Checkpoint.MaxConcurrent = old.Checkpoint.MaxConcurrent
	d.log.Info("configuration reloaded", "config", d.cfgPath, "method", c.Checkpoint.Method, "default_interval", c.Checkpoint.DefaultInterval,
		"retention", c.Checkpoint.Retention, "log_level", c.Node.LogLevel.String(), "need_restart", restart)
	if len(restart) > 0 {
		d.log.Warn("changed settings take effect after `systemctl restart crfailoverd`: "+strings.Join(restart, ", "),
			"config", d.cfgPath, "need_restart", restart)
	}
}

// statusWithVersion adds the daemon's version and config path to the
// agent's status.
type statusWithVersion struct{ d *daemonRun }

func (s statusWithVersion) Status() api.Status {
	st := s.d.agent.Status()
	st.Version = versionString()
	st.ConfigFile = s.d.cfgPath
	st.Capabilities = capabilitiesOf(s.d.caps)
	return st
}

func (s statusWithVersion) Checkpoints(w string) ([]api.CheckpointInfo, error) {
	return s.d.agent.Checkpoints(w)
}

func (s statusWithVersion) Events(ctx context.Context, after uint64, follow bool) []api.Event {
	evs := s.d.rec.Events(after, 1000)
	if follow && len(evs) == 0 {
		evs = s.d.rec.WaitEvents(ctx, after)
	}
	out := make([]api.Event, 0, len(evs))
	for _, e := range evs {
		out = append(out, api.Event{Seq: e.Seq, Time: e.Time, Kind: e.Kind, Workload: e.Workload, Message: e.Message, Fields: e.Fields})
	}
	return out
}
