package testbed

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/ociserve"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/pullsecret"
)

// KubeletVersion is the kubelet the bed builds from the Go module proxy.
const KubeletVersion = "v1.37.2"

// KubeletBinary is where EnsureKubelet caches kubelet.
func (c Config) KubeletBinary() string {
	return filepath.Join(c.CacheDir, "kubelet-"+KubeletVersion, "kubelet")
}

// StaticPodDir is the node's kubelet static pod directory (staticPodPath).
func (n Node) StaticPodDir() string { return filepath.Join(n.Dir, "manifests") }

// podLogsDir is kubelet's podLogsDir (PodLogDir's parent).
func (n Node) podLogsDir() string { return filepath.Join(n.Dir, "pods") }

// EnsureKubelet builds kubelet once (scripts/build-kubelet.sh, through a
// wrapper module; about 5 minutes on 2 cores the first time), cached beside
// the root file systems. Progress goes to log.
func EnsureKubelet(ctx context.Context, c Config, log io.Writer) error {
	bin := c.KubeletBinary()
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil && strings.TrimSpace(string(out)) == "Kubernetes "+KubeletVersion {
		fmt.Fprintf(log, "testbed: kubelet %s cached in %s\n", KubeletVersion, bin)
		return nil
	}
	fmt.Fprintf(log, "testbed: building kubelet %s (once; cached in %s)\n", KubeletVersion, filepath.Dir(bin))
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(c.ModuleDir, "scripts", "build-kubelet.sh"), KubeletVersion, filepath.Dir(bin))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("build kubelet %s: %w", KubeletVersion, err)
	}
	var tail []string
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "go: downloading") {
				continue // hundreds of modules: the step lines say what happens
			}
			tail = append(tail, line)
			if len(tail) > 20 {
				tail = tail[1:]
			}
			fmt.Fprintf(log, "testbed: %s\n", line)
		}
	}()
	err := cmd.Wait()
	pw.Close()
	<-scanned
	if err != nil {
		return fmt.Errorf("build kubelet %s: %w; last lines:\n%s", KubeletVersion, err, strings.Join(tail, "\n"))
	}
	return nil
}

