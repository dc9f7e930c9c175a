package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Validate checks every value of c and returns all problems joined, one per
// line, each as "<key>: <problem>"; nil if c is valid.
func (c Config) Validate() error {
	return joinProblems(c.problems())
}

// checker collects validation problems; keys are dotted TOML keys.
type checker struct{ probs []problem }

func (v *checker) addf(key, format string, args ...any) {
	v.probs = append(v.probs, problem{key: strings.Split(key, "."), msg: fmt.Sprintf(format, args...)})
}

func (c Config) problems() []problem {
	var v checker

	n := c.Node
	if n.Name == "" || strings.ContainsFunc(n.Name, unicode.IsSpace) {
		v.addf("node.name", "want a non-empty name without white space, got %q", n.Name)
	}
	v.absPath("node.data_dir", n.DataDir, false)
	v.absPath("node.admin_socket", n.AdminSocket, false)
	if _, ok := levelName(n.LogLevel); !ok {
		v.addf("node.log_level", `want one of "debug", "info", "warn", "error", got level %v`, n.LogLevel)
	}
	v.oneOf("node.log_format", n.LogFormat, "auto", "journal", "text", "json")

	r := c.Runtime
	if !filepath.IsAbs(r.SocketPath()) {
		v.addf("runtime.endpoint", `want "unix:///absolute/path" or an absolute socket path, got %q`, r.Endpoint)
	}
	v.positive("runtime.call_timeout", r.CallTimeout)
	v.oneOf("runtime.restore_mode", r.RestoreMode, "cri", "static-pod", "auto")
	v.absPath("runtime.static_pod_dir", r.StaticPodDir, false)

	cp := c.Checkpoint
	v.oneOf("checkpoint.method", cp.Method, "kubelet", "cri", "auto")
	if cp.DefaultInterval < 100*time.Millisecond {
		v.addf("checkpoint.default_interval", "want at least 100ms, got %v", cp.DefaultInterval)
	}
	v.positive("checkpoint.timeout", cp.Timeout)
	v.atLeast("checkpoint.retention", cp.Retention, 1)
	v.atLeast("checkpoint.max_concurrent", cp.MaxConcurrent, 1)

	k := c.Kubelet
	if u, err := url.Parse(k.URL); err != nil || u.Scheme != "https" || u.Hostname() == "" {
		v.addf("kubelet.url", "want an https:// URL with a host, got %q", k.URL)
	}
	v.absPath("kubelet.client_cert", k.ClientCert, true)
	v.absPath("kubelet.client_key", k.ClientKey, true)
	if k.ClientKey != "" && k.ClientCert == "" {
		v.addf("kubelet.client_key", "set, but kubelet.client_cert is empty")
	}
	v.absPath("kubelet.ca", k.CA, true)

	p := c.Probe
	v.positive("probe.period", p.Period)
	v.positive("probe.timeout", p.Timeout)
	v.atLeast("probe.failure_threshold", p.FailureThreshold, 1)
	if p.InitialDelay < 0 {
		v.addf("probe.initial_delay", "want a duration of 0 or more, got %v", p.InitialDelay)
	}

	rs := c.Restore
	v.oneOf("restore.policy", rs.Policy, "peer", "local")
	v.atLeast("restore.max_attempts", rs.MaxAttempts, 1)
	v.positive("restore.backoff_initial", rs.BackoffInitial)
	if rs.BackoffMax < rs.BackoffInitial {
		v.addf("restore.backoff_max", "want at least restore.backoff_initial (%v), got %v", rs.BackoffInitial, rs.BackoffMax)
	}

	cl := c.Cluster
	v.hostPort("cluster.bind_addr", cl.BindAddr, false)
	if cl.AdvertiseAddr != "" {
		v.hostPort("cluster.advertise_addr", cl.AdvertiseAddr, true)
	}
	v.hostPort("cluster.rpc_addr", cl.RPCAddr, false)
	for i, addr := range cl.Join {
		if err := checkHostPort(addr, true); err != nil {
			v.addf("cluster.join", `element %d: want "host:port", got %q: %v`, i+1, addr, err)
		}
	}
	v.atLeast("cluster.bootstrap_expect", cl.BootstrapExpect, 1)
	switch {
	case cl.Enabled && cl.GossipKeyFile == "" && !cl.InsecureGossip:
		v.addf("cluster.gossip_key_file", "required when cluster.enabled = true: without a key gossip is neither encrypted nor authenticated, "+
			"and anyone who reaches bind_addr can join the membership; make one with `crfailoverd keygen --out /etc/crfailoverd/tls/gossip.key` "+
			"(the same file on every node, mode 0600) and set this key to its path, or set cluster.insecure_gossip = true to run without one")
	case cl.InsecureGossip && cl.GossipKeyFile != "":
		v.addf("cluster.insecure_gossip", "true, but cluster.gossip_key_file is set too: remove one of them (with the key file, gossip is encrypted)")
	default:
		v.absPath("cluster.gossip_key_file", cl.GossipKeyFile, true)
	}
	for _, f := range []struct{ key, val string }{
		{"cluster.tls_cert", cl.TLSCert}, {"cluster.tls_key", cl.TLSKey}, {"cluster.tls_ca", cl.TLSCA},
	} {
		if cl.Enabled && f.val == "" {
			v.addf(f.key, "required when cluster.enabled = true: want an absolute path")
			continue
		}
		v.absPath(f.key, f.val, true)
	}
	v.atLeast("cluster.replication_factor", cl.ReplicationFactor, 0)
	v.oneOf("cluster.failure_profile", cl.FailureProfile, "lan", "wan", "local")
	v.positive("cluster.lease", cl.Lease)
	if cl.Lease > 0 && cl.Lease < 2*time.Second {
		v.addf("cluster.lease", "want at least 2s (failure detection alone takes over 1 s; a shorter lease cannot keep two copies apart), got %v", cl.Lease)
	}
	v.positive("cluster.dead_server_grace", cl.DeadServerGrace)
	if cl.MaxVoters < 1 || cl.MaxVoters%2 == 0 {
		v.addf("cluster.max_voters", "want an odd number of at least 1, got %d", cl.MaxVoters)
	}

	m := c.Metrics
	if m.PrometheusAddr != "" {
		v.hostPort("metrics.prometheus_addr", m.PrometheusAddr, false)
	}
	v.atLeast("metrics.queue_size", m.QueueSize, 1)

	if a := c.Images.ListenAddr; a != "" {
		v.hostPort("images.listen_addr", a, true)
		if host, _, err := net.SplitHostPort(a); err == nil && checkHostPort(a, true) == nil && !isLoopback(host) && !c.Images.AllowRemote {
			v.addf("images.listen_addr", "%q is not a loopback address: the endpoint serves every protected container's checkpoint (its memory) to whoever reaches it, without credentials; "+
				"use 127.0.0.1:PORT (kubelet pulls from the node itself), or set images.allow_remote = true to serve it beyond this node", a)
		}
	}

	for i, f := range c.Images.PullSecretFiles {
		if !filepath.IsAbs(f) {
			v.addf("images.pull_secret_files", "entry %d: want an absolute path, got %q", i+1, f)
		}
	}

	st := c.Store
	switch {
	case st.Plaintext && st.DataKeyFile != "":
		v.addf("store.data_key_file", "%q is set together with store.plaintext = true: choose one (archives are encrypted with the key, or kept in plaintext)", st.DataKeyFile)
	case !st.Plaintext && st.DataKeyFile == "":
		v.addf("store.data_key_file", `want the absolute path of the data key that encrypts checkpoint archives at rest (create it with "crfailoverd keygen -data-key PATH"), or store.plaintext = true to keep them unencrypted`)
	case !st.Plaintext:
		v.absPath("store.data_key_file", st.DataKeyFile, false)
	}
	v.sizeIn("store.max_archive_bytes", st.MaxArchiveBytes, MinSizeLimit, MaxArchiveLimit)
	v.sizeIn("store.max_member_bytes", st.MaxMemberBytes, MinSizeLimit, max(st.MaxArchiveBytes, MinSizeLimit))
	v.sizeIn("store.workload_quota", st.WorkloadQuota, MinSizeLimit, math.MaxInt64)
	v.sizeIn("store.node_quota", st.NodeQuota, max(st.WorkloadQuota, MinSizeLimit), math.MaxInt64)
	v.sizeIn("store.min_free", st.MinFree, 0, math.MaxInt64)

	return v.probs
}

