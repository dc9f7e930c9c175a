package testbed

// Systemd nodes for the operations tests: a cached Debian root file system
// with systemd, dbus, openssh-server, python3 and sudo, booted once per
// node with systemd-nspawn into a network namespace the bed creates (a veth
// pair onto the bridge crfops0). Each node sees the cached root through an
// overlay mounted in the node's private mount namespace, so that a node's
// changes land in its own upper directory and vanish with it, and the host
// keeps no mount. They are real targets for ansible-playbook over SSH.
//
// The host's PID 1 is not systemd, so systemd-nspawn runs with
// --register=no --keep-unit, in its own mount namespace with a tmpfs on
// /run/systemd/nspawn (the recipe of shared/REAL-STACK.md).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment variables of the systemd nodes, with their defaults.
const (
	EnvOpsDir    = "CRF_OPS_DIR"    // state of the running nodes (default /var/lib/crfailoverd-ops)
	EnvOpsSubnet = "CRF_OPS_SUBNET" // bridge subnet, a /24 (default 10.78.0.0/24)
	EnvOpsSuite  = "CRF_OPS_SUITE"  // Debian suite of the root file system (default: the host's, else bookworm)
)

// Names of what the systemd nodes create on the host: distinct from the
// container bed's (crfbed0, crfbed-*), so that both can be told apart.
const (
	opsNetnsPrefix = "crfops-"
	opsBridge      = "crfops0"
	opsMarker      = "CRF_OPS_OWNER"
	opsStamp       = ".crfops-ready"
)

// opsPackages are installed into the systemd root file system: an init,
// SSH and what ansible needs on a target (python3, python3-apt for the apt
// module, sudo), iproute2 and procps for looking around.
var opsPackages = []string{"systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "sudo",
	"iproute2", "procps", "ca-certificates"}

// OpsConfig says where the systemd nodes keep their files and which
// addresses they use.
type OpsConfig struct {
	CacheDir string       // cached root file systems (shared with the container bed)
	Dir      string       // state of the running nodes: overlays, logs, keys
	Subnet   netip.Prefix // bridge subnet; .1 is the host, .11, .12, ... the nodes
	Suite    string       // Debian suite to bootstrap
	// ModuleDir is the crfailoverd module's root, for building CRI-O for
	// nodes that run it.
	ModuleDir string
}

// OpsConfigFromEnv derives the systemd nodes' configuration from the bed's
// and the environment.
func OpsConfigFromEnv(c Config) (OpsConfig, error) {
	oc := OpsConfig{CacheDir: c.CacheDir, Dir: envOr(EnvOpsDir, "/var/lib/crfailoverd-ops"), Suite: os.Getenv(EnvOpsSuite), ModuleDir: c.ModuleDir}
	if oc.Suite == "" {
		oc.Suite = hostSuite()
	}
	subnet := envOr(EnvOpsSubnet, "10.78.0.0/24")
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() != 24 {
		return oc, fmt.Errorf("%s=%q: want an IPv4 /24 such as 10.78.0.0/24", EnvOpsSubnet, subnet)
	}
	oc.Subnet = p.Masked()
	if oc.Subnet == c.Subnet {
		return oc, fmt.Errorf("%s=%s is the container bed's subnet too: choose another", EnvOpsSubnet, subnet)
	}
	if !filepath.IsAbs(oc.Dir) {
		return oc, fmt.Errorf("%s=%q: want an absolute path", EnvOpsDir, oc.Dir)
	}
	return oc, nil
}

// hostSuite is the host's Debian code name, or bookworm.
func hostSuite() string {
	if v := scanFile("/etc/os-release", func(line string) string {
		if rest, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			return strings.Trim(rest, `"`)
		}
		return ""
	}); v != "" {
		return v
	}
	return "bookworm"
}

// HostAddr is the host's address on the systemd nodes' bridge.
func (oc OpsConfig) HostAddr() netip.Addr { return oc.Subnet.Addr().Next() }

