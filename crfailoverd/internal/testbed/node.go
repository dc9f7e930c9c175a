package testbed

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Node is one node of the bed.
type Node struct {
	Name        string     `json:"name"`
	Index       int        `json:"index"`
	Addr        netip.Addr `json:"addr"`
	Dir         string     `json:"dir"`                  // node state on the host, at the same path inside the node's mount namespace
	Socket      string     `json:"socket"`               // the runtime's CRI socket, reachable from the host
	KubeletDir  string     `json:"kubelet_dir"`          // the kubelet's (or the emulator's) root directory; checkpoints go to its checkpoints/
	Netns       string     `json:"netns"`                // path of the network namespace
	Runtime     string     `json:"runtime"`              // RuntimeContainerd or RuntimeCRIO
	Containerd  string     `json:"containerd,omitempty"` // version of the built containerd the node runs; "" for the root file system's
	RuntimePID  int        `json:"runtime_pid"`
	EmulatorPID int        `json:"emulator_pid"`
	KubeletPID  int        `json:"kubelet_pid"`
	// DataTmpfs: the size of the tmpfs on DaemonDir ("" none; Config.DataTmpfs).
	DataTmpfs string `json:"data_tmpfs,omitempty"`
}

// KubeletURL is the base URL of the node's kubelet emulator.
func (n Node) KubeletURL() string {
	return "https://" + net.JoinHostPort(n.Addr.String(), strconv.Itoa(KubeletPort))
}

// AppURL is the base URL of the counter test application on the node.
func (n Node) AppURL() string {
	return "http://" + net.JoinHostPort(n.Addr.String(), strconv.Itoa(AppPort))
}

func (n Node) logPath(what string) string { return filepath.Join(n.Dir, what+".log") }

func (b *Bed) newNode(i int) Node {
	name := "n" + strconv.Itoa(i)
	dir := filepath.Join(b.cfg.Dir, "nodes", name)
	rt := b.cfg.nodeRuntime(name)
	sock := "containerd.sock"
	if rt.Runtime == RuntimeCRIO {
		sock = "crio.sock"
	}
	return Node{
		Name:       name,
		Index:      i,
		Addr:       b.cfg.NodeAddr(i),
		Dir:        dir,
		Socket:     filepath.Join(dir, sock),
		KubeletDir: filepath.Join(dir, "kubelet"),
		Netns:      NetnsPath(name),
		Runtime:    rt.Runtime,
		Containerd: rt.Containerd,
		DataTmpfs:  b.cfg.DataTmpfs,
	}
}

// containerdConfig is the node's containerd configuration: its own root,
// state and socket, images from the bed's registry, runc as the runtime.
func (b *Bed) containerdConfig(n Node) string {
	extra := ""
	version := b.state.Versions.Containerd
	if n.Containerd != "" {
		version = n.Containerd
	}
	if containerdRestoreViaCreate(version, n.Containerd != "", b.cfg.containerdRestore(n.Name)) {
		// containerd 2.2 and 2.3 turned restore through CreateContainer off by default.
		extra = "  enable_experimental_restore_via_create = true\n"
	}
	return fmt.Sprintf(`version = 3
root = %q
state = "/run/containerd"
[grpc]
  address = %q
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "%s/pause:3.10"
[plugins.'io.containerd.cri.v1.runtime']
  # This machine lacks CAP_SYS_RESOURCE: without it every sandbox fails.
  restrict_oom_score_adj = true
%s[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
`, filepath.Join(n.Dir, "containerd"), n.Socket, b.cfg.RegistryHost(), extra)
}

// runtimeScript enters a node root file system in a new mount namespace
// with pivot_root (CRIU refuses a chroot) and runs the runtime ($RUNTIME
// --config $CONFIG: containerd or CRI-O). The bed directory is bound at its
// own path, so paths of sockets, archives and logs are the same inside the
// node and on the host; $DATADIR, when set, is a mount under it (the
// daemon's tmpfs) bound too.
const runtimeScript = `set -e
mount --make-rprivate /
mount --bind "$ROOTFS" "$ROOTFS"
mount -t proc proc "$ROOTFS/proc"
mount --rbind /sys "$ROOTFS/sys"
mount --rbind /dev "$ROOTFS/dev"
mount -t tmpfs tmpfs "$ROOTFS/run"
mount -t tmpfs tmpfs "$ROOTFS/tmp"
mkdir -p "$ROOTFS$BEDDIR" "$ROOTFS/.oldroot"
mount --bind "$BEDDIR" "$ROOTFS$BEDDIR"
if [ -n "$DATADIR" ]; then mount --bind "$DATADIR" "$ROOTFS$DATADIR"; fi
cd "$ROOTFS"
pivot_root . .oldroot
umount -l /.oldroot
exec "$RUNTIME" --config "$CONFIG"
`

// startNode starts the node's runtime and its kubelet (or the kubelet
// checkpoint emulator) and waits until both answer.
func (b *Bed) startNode(ctx context.Context, n *Node) error {
	for _, d := range []string{n.Dir, n.KubeletDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := mountDataTmpfs(*n); err != nil {
		return err
	}
	if err := b.startRuntime(ctx, n); err != nil {
		return err
	}
	return b.startKubeletOrEmulator(ctx, n)
}

func (b *Bed) startRuntime(ctx context.Context, n *Node) error {
	if n.Runtime == RuntimeCRIO {
		return b.startCRIO(ctx, n)
	}
	return b.startContainerd(ctx, n)
}

func (b *Bed) startKubeletOrEmulator(ctx context.Context, n *Node) error {
	if b.cfg.Kubelet {
		return b.startKubelet(ctx, n)
	}
	return b.startEmulator(ctx, n)
}

// startContainerd starts the node's containerd and waits until its CRI
// answers.
func (b *Bed) startContainerd(ctx context.Context, n *Node) error {
	cfgPath := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(b.containerdConfig(*n)), 0o644); err != nil {
		return fmt.Errorf("node %s: write containerd config: %w", n.Name, err)
	}
	root := b.state.Rootfs
	if n.Containerd != "" {
		root = containerdRootfsDir(b.cfg, n.Containerd)
	}
	return b.runRuntime(ctx, n, "containerd", root, "containerd", cfgPath)
}

