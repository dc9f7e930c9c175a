package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/crfailoverd/crfailoverd/test-app/imagebuild"
)

// Bed is a running test bed.
type Bed struct {
	cfg   Config
	state state
	PKI   PKI
	log   io.Writer
}

type state struct {
	Rootfs      string   `json:"rootfs"`
	Versions    Versions `json:"versions"`
	RegistryPID int      `json:"registry_pid"`
	Nodes       []*Node  `json:"nodes"`
	Kubelet     bool     `json:"kubelet"` // the nodes run a real kubelet
	CRIOPatched bool     `json:"crio_patched"`
	// ContainerdRestore: built containerd 2.2/2.3 nodes restore through
	// CreateContainer (EnvContainerdRestore).
	ContainerdRestore bool `json:"containerd_restore,omitempty"`
}

func (b *Bed) statePath() string { return filepath.Join(b.cfg.Dir, "state.json") }

func (b *Bed) saveState() error {
	j, err := json.MarshalIndent(b.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := b.statePath() + ".tmp"
	if err := os.WriteFile(tmp, j, 0o600); err != nil {
		return fmt.Errorf("write bed state: %w", err)
	}
	return os.Rename(tmp, b.statePath())
}

// Config returns the bed's configuration.
func (b *Bed) Config() Config { return b.cfg }

// Versions returns the versions of CRIU, runc and containerd the nodes run.
func (b *Bed) Versions() Versions { return b.state.Versions }

// Nodes returns the bed's nodes.
func (b *Bed) Nodes() []Node {
	out := make([]Node, len(b.state.Nodes))
	for i, n := range b.state.Nodes {
		out[i] = *n
	}
	return out
}

// Node returns the node named name ("n1", "n2", ...).
func (b *Bed) Node(name string) (Node, error) {
	n, err := b.node(name)
	if err != nil {
		return Node{}, err
	}
	return *n, nil
}

func (b *Bed) node(name string) (*Node, error) {
	for _, n := range b.state.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %q in the bed", name)
}

// CheckHost fails fast with a message saying what to do when this machine
// cannot run a bed.
func CheckHost(c Config) error {
	if os.Geteuid() != 0 {
		return errors.New("the test bed must run as root: it creates network namespaces, mounts and containers (run with sudo)")
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "chroot", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing: run scripts/setup-host.sh", tool)
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return errors.New("the go command is missing: the bed builds the test images with it")
	}
	return nil
}

// Up creates a bed of n nodes: it cleans leftovers of an earlier bed,
// prepares the root file system, starts the registry with the images, and
// starts every node. Progress goes to log. On error, whatever was created is
// torn down again.
func Up(ctx context.Context, c Config, n int, log io.Writer) (_ *Bed, err error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("node count %d: want 1 to 200", n)
	}
	if err := CheckHost(c); err != nil {
		return nil, err
	}
	b := &Bed{cfg: c, PKI: pkiAt(filepath.Join(c.Dir, "pki")), log: log}
	if left := Leftovers(c); len(left) > 0 {
		fmt.Fprintf(log, "testbed: removing leftovers of an earlier bed: %s\n", strings.Join(left, "; "))
		if err := Down(ctx, c, log); err != nil {
			return nil, fmt.Errorf("remove leftovers of an earlier bed: %w", err)
		}
	}
	if err := checkPortFree(c.RegistryPort); err != nil {
		return nil, err
	}
	rootfs, v, err := EnsureRootfs(ctx, c, log)
	if err != nil {
		return nil, err
	}
	b.state.Rootfs, b.state.Versions = rootfs, v
	b.state.Kubelet, b.state.CRIOPatched = c.Kubelet, c.CRIOPatched
	b.state.ContainerdRestore = c.Containerd.Restore
	fmt.Fprintf(log, "testbed: root file system %s: %s\n", rootfs, v)
	if err := EnsureContainerdFlavors(ctx, c, n, log); err != nil {
		return nil, err
	}
	if c.Runtime == RuntimeCRIO || c.anyNodeRuns(n, RuntimeCRIO) {
		if err := EnsureCRIO(ctx, c, log); err != nil {
			return nil, err
		}
	}
	if c.Kubelet {
		if err := EnsureKubelet(ctx, c, log); err != nil {
			return nil, err
		}
	}

	// A new bed starts from empty node directories: an earlier bed whose
	// teardown failed half-way may have left its daemons' state, kubelet's
	// static pod manifests or a runtime's store behind.
	if err := os.RemoveAll(filepath.Join(c.Dir, "nodes")); err != nil {
		return nil, fmt.Errorf("remove the node directories of an earlier bed: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "nodes"), 0o700); err != nil {
		return nil, fmt.Errorf("create bed directory: %w", err)
	}
	defer func() {
		if err != nil {
			_ = b.saveState()
			if derr := Down(context.Background(), c, io.Discard); derr != nil {
				err = fmt.Errorf("%w (and tearing the bed down again failed: %v)", err, derr)
			}
		}
	}()
	addrs := map[string]net.IP{}
	for i := 1; i <= n; i++ {
		node := b.newNode(i)
		b.state.Nodes = append(b.state.Nodes, &node)
		addrs[node.Name] = node.Addr.AsSlice()
	}
	if err := b.saveState(); err != nil {
		return nil, err
	}
	if err := writePKI(b.PKI, addrs); err != nil {
		return nil, err
	}
	if err := setupBridge(ctx, c); err != nil {
		return nil, err
	}
	var netns []string
	for _, node := range b.state.Nodes {
		if err := setupNodeNetwork(ctx, c, node.Name, node.Addr); err != nil {
			return nil, err
		}
		netns = append(netns, node.Netns)
	}
	if err := b.startRegistry(ctx, netns); err != nil {
		return nil, err
	}
	for _, node := range b.state.Nodes {
		fmt.Fprintf(log, "testbed: starting node %s (%s)\n", node.Name, node.Addr)
		if err := b.startNode(ctx, node); err != nil {
			return nil, err
		}
	}
	if err := b.saveState(); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "testbed: %d node(s) up; state in %s\n", n, c.Dir)
	return b, nil
}