// NodeAddr is the address of systemd node i (1-based).
func (oc OpsConfig) NodeAddr(i int) netip.Addr {
	b := oc.Subnet.Addr().As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

// SystemdRootfsDir is the cached systemd root file system.
func (oc OpsConfig) SystemdRootfsDir() string {
	return filepath.Join(oc.CacheDir, "systemd-"+oc.Suite)
}

// EnsureSystemdRootfs returns the cached systemd root file system, creating
// it with debootstrap when missing (into a .partial directory renamed when
// complete). Progress goes to log.
func EnsureSystemdRootfs(ctx context.Context, oc OpsConfig, log io.Writer) (string, error) {
	dir := oc.SystemdRootfsDir()
	if _, err := os.Stat(filepath.Join(dir, opsStamp)); err == nil {
		return dir, nil
	}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		if _, err := exec.LookPath("debootstrap"); err != nil {
			return "", errors.New("debootstrap is not installed: run scripts/ops-setup.sh")
		}
		mirror, err := AptMirror()
		if err != nil {
			return "", err
		}
		partial := dir + ".partial"
		if err := os.RemoveAll(partial); err != nil {
			return "", fmt.Errorf("remove unfinished root file system %s: %w", partial, err)
		}
		if err := os.MkdirAll(oc.CacheDir, 0o755); err != nil {
			return "", fmt.Errorf("create cache directory: %w", err)
		}
		args := []string{"--variant=minbase", "--include=" + strings.Join(opsPackages, ","), oc.Suite, partial, mirror}
		// A suite the host's debootstrap has no script for (a newer
		// testing) is bootstrapped with sid's.
		if _, err := os.Stat("/usr/share/debootstrap/scripts/" + oc.Suite); err != nil {
			args = append(args, "/usr/share/debootstrap/scripts/sid")
		}
		fmt.Fprintf(log, "testbed: bootstrapping Debian %s with systemd into %s from %s (a few minutes, cached afterwards)\n", oc.Suite, dir, mirror)
		logPath := filepath.Join(oc.CacheDir, "debootstrap-systemd.log")
		out, err := os.Create(logPath)
		if err != nil {
			return "", fmt.Errorf("create debootstrap log: %w", err)
		}
		cmd := exec.CommandContext(ctx, "debootstrap", args...)
		cmd.Stdout, cmd.Stderr = out, out
		err = cmd.Run()
		out.Close()
		if err != nil {
			tail, _ := tailFile(logPath, 15)
			return "", fmt.Errorf("debootstrap %s failed: %w (log %s):\n%s", oc.Suite, err, logPath, tail)
		}
		if err := configureSystemdRootfs(partial); err != nil {
			return "", err
		}
		if err := os.Rename(partial, dir); err != nil {
			return "", fmt.Errorf("move root file system into place: %w", err)
		}
	} else if err := configureSystemdRootfs(dir); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, opsStamp), []byte(oc.Suite+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("mark root file system ready: %w", err)
	}
	return dir, nil
}

// configureSystemdRootfs makes the root file system boot quietly in a
// container with no route to a mirror: no periodic apt or scrub timers (the
// apt ones would hold the dpkg lock under a playbook), key-only root login,
// no DNS lookups by sshd, and an empty machine id (each node gets its own).
// It is idempotent.
func configureSystemdRootfs(dir string) error {
	files := map[string]string{
		"etc/hosts":                               "127.0.0.1 localhost\n::1 localhost\n",
		"etc/resolv.conf":                         "# crfailoverd systemd node: no name service\n",
		"etc/ssh/sshd_config.d/crfops.conf":       "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
		"etc/machine-id":                          "",
		"etc/systemd/journald.conf.d/crfops.conf": "[Journal]\nStorage=persistent\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("configure systemd root file system: %w", err)
		}
		_ = os.Remove(p) // resolv.conf may be a dangling symlink
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("configure systemd root file system: %w", err)
		}
	}
	for _, unit := range []string{"apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
		"systemd-timesyncd.service", "getty@tty1.service", "console-getty.service"} {
		p := filepath.Join(dir, "etc/systemd/system", unit)
		_ = os.Remove(p)
		if err := os.Symlink("/dev/null", p); err != nil {
			return fmt.Errorf("mask %s: %w", unit, err)
		}
	}
	return nil
}

// SystemdNode is one booted systemd node.
type SystemdNode struct {
	Name    string
	Runtime string // container runtime: NodeRuntimeNone, NodeRuntimeContainerd or NodeRuntimeCRIO
	Suite   string // Debian suite of its root file system
	Addr    netip.Addr
	Dir     string // node directory: upper/, work/, root/ (mount point inside the node's mount namespace), nspawn.log
	Netns   string // path of the network namespace
	// NspawnPID is systemd-nspawn's process; LeaderPID the container's init
	// (systemd) as the host sees it.
	NspawnPID, LeaderPID int
	Booted               time.Duration // from start until systemctl is-system-running said running or degraded
	started              time.Time
}

