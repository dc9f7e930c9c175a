package testbed

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CRIOVersion is the CRI-O release CRI-O nodes run, built from the Go
// module proxy by scripts/build-crio.sh.
const CRIOVersion = "v1.36.3"

// crioPatch is the patch against CRI-O's source the patched build applies,
// relative to the module root.
const crioPatch = "0001-customization.patch"

// crioPackages are installed into the CRI-O node root file system, on top
// of the node root file system (CRIU, runc, ...).
var crioPackages = []string{"conmon", "containernetworking-plugins", "libseccomp2", "iptables"}

// Where the CRI-O build and the CRI-O node root file system are cached, and
// where crio and pinns are inside the node root file system.
func crioBuildDir(c Config) string  { return filepath.Join(c.CacheDir, "crio-"+CRIOVersion) }
func crioRootfsDir(c Config) string { return c.RootfsDir() + "-crio" }

const (
	crioBinary        = "/usr/local/bin/crio"
	crioPatchedBinary = "/usr/local/bin/crio-patched"
	pinnsBinary       = "/usr/local/bin/pinns"
)

// crioBinaryOf is the crio binary nodes of a bed with configuration c run.
func crioBinaryOf(c Config) string {
	if c.CRIOPatched {
		return crioPatchedBinary
	}
	return crioBinary
}

// EnsureCRIO builds CRI-O (plain and with 0001-customization.patch) and
// pinns once, cached beside the root file systems, and prepares the CRI-O
// node root file system. Progress goes to log.
func EnsureCRIO(ctx context.Context, c Config, log io.Writer) error {
	build := crioBuildDir(c)
	script := filepath.Join(c.ModuleDir, "scripts", "build-crio.sh")
	cmd := exec.CommandContext(ctx, "bash", script, CRIOVersion, filepath.Join(c.ModuleDir, crioPatch), build)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build CRI-O %s with %s into %s: %w (its output is above)", CRIOVersion, script, build, err)
	}
	base, _, err := EnsureRootfs(ctx, c, log)
	if err != nil {
		return err
	}
	dir := crioRootfsDir(c)
	if _, err := os.Stat(filepath.Join(dir, rootfsStamp)); err != nil {
		if err := bootstrapCRIORootfs(ctx, base, dir, log); err != nil {
			return err
		}
	}
	// The binaries are copied on every call: a rebuilt crio (a refreshed
	// patch) reaches the cached root file system without rebuilding it.
	for _, b := range []struct{ from, to string }{
		{filepath.Join(build, "crio"), crioBinary},
		{filepath.Join(build, "crio-patched"), crioPatchedBinary},
		{filepath.Join(build, "pinns"), pinnsBinary},
	} {
		if err := syncFile(b.from, filepath.Join(dir, b.to)); err != nil {
			return fmt.Errorf("copy %s into the CRI-O root file system %s: %w", b.from, dir, err)
		}
	}
	if err := configureCRIORootfs(c, dir); err != nil {
		return err
	}
	v, err := crioVersion(ctx, filepath.Join(build, "crio"))
	if err != nil {
		return err
	}
	stamp := "crio=" + v + "\n"
	if err := os.WriteFile(filepath.Join(dir, rootfsStamp), []byte(stamp), 0o644); err != nil {
		return fmt.Errorf("mark CRI-O root file system %s ready: %w", dir, err)
	}
	fmt.Fprintf(log, "testbed: CRI-O root file system %s: crio=%s (plain and patched), pinns\n", dir, v)
	return nil
}

