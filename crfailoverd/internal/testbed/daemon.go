package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DaemonDir is where crfailoverd on node keeps its data, config, socket
// and log.
func (n Node) DaemonDir() string { return filepath.Join(n.Dir, "crfailoverd") }

// DaemonSocket is the admin socket of crfailoverd on the node.
func (n Node) DaemonSocket() string { return filepath.Join(n.DaemonDir(), "admin.sock") }

// DaemonConfigPath is the configuration file of crfailoverd on the node.
func (n Node) DaemonConfigPath() string { return filepath.Join(n.DaemonDir(), "config.toml") }

// DaemonLog is crfailoverd's log (stderr) on the node.
func (n Node) DaemonLog() string { return n.logPath("crfailoverd") }

// PullSecretFile is the docker config.json in which the node's daemon keeps
// its image endpoint's credentials: config.json in kubelet's root
// directory, where kubelet looks first.
func (n Node) PullSecretFile() string { return filepath.Join(n.KubeletDir, "config.json") }

// DaemonConfig returns a crfailoverd configuration for node: its runtime,
// its kubelet (or the emulator) with the bed's client certificate, data
// under the node directory; on kubelet nodes restores go through kubelet's
// static pod directory. extra is appended (TOML tables such as [cluster]).
func (b *Bed) DaemonConfig(node, method string, extra string) (string, error) {
	n, err := b.Node(node)
	if err != nil {
		return "", err
	}
	restoreMode := ""
	if b.cfg.Kubelet {
		// kubelet removes pods it did not make: restore as static pods.
		restoreMode = fmt.Sprintf("restore_mode = \"static-pod\"\nstatic_pod_dir = %q\n", n.StaticPodDir())
	}
	return fmt.Sprintf(`# crfailoverd on test bed node %s
[node]
name = %q
data_dir = %q
admin_socket = %q
log_level = "debug"
log_format = "text"

[runtime]
endpoint = %q
%s
[checkpoint]
method = %q
default_interval = "10s"
timeout = "30s"
retention = 3

[kubelet]
url = %q
client_cert = %q
client_key = %q
ca = %q

[probe]
period = "500ms"
timeout = "1s"
failure_threshold = 3

[restore]
max_attempts = 4
backoff_initial = "500ms"
backoff_max = "5s"

[store]
data_key_file = %q

[images]
pull_secret_files = [%q]
%s`, n.Name, n.Name, n.DaemonDir(), n.DaemonSocket(), "unix://"+n.Socket, restoreMode, method, n.KubeletURL(),
		b.PKI.ClientCert, b.PKI.ClientKey, b.PKI.CACert, b.PKI.DataKey(), n.PullSecretFile(), extra), nil
}

// StartDaemon writes config as the node's crfailoverd configuration and
// runs binary ("crfailoverd") with it inside the node's network namespace,
// so that a power cut kills it too. It waits until the admin socket
// answers and returns the daemon's process id.
func (b *Bed) StartDaemon(ctx context.Context, node, binary, config string) (int, error) {
	n, err := b.Node(node)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(n.DaemonDir(), 0o700); err != nil {
		return 0, err
	}
	if err := os.WriteFile(n.DaemonConfigPath(), []byte(config), 0o600); err != nil {
		return 0, fmt.Errorf("write crfailoverd config: %w", err)
	}
	pid, err := b.spawn(n.DaemonLog(), n.Netns, nil, binary, "run", "--config", n.DaemonConfigPath())
	if err != nil {
		return 0, fmt.Errorf("node %s: start crfailoverd: %w", node, err)
	}
	if err := waitFor(ctx, 20*time.Second, pid, n.DaemonLog(), func(ctx context.Context) error {
		_, err := os.Stat(n.DaemonSocket())
		return err
	}); err != nil {
		return pid, fmt.Errorf("node %s: crfailoverd did not come up: %w", node, err)
	}
	return pid, nil
}

// Signal sends sig to a process the bed started (the daemon, say).
func Signal(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// ClusterConfig is the [cluster] table for crfailoverd on node: the bed's
// peer certificate and gossip key, gossip on 7946 and RPC on 7947 of the
// node's address, joining every other node of the bed. extra lines are
// added to the table (for example "replication_factor = 2").
func (b *Bed) ClusterConfig(node string, bootstrapExpect int, extra ...string) (string, error) {
	n, err := b.Node(node)
	if err != nil {
		return "", err
	}
	var join []string
	for _, o := range b.Nodes() {
		if o.Name != node {
			join = append(join, fmt.Sprintf("%q", o.Addr.String()+":7946"))
		}
	}
	return fmt.Sprintf(`
[cluster]
enabled = true
bind_addr = "%s:7946"
rpc_addr = "%s:7947"
join = [%s]
bootstrap_expect = %d
gossip_key_file = %q
tls_cert = %q
tls_key = %q
tls_ca = %q
%s
`, n.Addr, n.Addr, strings.Join(join, ", "), bootstrapExpect, b.PKI.GossipKey(), b.PKI.PeerCert(node), b.PKI.PeerKey(node), b.PKI.CACert,
		strings.Join(extra, "\n")), nil
}
