package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
)

// nemesis runs the soak's faults on the bed. Every change to the bed (a
// node killed or booted, a link cut, a daemon signalled or started) is
// made under mu.
type nemesis struct {
	b     *Bed
	bin   string
	start time.Time
	log   io.Writer
	ws    []soakWorkload

	mu      sync.Mutex
	configs map[string]string // node -> the daemon's configuration
	pids    map[string]int    // node -> the daemon's pid
	// down: nodes whose daemon the nemesis stopped (killed with its node
	// or alone); their exit is no crash.
	down map[string]bool
	// busy: nodes a fault is acting on (the admin API is asked elsewhere).
	busy    map[string]int
	crashes []soak.Event
}

func (m *nemesis) since() time.Duration { return time.Since(m.start) }

func (m *nemesis) logf(format string, args ...any) {
	fmt.Fprintf(m.log, "soak: t=%5.1fs "+format+"\n", append([]any{m.since().Seconds()}, args...)...)
}

// run executes fault f: it waits until its planned start, does it, waits
// until its planned end and undoes it, recording Start, End and Err. A
// fault not started when ctx ends is not run; one started is always undone
// at its planned end (its undo does not see ctx's cancel).
func (m *nemesis) run(ctx context.Context, f *soak.Fault) {
	select {
	case <-ctx.Done():
		f.Err = "not run: the soak was stopped before its start"
		return
	case <-time.After(time.Until(m.start.Add(f.At))):
	}
	f.Start = m.since()
	marked := slices.Clone(f.Nodes)
	m.mark(marked, 1)
	undo, err := m.do(ctx, f)
	if err != nil {
		f.Err = err.Error()
		m.logf("%s %v: %v", f.Kind, f.Nodes, err)
	} else {
		m.logf("%s %v for %s", f.Kind, f.Nodes, f.For)
	}
	// Undo at the planned end even when the soak is being stopped.
	<-time.After(time.Until(m.start.Add(f.At + f.For)))
	if undo != nil {
		if err := undo(context.WithoutCancel(ctx)); err != nil {
			if f.Err != "" {
				f.Err += "; "
			}
			f.Err += "undo: " + err.Error()
			m.logf("%s %v: undo: %v", f.Kind, f.Nodes, err)
		} else {
			m.logf("%s %v undone", f.Kind, f.Nodes)
		}
	}
	f.End = m.since()
	m.mark(marked, -1)
	if f.Kind == soak.LeaderKill {
		m.mark(f.Nodes, -1) // leaderKill marked the nodes it picked
	}
}

func (m *nemesis) mark(nodes []string, d int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range nodes {
		m.busy[n] += d
	}
}

// do starts fault f and returns what undoes it (nil: nothing to undo).
// A fault that fails half-way returns the undo of what it did.
func (m *nemesis) do(ctx context.Context, f *soak.Fault) (func(context.Context) error, error) {
	if f.Kind != soak.LeaderKill && len(f.Nodes) == 0 {
		return nil, fmt.Errorf("refused %s: no node named", f.Kind)
	}
	switch f.Kind {
	case soak.PowerCut:
		n := f.Nodes[0]
		if err := m.powerCut(ctx, n); err != nil {
			return m.undoPowerCut(n), err
		}
		return m.undoPowerCut(n), nil
	case soak.Partition:
		var cut []string
		undo := func(ctx context.Context) error {
			var errs []error
			for _, n := range cut {
				errs = append(errs, m.locked(func() error { return m.b.HealNode(ctx, n) }))
			}
			return errors.Join(errs...)
		}
		for _, n := range f.Nodes {
			if err := m.locked(func() error { return m.b.CutNode(ctx, n) }); err != nil {
				return undo, err
			}
			cut = append(cut, n)
		}
		return undo, nil
	case soak.OneWay:
		n := f.Nodes[0]
		undo := func(ctx context.Context) error { return m.locked(func() error { return m.b.restoreSend(ctx, n) }) }
		return undo, m.locked(func() error { return m.b.blockSend(ctx, n) })
	case soak.DaemonKill:
		n := f.Nodes[0]
		return m.undoDaemonKill(n), m.killDaemon(n)
	case soak.DaemonPause:
		n := f.Nodes[0]
		if err := m.signalDaemon(n, syscall.SIGSTOP); err != nil {
			return nil, err
		}
		return func(context.Context) error { return m.signalDaemon(n, syscall.SIGCONT) }, nil
	case soak.DiskFull:
		n := f.Nodes[0]
		node, err := m.b.Node(n)
		if err != nil {
			return nil, err
		}
		path, err := fillDisk(node.DaemonDir())
		undo := func(context.Context) error { return freeDisk(path) }
		if path == "" {
			undo = nil
		}
		return undo, err
	case soak.LeaderKill:
		return m.leaderKill(ctx, f)
	}
	return nil, fmt.Errorf("refused fault kind %q: not one the runner knows", f.Kind)
}

