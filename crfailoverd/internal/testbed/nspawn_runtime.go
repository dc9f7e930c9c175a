package testbed

// Container runtimes on the systemd nodes. A node with a runtime boots from
// its own cached root file system: a copy of the systemd root file system
// with the runtime installed the way an administrator installs it, so that
// the ansible role finds it and its systemd unit runs it:
//
//   - containerd: Debian's packages (containerd, runc, criu) installed with
//     apt from the machine's mirror, Debian's containerd.service enabled.
//   - CRI-O: not packaged for Debian. The bed's CRI-O build (EnsureCRIO's
//     cache, crio needs only libc) and pinns are copied to /usr/local/bin,
//     with conmon, runc, the CNI plugins, iptables and criu from Debian's
//     packages; a crio.service of ours runs it (Type=notify: crio tells
//     systemd when its socket answers).
//
// Both keep their storage on a directory of the host bound into the node:
// the node's root is an overlay, and overlayfs refuses an overlay as the
// upper directory of another (the kernel logs "filesystem on ... not
// supported as upperdir"), which containerd's overlayfs snapshotter and
// CRI-O's overlay storage driver need.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Container runtimes of a systemd node.
const (
	NodeRuntimeNone       = ""
	NodeRuntimeContainerd = "containerd"
	NodeRuntimeCRIO       = "crio"
)

// SystemdNodeSpec says what a systemd node has besides systemd and SSH.
type SystemdNodeSpec struct {
	Runtime string // NodeRuntimeNone, NodeRuntimeContainerd or NodeRuntimeCRIO
	// Suite is the Debian suite of the node's root file system; empty: the
	// OpsConfig's (CRF_OPS_SUITE, else the host's).
	Suite string
}

func (sp SystemdNodeSpec) withDefaults(oc OpsConfig) SystemdNodeSpec {
	if sp.Suite == "" {
		sp.Suite = oc.Suite
	}
	return sp
}

// needsUnifiedCgroup reports whether the systemd of the root file system
// root must be given the unified cgroup hierarchy on this host: systemd 256
// and newer refuse to boot on cgroup v1 (seen with Debian forky's 262 under
// systemd-nspawn on this hybrid host: "Detected unsupported legacy cgroup
// hierarchy, refusing execution"). On a hybrid host systemd-nspawn then
// mounts the host's cgroup2 hierarchy, which has no controllers: enough to
// boot and run a runtime's daemon, not to limit containers.
func needsUnifiedCgroup(root string) bool {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return false // the host is unified already: nspawn gives the node v2
	}
	v := dpkgVersion(root, "systemd")
	n, _ := strconv.Atoi(strings.SplitN(v, "-", 2)[0])
	return n >= 256
}

// dpkgVersion is the installed version of pkg in root's dpkg database, ""
// when it is not installed.
func dpkgVersion(root, pkg string) string {
	b, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(b), "\n\n") {
		if !strings.HasPrefix(stanza, "Package: "+pkg+"\n") {
			continue
		}
		for _, l := range strings.Split(stanza, "\n") {
			if v, ok := strings.CutPrefix(l, "Version: "); ok {
				return v
			}
		}
	}
	return ""
}

// systemdRuntimePackages are installed with apt into the root file system
// of a node with that runtime. criu is there because both runtimes call it
// for checkpoints (CRI-O turns checkpointing off when it finds none).
var systemdRuntimePackages = map[string][]string{
	NodeRuntimeContainerd: {"containerd", "runc", "criu"},
	NodeRuntimeCRIO:       {"conmon", "runc", "containernetworking-plugins", "iptables", "criu"},
}

// nodeNspawnArgs are the systemd-nspawn options of a node with a runtime:
// its storage bound from the host, and CAP_NET_ADMIN. systemd-nspawn keeps
// CAP_NET_ADMIN only with --private-network, not with
// --network-namespace-path (seen: CapBnd 00000000fcecafff in a service on a
// node), and without it iptables in the node fails ("Could not fetch rule
// set generation id: Permission denied") and CRI-O refuses to start ("can't
// create HostPortManager: no support for iptables"). The network namespace
// is the node's own, as on a real machine.
func nodeNspawnArgs(node *SystemdNode) []string {
	d := systemdRuntimeStorage[node.Runtime]
	if d == "" {
		return nil
	}
	return []string{"--bind=" + filepath.Join(node.Dir, "storage") + ":" + d, "--capability=CAP_NET_ADMIN"}
}

// systemdRuntimeStorage is the runtime's storage directory inside the
// node, bound to a directory of the host (see the top of this file).
var systemdRuntimeStorage = map[string]string{
	NodeRuntimeContainerd: "/var/lib/containerd",
	NodeRuntimeCRIO:       "/var/lib/containers",
}