// kubeletConfig is the KubeletConfiguration of node n: standalone (no API
// server), static pods from n.StaticPodDir(), the checkpoint API on
// KubeletPort of the node address with TLS from the bed's CA, x509 client
// authentication and anonymous access off, and its own root, log and
// cgroup directories, so that several kubelets share one machine.
func (b *Bed) kubeletConfig(n Node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: %q
fileCheckFrequency: 1s
syncFrequency: 5s
address: %q
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
# Standalone: no API server to ask (SubjectAccessReview); x509 above
# admits only certificates of the bed's CA.
authorization: {mode: AlwaysAllow}
tlsCertFile: %q
tlsPrivateKeyFile: %q
cgroupDriver: cgroupfs
# kubelet's pod cgroups (QoS classes, one per pod) below the node's own
# root, where the bed's teardown finds and removes them; without them the
# runtimes put containers at the top (containerd /k8s.io, CRI-O /crio).
cgroupsPerQOS: true
cgroupRoot: %q
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
podLogsDir: %q
resolvConf: ""
evictionHard: {"memory.available": "1Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
imageGCHighThresholdPercent: 100
featureGates: {ContainerCheckpoint: true}
`, n.StaticPodDir(), n.Addr.String(), KubeletPort, b.PKI.CACert, b.PKI.ServerCert(n.Name), b.PKI.ServerKey(n.Name),
		"/"+cgroupRoot+"/"+n.Name, n.podLogsDir())
}

// provisionPullSecret makes the node's image endpoint secret (the one the
// daemon keeps in its data directory and reads at every start) and writes
// its credentials into kubelet's config.json before kubelet starts, as a
// node whose crfailoverd starts before kubelet has them: kubelet caches
// the registry credentials it read for 5 minutes, so a daemon started
// after kubelet's first pull would otherwise see its first static-pod
// restores refused.
func provisionPullSecret(n Node) error {
	creds, err := ociserve.NodeCredentials(filepath.Join(n.DaemonDir(), "images", "secret"))
	if err != nil {
		return fmt.Errorf("image endpoint secret: %w", err)
	}
	hosts := []string{"localhost:7948", "127.0.0.1:7948"}
	return pullsecret.Write(n.PullSecretFile(), hosts, pullsecret.Auth{Username: creds.Username, Password: creds.Password})
}

// startKubelet starts a real kubelet on node n in standalone mode, in the
// node's network namespace against the node's runtime, and waits until its
// API answers TLS on the node address.
func (b *Bed) startKubelet(ctx context.Context, n *Node) error {
	for _, d := range []string{n.StaticPodDir(), n.podLogsDir(), n.KubeletDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := makeNodeCgroups(n.Name); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := provisionPullSecret(*n); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	cfgPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.kubeletConfig(*n)), 0o644); err != nil {
		return fmt.Errorf("node %s: write kubelet config: %w", n.Name, err)
	}
	args := []string{b.cfg.KubeletBinary(),
		"--config=" + cfgPath, "--container-runtime-endpoint=unix://" + n.Socket, "--root-dir=" + n.KubeletDir,
		"--hostname-override=" + n.Name, "--node-ip=" + n.Addr.String(), "--v=1"}
	name := args[0]
	if !hugetlbMounted() {
		// kubelet asks for a hugetlb limit of every page size in
		// /sys/kernel/mm/hugepages; runc fails to set one where the
		// hugetlb controller is not mounted (this machine: cgroup v1
		// without it), and CRI-O, unlike containerd, passes them on. The
		// bed hides the page sizes from kubelet, in a mount namespace of
		// its own (mounts made on the host still reach it).
		name = "unshare"
		args = append([]string{"--mount", "--propagation", "slave", "sh", "-c",
			`mount -t tmpfs -o ro,size=4k tmpfs /sys/kernel/mm/hugepages && exec "$@"`, "sh"}, args...)
	}
	pid, err := b.spawn(n.logPath("kubelet"), n.Netns, nil, name, args...)
	if err != nil {
		return fmt.Errorf("node %s: start kubelet: %w", n.Name, err)
	}
	n.KubeletPID = pid
	tlsCfg, err := b.PKI.ClientTLS()
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(KubeletPort))
	if err := waitFor(ctx, 60*time.Second, pid, n.logPath("kubelet"), func(ctx context.Context) error {
		d := tls.Dialer{Config: tlsCfg}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return fmt.Errorf("node %s: kubelet did not come up on %s: %w", n.Name, addr, err)
	}
	return nil
}

// BootNode boots a killed node again the way systemd orders a kubelet node
// (crfailoverd's unit starts before kubelet's): link up, the runtime, then
// beforeKubelet (which starts the daemon), then kubelet (or the emulator).
func (b *Bed) BootNode(ctx context.Context, name string, beforeKubelet func(context.Context) error) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	if err := ip(ctx, "link", "set", hostVeth(n.Name), "up"); err != nil {
		return fmt.Errorf("boot node %s: %w", name, err)
	}
	for _, d := range []string{n.Dir, n.KubeletDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("boot node %s: %w", n.Name, err)
		}
	}
	if err := b.startRuntime(ctx, n); err != nil {
		return err
	}
	if err := b.saveState(); err != nil {
		return err
	}
	if beforeKubelet != nil {
		if err := beforeKubelet(ctx); err != nil {
			return fmt.Errorf("boot node %s: %w", name, err)
		}
	}
	if err := b.startKubeletOrEmulator(ctx, n); err != nil {
		return err
	}
	return b.saveState()
}

// hugetlbMounted reports whether the hugetlb cgroup controller is usable:
// cgroup v2 (the unified hierarchy lists it), or v1 with it mounted.
func hugetlbMounted() bool {
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return strings.Contains(string(b), "hugetlb")
	}
	_, err := os.Stat("/sys/fs/cgroup/hugetlb")
	return err == nil
}

// makeNodeCgroups creates the node's cgroup root (/crfbed/NODE) in every
// mounted hierarchy: kubelet refuses a cgroupRoot with a missing path. The
// bed's teardown removes them.
func makeNodeCgroups(node string) error {
	des, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return fmt.Errorf("list cgroup hierarchies: %w", err)
	}
	for _, de := range des {
		h := filepath.Join("/sys/fs/cgroup", de.Name())
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue // not a hierarchy (or a v2 file)
		}
		if err := os.MkdirAll(filepath.Join(h, cgroupRoot, node), 0o755); err != nil {
			return fmt.Errorf("create the node's cgroup root: %w", err)
		}
	}
	return nil
}