func (m *nemesis) locked(f func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return f()
}

func (m *nemesis) powerCut(ctx context.Context, node string) error {
	return m.locked(func() error {
		m.down[node] = true
		return m.b.KillNode(ctx, node)
	})
}

// undoPowerCut boots the node again as systemd orders it: its runtime,
// its daemon, then kubelet (or the emulator).
func (m *nemesis) undoPowerCut(node string) func(context.Context) error {
	return func(ctx context.Context) error {
		return m.locked(func() error {
			return m.b.BootNode(ctx, node, func(ctx context.Context) error { return m.startDaemonLocked(ctx, node) })
		})
	}
}

func (m *nemesis) killDaemon(node string) error {
	return m.locked(func() error {
		pid := m.pids[node]
		if pid == 0 {
			return fmt.Errorf("refused daemon-kill on %s: no daemon running there", node)
		}
		m.down[node] = true
		if err := Signal(pid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill crfailoverd (pid %d) on %s: %w", pid, node, err)
		}
		return nil
	})
}

func (m *nemesis) undoDaemonKill(node string) func(context.Context) error {
	return func(ctx context.Context) error {
		return m.locked(func() error { return m.startDaemonLocked(ctx, node) })
	}
}

func (m *nemesis) signalDaemon(node string, sig syscall.Signal) error {
	return m.locked(func() error {
		pid := m.pids[node]
		if pid == 0 {
			return fmt.Errorf("refused %s to the daemon on %s: no daemon running there", sig, node)
		}
		if err := Signal(pid, sig); err != nil {
			return fmt.Errorf("%s crfailoverd (pid %d) on %s: %w", sig, pid, node, err)
		}
		return nil
	})
}

// startDaemonLocked starts node's daemon again with its configuration,
// once the old one is gone; its stale admin socket is removed first (the
// start waits for the socket to appear). Called with mu held.
func (m *nemesis) startDaemonLocked(ctx context.Context, node string) error {
	if old := m.pids[node]; old != 0 {
		_ = Signal(old, syscall.SIGKILL)
		if err := waitGone(ctx, old, 10*time.Second); err != nil {
			return fmt.Errorf("restart crfailoverd on %s: %w", node, err)
		}
	}
	n, err := m.b.Node(node)
	if err != nil {
		return err
	}
	if err := os.Remove(n.DaemonSocket()); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("restart crfailoverd on %s: remove its stale admin socket: %w", node, err)
	}
	pid, err := m.b.StartDaemon(ctx, node, m.bin, m.configs[node])
	m.pids[node] = pid
	if err != nil {
		return err
	}
	m.down[node] = false
	return nil
}

// waitGone waits until process pid has exited (the bed reaps its children).
func waitGone(ctx context.Context, pid int, within time.Duration) error {
	return poll(ctx, within, fmt.Sprintf("process %d to exit", pid), func() (bool, error) {
		return syscall.Kill(pid, 0) != nil || isZombie(pid), nil
	})
}

// watchCrashes checks every 500 ms that the daemons the nemesis did not
// stop are alive; one that exited is recorded as a crash and started
// again, so that the soak goes on.
func (m *nemesis) watchCrashes(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		for _, n := range m.b.Nodes() {
			pid := m.pids[n.Name]
			if m.down[n.Name] || pid == 0 || (syscall.Kill(pid, 0) == nil && !isZombie(pid)) {
				continue
			}
			e := soak.Event{At: m.since(), Node: n.Name, What: fmt.Sprintf("crfailoverd (pid %d) exited, not killed by the nemesis", pid)}
			m.crashes = append(m.crashes, e)
			m.logf("CRASH on %s: %s", n.Name, e.What)
			m.pids[n.Name] = 0
			if err := m.startDaemonLocked(context.WithoutCancel(ctx), n.Name); err != nil {
				m.logf("restart crfailoverd on %s: %v", n.Name, err)
			}
		}
		m.mu.Unlock()
	}
}

// liveNode is a node no fault is acting on, to ask the cluster from.
func (m *nemesis) liveNode(not ...string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range m.b.Nodes() {
		if m.busy[n.Name] == 0 && !m.down[n.Name] && !slices.Contains(not, n.Name) {
			return n.Name, nil
		}
	}
	return "", errors.New("no node is free of faults to ask the cluster")
}