// runRuntime runs the node's runtime (binary, inside root, with config)
// in the node's network namespace and a mount namespace of its own,
// logging to NODE/<name>.log, and waits until its CRI socket answers.
func (b *Bed) runRuntime(ctx context.Context, n *Node, name, root, binary, config string) error {
	_ = os.Remove(n.Socket)
	env := []string{"ROOTFS=" + root, "BEDDIR=" + b.cfg.Dir, "RUNTIME=" + binary, "CONFIG=" + config,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if n.DataTmpfs != "" {
		env = append(env, "DATADIR="+n.DaemonDir())
	}
	pid, err := b.spawn(n.logPath(name), n.Netns, env, "unshare", "--mount", "--fork", "sh", "-c", runtimeScript, "sh")
	if err != nil {
		return fmt.Errorf("node %s: start %s: %w", n.Name, name, err)
	}
	n.RuntimePID = pid
	if err := waitFor(ctx, 60*time.Second, pid, n.logPath(name), func(ctx context.Context) error {
		return PingCRI(ctx, n.Socket)
	}); err != nil {
		return fmt.Errorf("node %s: %s did not come up: %w", n.Name, name, err)
	}
	return nil
}

// startEmulator starts the kubelet checkpoint emulator of node n.
func (b *Bed) startEmulator(ctx context.Context, n *Node) error {
	ea := emulatorArgs{
		Node: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(KubeletPort)),
		Socket: n.Socket, KubeletDir: n.KubeletDir,
		Cert: b.PKI.ServerCert(n.Name), Key: b.PKI.ServerKey(n.Name), CA: b.PKI.CACert,
	}
	pid, err := b.spawnHelper(n.logPath("kubelet-emulator"), n.Netns, "emulator", ea)
	if err != nil {
		return fmt.Errorf("node %s: start kubelet emulator: %w", n.Name, err)
	}
	n.EmulatorPID = pid
	tlsCfg, err := b.PKI.ClientTLS()
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 20*time.Second, pid, n.logPath("kubelet-emulator"), func(ctx context.Context) error {
		d := tls.Dialer{Config: tlsCfg}
		c, err := d.DialContext(ctx, "tcp", ea.Addr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return fmt.Errorf("node %s: kubelet emulator did not come up on %s: %w", n.Name, ea.Addr, err)
	}
	return nil
}

// waitFor polls ready until it succeeds, the process pid dies (its log's
// tail is returned in the error), or within passes.
func waitFor(ctx context.Context, within time.Duration, pid int, logPath string, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		last = ready(actx)
		acancel()
		if last == nil {
			return nil
		}
		if syscall.Kill(pid, 0) != nil || isZombie(pid) {
			tail, _ := tailFile(logPath, 20)
			return fmt.Errorf("process %d exited; end of %s:\n%s", pid, logPath, tail)
		}
		select {
		case <-ctx.Done():
			tail, _ := tailFile(logPath, 20)
			return fmt.Errorf("%w (last error: %v); end of %s:\n%s", ctx.Err(), last, logPath, tail)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// killNodeProcesses kills every process in the node's network namespace:
// containerd, shims, containers, the emulator, and anything else run there.
func killNodeProcesses(netns string) error {
	ino, err := nsInode(netns)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", netns, err)
	}
	node := strings.TrimPrefix(filepath.Base(netns), netnsPrefix)
	left := killAll(func(pid int) bool { return inNetns(pid, ino) }, 2*time.Second)
	if len(left) > 0 {
		// Processes frozen by a dump in progress die once thawed.
		thawBedCgroups(node)
		thawCgroupsOf(left)
		left = killAll(func(pid int) bool { return inNetns(pid, ino) }, 10*time.Second)
	}
	if len(left) > 0 {
		return fmt.Errorf("processes in %s survived SIGKILL: %s", netns, describePids(left))
	}
	return nil
}

func nodeCgroupParent(node, podUID string) string {
	return "/" + cgroupRoot + "/" + node + "/pod" + strings.ReplaceAll(podUID, "-", "")
}

// mountDataTmpfs mounts a tmpfs of n.DataTmpfs on the node's daemon data
// directory unless one is there already (a node booted again keeps its
// "disk").
func mountDataTmpfs(n Node) error {
	if n.DataTmpfs == "" {
		return nil
	}
	dir := n.DaemonDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if isTmpfs(dir) {
		return nil
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size="+n.DataTmpfs+",mode=0700"); err != nil {
		return fmt.Errorf("node %s: mount a tmpfs of %s on %s: %w", n.Name, n.DataTmpfs, dir, err)
	}
	return nil
}

// isTmpfs reports whether dir is the mount point of a tmpfs.
func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil || st.Type != tmpfsMagic {
		return false
	}
	// A tmpfs further up (/tmp, say) is not this directory's own.
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

const tmpfsMagic = 0x01021994