// SystemdRuntimeRootfsDir is the cached root file system of nodes with
// runtime rt.
func (oc OpsConfig) SystemdRuntimeRootfsDir(rt string) string {
	if rt == NodeRuntimeNone {
		return oc.SystemdRootfsDir()
	}
	return oc.SystemdRootfsDir() + "-" + rt
}

// EnsureSystemdRuntimeRootfs returns the root file system of nodes with
// runtime rt, creating it when missing: a copy of the systemd root file
// system (base) with the runtime's packages installed by apt inside it. For
// CRI-O it also builds CRI-O (cached) and copies crio and pinns in, on
// every call, so that a rebuilt crio reaches the cached root.
func EnsureSystemdRuntimeRootfs(ctx context.Context, oc OpsConfig, base, rt string, log io.Writer) (string, error) {
	pkgs, ok := systemdRuntimePackages[rt]
	if rt == NodeRuntimeNone {
		return base, nil
	}
	if !ok {
		return "", fmt.Errorf("systemd node runtime %q: want %q, %q or none", rt, NodeRuntimeContainerd, NodeRuntimeCRIO)
	}
	dir := oc.SystemdRuntimeRootfsDir(rt)
	stamp := strings.Join(pkgs, " ") + "\n"
	if !runtimeRootfsCurrent(base, dir, stamp) {
		if err := aptRuntimeRootfs(ctx, oc, base, dir, pkgs, log); err != nil {
			return "", err
		}
	}
	if rt == NodeRuntimeCRIO {
		if err := installCRIO(ctx, oc, dir, log); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, opsStamp), []byte(stamp), 0o644); err != nil {
		return "", fmt.Errorf("mark root file system %s ready: %w", dir, err)
	}
	return dir, nil
}

// runtimeRootfsCurrent reports whether the runtime root file system dir
// was made with these packages (its stamp) from base as it is now (base's
// stamp is not newer than dir's).
func runtimeRootfsCurrent(base, dir, stamp string) bool {
	p := filepath.Join(dir, opsStamp)
	b, err := os.ReadFile(p)
	if err != nil || string(b) != stamp {
		return false
	}
	bs, err1 := os.Stat(filepath.Join(base, opsStamp))
	ds, err2 := os.Stat(p)
	return err1 == nil && err2 == nil && !bs.ModTime().After(ds.ModTime())
}

// aptRuntimeRootfs makes dir from a copy of base with pkgs installed by
// apt inside it, from the machine's mirror (into dir.partial first).
func aptRuntimeRootfs(ctx context.Context, oc OpsConfig, base, dir string, pkgs []string, log io.Writer) error {
	mirror, err := AptMirror()
	if err != nil {
		return err
	}
	partial := dir + ".partial"
	for _, d := range []string{partial, dir} {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove old root file system %s: %w", d, err)
		}
	}
	fmt.Fprintf(log, "testbed: preparing %s: a copy of %s with %s from %s (cached afterwards)\n", dir, base, strings.Join(pkgs, ", "), mirror)
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "cp", "-a", base, partial).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s to %s: %w: %s", base, partial, err, strings.TrimSpace(string(out)))
	}
	_ = os.Remove(filepath.Join(partial, opsStamp))
	if err := os.WriteFile(filepath.Join(partial, "etc/apt/sources.list"), []byte(fmt.Sprintf("deb %s %s main\n", mirror, oc.Suite)), 0o644); err != nil {
		return fmt.Errorf("write apt sources of %s: %w", partial, err)
	}
	// Installing must start no service (Debian's containerd would).
	policy := filepath.Join(partial, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return fmt.Errorf("write policy-rc.d in %s: %w", partial, err)
	}
	logPath := dir + ".apt.log"
	out, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create apt log: %w", err)
	}
	defer out.Close()
	// apt runs chrooted in a mount namespace of its own, with /proc, /dev
	// and the host's name service for the mirror. A testing suite's Release
	// file may be expired (CRF_OPS_SUITE=forky): its date is not checked.
	script := `set -e
mount --make-rprivate /
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
rm -f "$R/etc/resolv.conf"; touch "$R/etc/resolv.conf"
mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
opts="-o Acquire::Check-Valid-Until=false -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
chroot "$R" apt-get $opts update
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get $opts install -y --no-install-recommends "$@"
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/*
`
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--fork", "sh", "-c", script, "sh"}, pkgs...)...)
	cmd.Env = append(os.Environ(), "R="+partial)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		tail, _ := tailFile(logPath, 15)
		return fmt.Errorf("install %s into %s with apt from %s: %w (log %s):\n%s", strings.Join(pkgs, ", "), partial, mirror, err, logPath, tail)
	}
	if err := os.Remove(policy); err != nil {
		return fmt.Errorf("remove policy-rc.d from %s: %w", partial, err)
	}
	// The systemd root's own settings (name service, hosts) again: apt's
	// run replaced resolv.conf.
	if err := configureSystemdRootfs(partial); err != nil {
		return err
	}
	if err := os.Rename(partial, dir); err != nil {
		return fmt.Errorf("move root file system %s into place: %w", dir, err)
	}
	fmt.Fprintf(log, "testbed: installed %s into %s in %s\n", strings.Join(pkgs, ", "), dir, time.Since(start).Round(time.Second))
	return nil
}