// leaderKill power-cuts the owner of workload f.Workload, waits until the
// cluster placed it elsewhere, and SIGKILLs the then leader's daemon.
func (m *nemesis) leaderKill(ctx context.Context, f *soak.Fault) (func(context.Context) error, error) {
	if f.Workload < 0 || f.Workload >= len(m.ws) {
		return nil, fmt.Errorf("refused leader-kill: workload %d is not one of the %d", f.Workload, len(m.ws))
	}
	id := m.ws[f.Workload].ID
	ask, err := m.liveNode()
	if err != nil {
		return nil, fmt.Errorf("refused leader-kill of %s: %w", id, err)
	}
	w, err := m.b.ClusterWorkload(ctx, ask, id)
	if err != nil {
		return nil, fmt.Errorf("leader-kill: the owner of %s: %w", id, err)
	}
	owner := w.Owner
	f.Nodes = []string{owner}
	m.mark([]string{owner}, 1)
	if err := m.powerCut(ctx, owner); err != nil {
		return m.undoPowerCut(owner), err
	}
	undo := m.undoPowerCut(owner)
	var leader string
	err = poll(ctx, 30*time.Second, "the cluster to place "+id+" off "+owner, func() (bool, error) {
		ask, err := m.liveNode(owner)
		if err != nil {
			return false, err
		}
		w, err := m.b.ClusterWorkload(ctx, ask, id)
		if err != nil || w.Owner == owner {
			return false, err
		}
		a, err := m.b.Admin(ask)
		if err != nil {
			return false, err
		}
		ms, err := a.Members(ctx)
		if err != nil {
			return false, err
		}
		for _, mb := range ms {
			if mb.Leader {
				leader = mb.Name
			}
		}
		return leader != "" && leader != owner, nil
	})
	if err != nil {
		return undo, fmt.Errorf("leader-kill of %s: %w", id, err)
	}
	f.Nodes = append(f.Nodes, leader)
	m.mark([]string{leader}, 1)
	if err := m.killDaemon(leader); err != nil {
		return undo, err
	}
	return func(ctx context.Context) error {
		return errors.Join(undo(ctx), m.undoDaemonKill(leader)(ctx))
	}, nil
}

// fillName is the file fillDisk writes.
const fillName = "soak-disk-full"

// fillDisk fills the tmpfs mounted on dir until ENOSPC and returns the
// file it wrote. It refuses a dir that is not a tmpfs of its own: filling
// the host's disk would hit every node and the machine.
func fillDisk(dir string) (string, error) {
	if !isTmpfs(dir) {
		return "", fmt.Errorf("refused disk-full on %s: not a tmpfs of its own (the bed's nodes need Config.DataTmpfs)", dir)
	}
	path := filepath.Join(dir, fillName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("disk-full on %s: %w", dir, err)
	}
	defer f.Close()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return path, fmt.Errorf("disk-full on %s: %w", dir, err)
	}
	if free := int64(st.Bavail) * st.Bsize; free > 0 {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, free); err != nil && !errors.Is(err, syscall.ENOSPC) {
			return path, fmt.Errorf("disk-full on %s: fallocate %d bytes: %w", dir, free, err)
		}
	}
	// Whatever is left, a MiB and then a page at a time.
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return path, err
	}
	for _, chunk := range []int{1 << 20, 4096, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				return path, fmt.Errorf("disk-full on %s: %w", dir, err)
			}
		}
	}
	return path, nil
}

func freeDisk(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("free the disk: %w", err)
	}
	return nil
}

// blackholeMAC is where a one-way node's packets to its peers go: no
// interface has it, so the bridge floods them and every peer drops them.
const blackholeMAC = "02:00:5e:00:de:ad"

// blockSend makes node unable to send to the other nodes while it still
// receives from them: permanent neighbour entries inside its namespace
// point every peer's address at a MAC nobody has.
func (b *Bed) blockSend(ctx context.Context, node string) error {
	n, err := b.node(node)
	if err != nil {
		return err
	}
	for _, o := range b.state.Nodes {
		if o.Name == node {
			continue
		}
		if err := ip(ctx, "-n", netnsName(n.Name), "neigh", "replace", o.Addr.String(), "lladdr", blackholeMAC, "dev", "eth0", "nud", "permanent"); err != nil {
			return fmt.Errorf("one-way on %s: %w", node, err)
		}
	}
	return nil
}

// restoreSend undoes blockSend.
func (b *Bed) restoreSend(ctx context.Context, node string) error {
	n, err := b.node(node)
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range b.state.Nodes {
		if o.Name != node {
			if err := ip(ctx, "-n", netnsName(n.Name), "neigh", "del", o.Addr.String(), "dev", "eth0"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("heal one-way on %s: %w", node, err)
	}
	return nil
}