// bootstrapCRIORootfs makes dir from a copy of the node root file system
// base with the packages CRI-O needs installed by apt inside it.
func bootstrapCRIORootfs(ctx context.Context, base, dir string, log io.Writer) error {
	mirror, err := AptMirror()
	if err != nil {
		return err
	}
	partial := dir + ".partial"
	if err := os.RemoveAll(partial); err != nil {
		return fmt.Errorf("remove unfinished CRI-O root file system %s: %w", partial, err)
	}
	fmt.Fprintf(log, "testbed: preparing the CRI-O root file system %s: a copy of %s with %s from %s\n", dir, base, strings.Join(crioPackages, ", "), mirror)
	if out, err := exec.CommandContext(ctx, "cp", "-a", base, partial).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s to %s: %w: %s", base, partial, err, strings.TrimSpace(string(out)))
	}
	suite, err := debianSuite(base)
	if err != nil {
		return err
	}
	sources := fmt.Sprintf("deb %s %s main\n", mirror, suite)
	if err := os.WriteFile(filepath.Join(partial, "etc/apt/sources.list"), []byte(sources), 0o644); err != nil {
		return fmt.Errorf("write apt sources of %s: %w", partial, err)
	}
	// No service may start while packages are installed.
	if err := os.WriteFile(filepath.Join(partial, "usr/sbin/policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return fmt.Errorf("write policy-rc.d in %s: %w", partial, err)
	}
	logPath := filepath.Join(filepath.Dir(dir), "apt-crio.log")
	out, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create apt log: %w", err)
	}
	defer out.Close()
	// apt runs in a mount namespace of its own, with /proc and /dev, and
	// the host's name service for the mirror.
	script := `set -e
mount --make-rprivate /
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
opts="-o Acquire::Check-Valid-Until=false -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
chroot "$R" apt-get $opts update
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get $opts install -y --no-install-recommends "$@"
chroot "$R" apt-get clean
`
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--fork", "sh", "-c", script, "sh"}, crioPackages...)...)
	cmd.Env = append(os.Environ(), "R="+partial)
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		tail, _ := tailFile(logPath, 15)
		return fmt.Errorf("install %s into %s with apt from %s failed: %w (log %s):\n%s", strings.Join(crioPackages, ", "), partial, mirror, err, logPath, tail)
	}
	fmt.Fprintf(log, "testbed: installed %s in %s\n", strings.Join(crioPackages, ", "), time.Since(start).Round(time.Second))
	if err := os.Remove(filepath.Join(partial, "usr/sbin/policy-rc.d")); err != nil {
		return fmt.Errorf("remove policy-rc.d from %s: %w", partial, err)
	}
	if err := os.Rename(partial, dir); err != nil {
		return fmt.Errorf("move CRI-O root file system into place: %w", err)
	}
	return nil
}

// debianSuite reads the suite a root file system was bootstrapped from
// (its apt sources), e.g. "forky".
func debianSuite(root string) (string, error) {
	p := filepath.Join(root, "etc/apt/sources.list")
	if s := scanFile(p, func(line string) string {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "deb" {
			return f[2]
		}
		return ""
	}); s != "" {
		return s, nil
	}
	return "", fmt.Errorf("no suite in %s: remove %s to bootstrap it again", p, root)
}