func (v *checker) sizeIn(key string, val, lo, hi int64) {
	if val < lo || val > hi {
		if hi == math.MaxInt64 {
			v.addf(key, "want at least %s, got %s", FormatSize(lo), FormatSize(val))
		} else {
			v.addf(key, "want %s to %s, got %s", FormatSize(lo), FormatSize(hi), FormatSize(val))
		}
	}
}

func (v *checker) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.addf(key, "want one of %s, got %q", quoteAll(allowed), val)
}

func (v *checker) absPath(key, val string, emptyOK bool) {
	switch {
	case val == "" && emptyOK, filepath.IsAbs(val):
	case emptyOK:
		v.addf(key, "want an absolute path or \"\", got %q", val)
	default:
		v.addf(key, "want an absolute path, got %q", val)
	}
}

func (v *checker) atLeast(key string, val, min int) {
	if val < min {
		v.addf(key, "want at least %d, got %d", min, val)
	}
}

func (v *checker) positive(key string, d time.Duration) {
	if d <= 0 {
		v.addf(key, "want a duration greater than 0, got %v", d)
	}
}

func (v *checker) hostPort(key, val string, needHost bool) {
	if err := checkHostPort(val, needHost); err != nil {
		v.addf(key, `want "host:port", got %q: %v`, val, err)
	}
}

// isLoopback reports whether host names this node's loopback only.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkHostPort reports why addr is not "host:port" with a numeric port
// from 1 to 65535 (and, if needHost, a non-empty host).
func checkHostPort(addr string, needHost bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if ae, ok := err.(*net.AddrError); ok {
			return errors.New(ae.Err)
		}
		return err
	}
	if needHost && host == "" {
		return errors.New("missing host")
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return errors.New("white space in host")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// levelName maps the four supported log levels to their config names.
func levelName(l slog.Level) (string, bool) {
	switch l {
	case slog.LevelDebug:
		return "debug", true
	case slog.LevelInfo:
		return "info", true
	case slog.LevelWarn:
		return "warn", true
	case slog.LevelError:
		return "error", true
	}
	return "", false
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