// SystemdNodes is a set of booted systemd nodes on their own bridge.
type SystemdNodes struct {
	cfg   OpsConfig
	Nodes []*SystemdNode
}

// StartSystemdNodes boots one systemd node per spec, named s1..sN at
// NodeAddr(1..N), each with authorizedKey (an OpenSSH public key line) in
// root's authorized_keys and the container runtime its spec names (see
// nspawn_runtime.go), and waits until every one reports running or
// degraded. Leftovers of an earlier run are removed first. On error the
// nodes started so far are stopped again.
func StartSystemdNodes(ctx context.Context, oc OpsConfig, specs []SystemdNodeSpec, authorizedKey string, log io.Writer) (*SystemdNodes, error) {
	roots := map[SystemdNodeSpec]string{}
	for _, sp := range specs {
		sp = sp.withDefaults(oc)
		if _, ok := roots[sp]; ok {
			continue
		}
		soc := oc
		soc.Suite = sp.Suite
		base, err := EnsureSystemdRootfs(ctx, soc, log)
		if err != nil {
			return nil, err
		}
		if roots[sp], err = EnsureSystemdRuntimeRootfs(ctx, soc, base, sp.Runtime, log); err != nil {
			return nil, err
		}
	}
	if err := StopSystemdNodes(oc, log); err != nil {
		return nil, fmt.Errorf("remove leftovers of an earlier run: %w", err)
	}
	if err := os.MkdirAll(oc.Dir, 0o755); err != nil {
		return nil, err
	}
	s := &SystemdNodes{cfg: oc}
	ok := false
	defer func() {
		if !ok {
			_ = StopSystemdNodes(oc, log)
		}
	}()
	if err := ip(ctx, "link", "add", opsBridge, "type", "bridge"); err != nil {
		return nil, fmt.Errorf("create bridge: %w", err)
	}
	if err := ip(ctx, "addr", "add", netip.PrefixFrom(oc.HostAddr(), oc.Subnet.Bits()).String(), "dev", opsBridge); err != nil {
		return nil, err
	}
	if err := ip(ctx, "link", "set", opsBridge, "up"); err != nil {
		return nil, err
	}
	for i, sp := range specs {
		sp = sp.withDefaults(oc)
		node := &SystemdNode{Name: "s" + strconv.Itoa(i+1), Addr: oc.NodeAddr(i + 1), Runtime: sp.Runtime, Suite: sp.Suite}
		node.Dir = filepath.Join(oc.Dir, node.Name)
		node.Netns = filepath.Join(netnsDir, opsNetnsPrefix+node.Name)
		if err := opsNodeNetwork(ctx, oc, node); err != nil {
			return nil, err
		}
		if err := prepareNodeUpper(node, authorizedKey); err != nil {
			return nil, err
		}
		if err := s.boot(node, roots[sp]); err != nil {
			return nil, err
		}
		s.Nodes = append(s.Nodes, node)
	}
	for _, node := range s.Nodes {
		if err := s.waitRunning(ctx, node, 3*time.Minute); err != nil {
			tail, _ := tailFile(filepath.Join(node.Dir, "nspawn.log"), 30)
			return nil, fmt.Errorf("node %s: %w; nspawn log:\n%s", node.Name, err, tail)
		}
		rt := node.Runtime
		if rt == NodeRuntimeNone {
			rt = "none"
		}
		fmt.Fprintf(log, "testbed: systemd node %s (%s, Debian %s, runtime %s) up in %s\n", node.Name, node.Addr, node.Suite, rt, node.Booted.Round(time.Millisecond))
	}
	ok = true
	return s, nil
}