func (b *Bed) startRegistry(ctx context.Context, netns []string) error {
	logPath := filepath.Join(b.cfg.Dir, "registry.log")
	pid, err := b.spawnHelper(logPath, "", "registry", registryArgs{Port: b.cfg.RegistryPort, Netns: netns})
	if err != nil {
		return fmt.Errorf("start registry: %w", err)
	}
	b.state.RegistryPID = pid
	url := "http://127.0.0.1:" + strconv.Itoa(b.cfg.RegistryPort) + "/v2/"
	if err := waitFor(ctx, 10*time.Second, pid, logPath, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("registry did not come up: %w", err)
	}
	fmt.Fprintf(b.log, "testbed: building and pushing the test images to %s\n", b.cfg.RegistryHost())
	refs, err := imagebuild.BuildAndPushAll(ctx, b.cfg.ModuleDir, "127.0.0.1:"+strconv.Itoa(b.cfg.RegistryPort))
	if err != nil {
		return err
	}
	fmt.Fprintf(b.log, "testbed: pushed %s\n", strings.Join(refs, ", "))
	return nil
}

func checkPortFree(port int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("registry port 127.0.0.1:%d is taken (%v): stop what listens there or set %s to a free port", port, err, EnvRegistryPort)
	}
	return ln.Close()
}

// Open returns the bed that Up left running, from its state file.
func Open(c Config) (*Bed, error) {
	b := &Bed{cfg: c, PKI: pkiAt(filepath.Join(c.Dir, "pki")), log: io.Discard}
	j, err := os.ReadFile(b.statePath())
	if err != nil {
		return nil, fmt.Errorf("no running bed in %s (start one with nodebed up): %w", c.Dir, err)
	}
	if err := json.Unmarshal(j, &b.state); err != nil {
		return nil, fmt.Errorf("read bed state %s: %w", b.statePath(), err)
	}
	// The flavor is the running bed's, whatever the environment says now.
	b.cfg.Kubelet, b.cfg.CRIOPatched = b.state.Kubelet, b.state.CRIOPatched
	b.cfg.Containerd.Restore = b.state.ContainerdRestore
	if len(b.state.Nodes) > 0 && b.state.Nodes[0].Runtime != "" {
		b.cfg.Runtime = b.state.Nodes[0].Runtime
	}
	return b, nil
}