// installCRIO builds CRI-O (scripts/build-crio.sh, cached) and puts crio,
// pinns, CRI-O's configuration and crio.service into the root dir.
func installCRIO(ctx context.Context, oc OpsConfig, dir string, log io.Writer) error {
	c := Config{CacheDir: oc.CacheDir, ModuleDir: oc.ModuleDir}
	build := crioBuildDir(c)
	if _, err := os.Stat(filepath.Join(build, "crio")); err != nil {
		if oc.ModuleDir == "" {
			return errors.New("install CRI-O into a systemd node root: no module directory to build CRI-O from")
		}
		script := filepath.Join(oc.ModuleDir, "scripts", "build-crio.sh")
		cmd := exec.CommandContext(ctx, "bash", script, CRIOVersion, filepath.Join(oc.ModuleDir, crioPatch), build)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build CRI-O %s with %s into %s: %w (its output is above)", CRIOVersion, script, build, err)
		}
	}
	for _, b := range []struct{ from, to string }{
		{filepath.Join(build, "crio"), crioBinary},
		{filepath.Join(build, "pinns"), pinnsBinary},
	} {
		if err := syncFile(b.from, filepath.Join(dir, b.to)); err != nil {
			return fmt.Errorf("copy %s into the systemd node root %s: %w", b.from, dir, err)
		}
	}
	files := map[string]string{
		"etc/crio/crio.conf":               systemdCRIOConfig,
		"etc/containers/registries.conf":   "# crfailoverd systemd node: no registry is configured\nunqualified-search-registries = []\n",
		"etc/containers/policy.json":       `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
		"etc/cni/net.d/10-crfops.conflist": systemdCRIOCNI,
		"etc/systemd/system/crio.service":  systemdCRIOUnit,
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("configure CRI-O in %s: %w", dir, err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("configure CRI-O in %s: %w", dir, err)
		}
	}
	// CRI-O reads every file in crio.conf.d as TOML, so the directory is
	// empty: the role's drop-in is the node's, never the cached root's.
	if err := os.MkdirAll(filepath.Join(dir, "etc/crio/crio.conf.d"), 0o755); err != nil {
		return fmt.Errorf("configure CRI-O in %s: %w", dir, err)
	}
	_ = os.Remove(filepath.Join(dir, "etc/crio/crio.conf.d/50-crfailoverd.conf"))
	wants := filepath.Join(dir, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return fmt.Errorf("enable crio.service in %s: %w", dir, err)
	}
	link := filepath.Join(wants, "crio.service")
	_ = os.Remove(link)
	if err := os.Symlink("/etc/systemd/system/crio.service", link); err != nil {
		return fmt.Errorf("enable crio.service in %s: %w", dir, err)
	}
	return nil
}

// systemdCRIOConfig is /etc/crio/crio.conf of a CRI-O node: CRI-O's
// default paths and socket (/var/run/crio/crio.sock, what the role
// expects), Debian's runc, conmon and CNI plugin paths, cgroupfs (as on the
// bed's CRI-O nodes on this cgroup v1 machine) and enable_criu_support =
// false, the default before CRI-O 1.30: the role's drop-in turns it on, so
// that CRI-O's effective configuration shows whether the drop-in was read.
const systemdCRIOConfig = `# crfailoverd systemd node (testbed). Drop-ins: /etc/crio/crio.conf.d/
[crio]
storage_driver = "overlay"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
selinux = false
apparmor_profile = "unconfined"
pinns_path = "/usr/local/bin/pinns"
# An infra container needs CAP_SYS_RESOURCE for its oom_score_adj, which
# this machine lacks.
drop_infra_ctr = true
# CRI-O's default before 1.30; the crfailoverd role's drop-in sets true.
enable_criu_support = false

[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_type = "oci"
runtime_root = "/run/runc"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"

[crio.network]
plugin_dirs = ["/usr/lib/cni"]

[crio.nri]
enable_nri = false
`

// systemdCRIOCNI is a bridge network, only so that CRI-O reports the
// network ready.
const systemdCRIOCNI = `{
  "cniVersion": "1.0.0",
  "name": "crfops",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crfopscni0",
      "isGateway": false,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.251.0.0/24"}]]}
    }
  ]
}
`

// systemdCRIOUnit runs CRI-O under the node's systemd.
const systemdCRIOUnit = `[Unit]
Description=CRI-O container runtime (crfailoverd systemd node)
After=network.target

[Service]
Type=notify
ExecStart=/usr/local/bin/crio
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
TimeoutStartSec=60
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
`