// configureCRIORootfs writes what CRI-O reads inside the root file system:
// the bed registry is plain HTTP, and images are not signed. No
// signature_policy is set anywhere: restore refuses to verify a checkpoint's
// base image against one.
func configureCRIORootfs(c Config, dir string) error {
	files := map[string]string{
		// The bed registry, and crfailoverd's checkpoint image endpoint
		// (images.listen_addr's default port), both plain HTTP on loopback.
		"etc/containers/registries.conf": fmt.Sprintf("# crfailoverd test bed\n[[registry]]\nlocation = %q\ninsecure = true\n\n[[registry]]\nlocation = \"localhost:7948\"\ninsecure = true\n", c.RegistryHost()),
		"etc/containers/policy.json":     `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("configure CRI-O root file system: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("configure CRI-O root file system: %w", err)
		}
	}
	return configureRootfs(dir)
}

// syncFile copies from to to (mode 0755) unless to has from's size and
// modification time already.
func syncFile(from, to string) error {
	src, err := os.Stat(from)
	if err != nil {
		return err
	}
	if dst, err := os.Stat(to); err == nil && dst.Size() == src.Size() && dst.ModTime().Equal(src.ModTime()) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := to + ".new"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, src.ModTime(), src.ModTime()); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}

// crioVersion runs crio --version (the binary needs only libc and runs on
// the host too) and returns the version, e.g. "1.36.3".
func crioVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	line := strings.SplitN(string(out), "\n", 2)[0]
	v := versionRE.FindString(line)
	if v == "" || !strings.HasPrefix(line, "crio version ") {
		return "", fmt.Errorf("cannot read the version of %s from %q", bin, line)
	}
	return v, nil
}

// crioDir is where a node's CRI-O keeps its state (storage, logs, CNI
// configuration), below the node's directory.
func crioDir(n Node) string { return filepath.Join(n.Dir, "crio") }

// crioVolatile are the directories of a node's CRI-O a reboot clears (on a
// real machine they are on a tmpfs). They are under the bed directory here,
// so that the host can read them; startCRIO clears them instead.
var crioVolatile = []string{"runroot", "exits", "attach", "ns", "version"}

// crioConfig is the node's crio.conf: every directory under the node's
// directory, the bed registry's pause image, cgroupfs, runc, CRIU support.
// With the patched build it keeps CRIU's logs (keep_checkpoint_logs, which
// the plain build does not know).
func (b *Bed) crioConfig(n Node) string {
	d := crioDir(n)
	p := func(name string) string { return fmt.Sprintf("%q", filepath.Join(d, name)) }
	extra := ""
	if b.cfg.CRIOPatched {
		extra = "keep_checkpoint_logs = true\n"
	}
	return fmt.Sprintf(`# crfailoverd test bed, node %[1]s
[crio]
root = %[2]s
runroot = %[3]s
storage_driver = "overlay"
log_dir = %[4]s
version_file = %[5]s
clean_shutdown_file = %[6]s

[crio.api]
listen = %[7]q
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
selinux = false
apparmor_profile = "unconfined"
container_exits_dir = %[8]s
container_attach_socket_dir = %[9]s
namespaces_dir = %[10]s
pinns_path = %[11]q
# An infra container needs CAP_SYS_RESOURCE for its oom_score_adj, which
# this machine lacks.
drop_infra_ctr = true
enable_criu_support = true
%[12]s
[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_type = "oci"
runtime_root = "/run/runc-crio"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"

[crio.image]
pause_image = "%[13]s/pause:3.10"

[crio.network]
network_dir = %[14]s
plugin_dirs = ["/usr/lib/cni"]

[crio.nri]
enable_nri = false
`, n.Name, p("storage"), p("runroot"), p("logs"), p("version"), p("clean.shutdown"), n.Socket,
		p("exits"), p("attach"), p("ns"), pinnsBinary, extra, b.cfg.RegistryHost(), p("cni"))
}

// crioCNI is a bridge network, only so that CRI-O reports the network
// ready: the bed's pods use the node's network.
func crioCNI(n Node) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "crfbed",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crfbedcni0",
      "isGateway": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.250.%d.0/24"}]],
        "dataDir": %q
      }
    }
  ]
}
`, n.Index%256, filepath.Join(crioDir(n), "cni-ipam"))
}

// startCRIO starts the node's CRI-O and waits until its CRI answers.
func (b *Bed) startCRIO(ctx context.Context, n *Node) error {
	d := crioDir(*n)
	// What a power cut erases: CRI-O then sees a reboot and starts with no
	// containers, as containerd does with its state on the node's /run.
	for _, v := range crioVolatile {
		if err := os.RemoveAll(filepath.Join(d, v)); err != nil {
			return fmt.Errorf("node %s: clear CRI-O's volatile state: %w", n.Name, err)
		}
	}
	for _, sub := range []string{"storage", "runroot", "logs", "exits", "attach", "ns", "cni"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o700); err != nil {
			return fmt.Errorf("node %s: create CRI-O directory: %w", n.Name, err)
		}
	}
	cfgPath := filepath.Join(n.Dir, "crio.conf")
	if err := os.WriteFile(cfgPath, []byte(b.crioConfig(*n)), 0o644); err != nil {
		return fmt.Errorf("node %s: write CRI-O config: %w", n.Name, err)
	}
	if err := os.WriteFile(filepath.Join(d, "cni", "10-crfbed.conflist"), []byte(crioCNI(*n)), 0o644); err != nil {
		return fmt.Errorf("node %s: write CRI-O CNI config: %w", n.Name, err)
	}
	rootfs := crioRootfsDir(b.cfg)
	if _, err := os.Stat(filepath.Join(rootfs, rootfsStamp)); err != nil {
		return fmt.Errorf("node %s: the CRI-O root file system %s is not ready (nodebed prepare makes it): %w", n.Name, rootfs, err)
	}
	if b.state.Versions.CRIO == "" {
		v, err := crioVersion(ctx, filepath.Join(rootfs, crioBinaryOf(b.cfg)))
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		b.state.Versions.CRIO = v
	}
	return b.runRuntime(ctx, n, "crio", rootfs, crioBinaryOf(b.cfg), cfgPath)
}