func opsNodeNetwork(ctx context.Context, oc OpsConfig, node *SystemdNode) error {
	ns, hv, peer := opsNetnsPrefix+node.Name, opsNetnsPrefix+node.Name+"h", opsNetnsPrefix+node.Name+"c"
	for _, st := range [][]string{
		{"netns", "add", ns},
		{"link", "add", hv, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", ns},
		{"link", "set", hv, "master", opsBridge},
		{"link", "set", hv, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "set", peer, "name", "eth0"},
		{"-n", ns, "addr", "add", netip.PrefixFrom(node.Addr, oc.Subnet.Bits()).String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", oc.HostAddr().String()},
	} {
		if err := ip(ctx, st...); err != nil {
			return fmt.Errorf("network of systemd node %s: %w", node.Name, err)
		}
	}
	return nil
}

// prepareNodeUpper writes the node's own files into its overlay's upper
// directory before it boots: host name, machine id, root's authorized key.
// It also creates the host directory bound as the runtime's storage.
func prepareNodeUpper(node *SystemdNode, authorizedKey string) error {
	upper := filepath.Join(node.Dir, "upper")
	for _, d := range []string{upper, filepath.Join(node.Dir, "work"), filepath.Join(node.Dir, "root"), filepath.Join(node.Dir, "storage")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{"etc/hostname", node.Name + "\n", 0o644},
		{"etc/machine-id", hex.EncodeToString(id) + "\n", 0o444},
		{"root/.ssh/authorized_keys", strings.TrimSpace(authorizedKey) + "\n", 0o600},
	}
	if err := os.MkdirAll(filepath.Join(upper, "root/.ssh"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(upper, "root"), 0o700); err != nil {
		return err
	}
	for _, f := range files {
		p := filepath.Join(upper, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(f.content), f.mode); err != nil {
			return fmt.Errorf("prepare node %s: %w", node.Name, err)
		}
	}
	return nil
}

// nspawnScript runs in a new mount namespace: the overlay root and the
// tmpfs systemd-nspawn needs exist only there. $NSPAWN_ARGS (unquoted:
// words without white space) holds the node's own options, see
// nodeNspawnArgs.
const nspawnScript = `set -e
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$NODEDIR/upper,workdir=$NODEDIR/work" "$NODEDIR/root"
mkdir -p /run/systemd/nspawn
mount -t tmpfs tmpfs /run/systemd/nspawn
exec systemd-nspawn --register=no --keep-unit -q --console=read-only --link-journal=no \
	--timezone=off --resolv-conf=off -M "$NODE" --network-namespace-path="$NETNS" $NSPAWN_ARGS -D "$NODEDIR/root" -b`

func (s *SystemdNodes) boot(node *SystemdNode, lower string) error {
	out, err := os.OpenFile(filepath.Join(node.Dir, "nspawn.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command("unshare", "--mount", "--", "sh", "-c", nspawnScript)
	cmd.Env = append(os.Environ(), opsMarker+"="+s.cfg.Dir, "LOWER="+lower, "NODEDIR="+node.Dir, "NODE="+node.Name, "NETNS="+node.Netns,
		"NSPAWN_ARGS="+strings.Join(nodeNspawnArgs(node), " "))
	if needsUnifiedCgroup(lower) {
		cmd.Env = append(cmd.Env, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start systemd-nspawn for %s: %w", node.Name, err)
	}
	go func() { _ = cmd.Wait() }()
	node.NspawnPID, node.started = cmd.Process.Pid, start
	return nil
}

// waitRunning finds the node's init and polls systemctl is-system-running
// until it says running or degraded.
func (s *SystemdNodes) waitRunning(ctx context.Context, node *SystemdNode, within time.Duration) error {
	start := node.started
	deadline := start.Add(within)
	last := ""
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !alive(node.NspawnPID) {
			return errors.New("systemd-nspawn exited")
		}
		if node.LeaderPID == 0 {
			node.LeaderPID = containerLeader(node.NspawnPID)
		}
		if node.LeaderPID != 0 {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			out, _ := s.execLeader(c, node, "systemctl", "is-system-running")
			cancel()
			last = strings.TrimSpace(out)
			if last == "running" || last == "degraded" {
				node.Booted = time.Since(start)
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not running after %s (systemctl is-system-running: %q)", within, last)
}

// containerLeader finds the container's init: a child of systemd-nspawn
// that is PID 1 in its own PID namespace.
func containerLeader(nspawn int) int {
	for _, pid := range pids(func(pid int) bool { return ppid(pid) == nspawn }) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
				f := strings.Fields(rest)
				if len(f) >= 2 && f[len(f)-1] == "1" {
					return pid
				}
			}
		}
	}
	return 0
}

func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil && !isZombie(pid) }

func (s *SystemdNodes) execLeader(ctx context.Context, node *SystemdNode, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(node.LeaderPID), "-a", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Exec runs a command inside a node (all of its namespaces, as root) and
// returns its combined output.
func (s *SystemdNodes) Exec(ctx context.Context, node *SystemdNode, args ...string) (string, error) {
	out, err := s.execLeader(ctx, node, args...)
	if err != nil {
		return out, fmt.Errorf("%s on %s: %w: %s", strings.Join(args, " "), node.Name, err, strings.TrimSpace(out))
	}
	return out, nil
}

// Marker is the environment entry (KEY=VALUE) that marks processes started
// for these nodes (such as ansible-playbook and its SSH connections), so
// that StopSystemdNodes finds and ends them.
func (s *SystemdNodes) Marker() string { return opsMarker + "=" + s.cfg.Dir }

// Stop stops the nodes and removes everything they created on the host.
func (s *SystemdNodes) Stop(log io.Writer) error { return StopSystemdNodes(s.cfg, log) }

// StopSystemdNodes stops every systemd node of oc (an orderly poweroff
// first, then SIGKILL), ends every process carrying the marker, and removes
// the network namespaces, links and node directories. The cached root file
// system stays. It works from what it finds on the host, so it also cleans
// up after a crashed run.
func StopSystemdNodes(oc OpsConfig, log io.Writer) error {
	var errs []error
	marked := func(pid int) bool { return hasEnv(pid, opsMarker+"="+oc.Dir) }
	// systemd-nspawn powers its container off on SIGTERM.
	nspawns := pids(func(pid int) bool { return marked(pid) && isNspawn(pid) })
	for _, p := range nspawns {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		left := 0
		for _, p := range nspawns {
			if alive(p) {
				left++
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var inos []uint64
	for _, ns := range opsNetns() {
		if ino, err := nsInode(filepath.Join(netnsDir, ns)); err == nil {
			inos = append(inos, ino)
		}
	}
	inNodeNetns := func(pid int) bool {
		for _, ino := range inos {
			if inNetns(pid, ino) {
				return true
			}
		}
		return false
	}
	if left := killAll(func(pid int) bool { return marked(pid) || inNodeNetns(pid) }, 10*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still alive: %s", describePids(left)))
	}
	for _, ns := range opsNetns() {
		if err := ip(context.Background(), "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, l := range opsLinks() {
		if err := ip(context.Background(), "link", "delete", l); err != nil && linkExists(l) {
			errs = append(errs, err)
		}
	}
	if m := mountsUnder(oc.Dir); len(m) > 0 {
		for i := len(m) - 1; i >= 0; i-- {
			_ = syscall.Unmount(m[i], syscall.MNT_DETACH)
		}
	}
	if ents, err := os.ReadDir(oc.Dir); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "s") {
				if err := os.RemoveAll(filepath.Join(oc.Dir, e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if len(nspawns) > 0 && log != nil {
		fmt.Fprintf(log, "testbed: stopped %d systemd node(s)\n", len(nspawns))
	}
	return errors.Join(errs...)
}

// OpsLeftovers lists what a run of systemd nodes left behind on the host:
// marked processes, processes in their namespaces, namespaces, links,
// mounts and node directories.
func OpsLeftovers(oc OpsConfig) []string {
	var out []string
	if ps := pids(func(pid int) bool { return hasEnv(pid, opsMarker+"="+oc.Dir) && !isZombie(pid) }); len(ps) > 0 {
		out = append(out, "processes: "+describePids(ps))
	}
	for _, ns := range opsNetns() {
		out = append(out, "network namespace "+ns)
	}
	for _, l := range opsLinks() {
		out = append(out, "link "+l)
	}
	for _, m := range mountsUnder(oc.Dir) {
		out = append(out, "mount "+m)
	}
	if ents, err := os.ReadDir(oc.Dir); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "s") {
				out = append(out, "node directory "+filepath.Join(oc.Dir, e.Name()))
			}
		}
	}
	return out
}

func opsNetns() []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), opsNetnsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func opsLinks() []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), opsNetnsPrefix) || e.Name() == opsBridge {
			out = append(out, e.Name())
		}
	}
	return out
}

func isNspawn(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "systemd-nspawn"
}

// hasEnv reports whether pid's environment holds the entry kv.
func hasEnv(pid int, kv string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, e := range bytes.Split(b, []byte{0}) {
		if string(e) == kv {
			return true
		}
	}
	return false
}