// KillNode cuts the power of a node: every process of it (containerd,
// shims, containers, the kubelet emulator, and whatever else runs in its
// network namespace, crfailoverd included) is killed with SIGKILL, and its
// link goes down so that it is unreachable, not refusing. Its disk (the node
// directory) stays.
func (b *Bed) KillNode(ctx context.Context, name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	if err := ip(ctx, "link", "set", hostVeth(n.Name), "down"); err != nil {
		return fmt.Errorf("kill node %s: %w", name, err)
	}
	if err := killNodeProcesses(n.Netns); err != nil {
		return fmt.Errorf("kill node %s: %w", name, err)
	}
	n.RuntimePID, n.EmulatorPID, n.KubeletPID = 0, 0, 0
	return b.saveState()
}

// StartNode boots a killed node again: link up, containerd and the kubelet
// emulator started on the node's surviving disk.
func (b *Bed) StartNode(ctx context.Context, name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	if err := ip(ctx, "link", "set", hostVeth(n.Name), "up"); err != nil {
		return fmt.Errorf("start node %s: %w", name, err)
	}
	if err := b.startNode(ctx, n); err != nil {
		return err
	}
	return b.saveState()
}

// CutNode cuts a node off the network (its processes keep running).
func (b *Bed) CutNode(ctx context.Context, name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	return ip(ctx, "link", "set", hostVeth(n.Name), "down")
}

// HealNode reconnects a node that CutNode cut off.
func (b *Bed) HealNode(ctx context.Context, name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	return ip(ctx, "link", "set", hostVeth(n.Name), "up")
}

// Down tears the bed down. It works from what it finds on the machine, not
// only from the state file, so it also cleans the leftovers of a bed whose
// program died: every process in the bed's network namespaces or carrying
// its marker, the namespaces, links and cgroups, and the node directories.
func Down(ctx context.Context, c Config, log io.Writer) error {
	var errs []error
	for _, ns := range bedNetns() {
		if err := killNodeProcesses(filepath.Join(netnsDir, ns)); err != nil {
			errs = append(errs, err)
		}
	}
	thawBedCgroups("")
	if left := killAll(func(pid int) bool { return hasMarker(pid, c.Dir) || inBedCgroup(pid) }, 10*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes of the bed survived SIGKILL: %s", describePids(left)))
	}
	for _, ns := range bedNetns() {
		if err := ip(ctx, "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range bedLinks() {
		if err := ip(ctx, "link", "delete", l); err != nil && linkExists(l) {
			errs = append(errs, err)
		}
	}
	// A process a killed CRIU was restoring may show up in a bed cgroup
	// late: sweep until none has appeared for a while.
	for quiet, deadline := 0, time.Now().Add(10*time.Second); quiet < 5 && time.Now().Before(deadline); {
		thawBedCgroups("")
		if left := killAll(func(pid int) bool { return inBedCgroup(pid) }, 2*time.Second); len(left) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := removeBedCgroups(10 * time.Second); err != nil {
		errs = append(errs, err)
	}
	for _, m := range mountsUnder(c.Dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(errs) == 0 {
		for _, p := range []string{filepath.Join(c.Dir, "nodes"), filepath.Join(c.Dir, "pki"), filepath.Join(c.Dir, "state.json")} {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintln(log, "testbed: down")
	return nil
}

// Leftovers names what a bed left on the machine: processes, network
// namespaces, links, cgroups and mounts. Empty means clean.
func Leftovers(c Config) []string {
	var out []string
	if ps := pids(func(pid int) bool { return !isZombie(pid) && (hasMarker(pid, c.Dir) || inBedCgroup(pid)) }); len(ps) > 0 {
		out = append(out, "processes "+describePids(ps))
	}
	if ns := bedNetns(); len(ns) > 0 {
		out = append(out, "network namespaces "+strings.Join(ns, ", "))
	}
	if l := bedLinks(); len(l) > 0 {
		out = append(out, "links "+strings.Join(l, ", "))
	}
	if cg := bedCgroups(); len(cg) > 0 {
		out = append(out, "cgroups "+strings.Join(cg, ", "))
	}
	if m := mountsUnder(c.Dir, c.CacheDir); len(m) > 0 {
		out = append(out, "mounts "+strings.Join(m, ", "))
	}
	return out
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}
