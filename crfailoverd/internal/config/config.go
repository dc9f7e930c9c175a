// Package config loads, defaults and validates the crfailoverd configuration
// file (TOML, by default at [DefaultPath]).
//
// Decoding is strict: unknown keys, values of the wrong type and invalid
// values are all reported together, each as "<file>:<line>: <key>: <problem>"
// (the line is left out when the value is a default because the key is absent).
// The documented example lives in configs/crfailoverd.toml.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultPath is where the daemon looks for its configuration file.
const DefaultPath = "/etc/crfailoverd/config.toml"

// Config is the whole daemon configuration; each field is one TOML table.
type Config struct {
	Node       Node       `toml:"node"`
	Runtime    Runtime    `toml:"runtime"`
	Checkpoint Checkpoint `toml:"checkpoint" reload:"live"`
	Kubelet    Kubelet    `toml:"kubelet" reload:"live"`
	Probe      Probe      `toml:"probe" reload:"live"`
	Restore    Restore    `toml:"restore" reload:"live"`
	Cluster    Cluster    `toml:"cluster"`
	Metrics    Metrics    `toml:"metrics"`
	Images     Images     `toml:"images"`
	Store      Store      `toml:"store"`
}

// Node is the [node] table: identity, local storage and logging.
type Node struct {
	Name        string     `toml:"name"`                    // name; default os.Hostname()
	DataDir     string     `toml:"data_dir"`                // data_dir; absolute path
	AdminSocket string     `toml:"admin_socket"`            // admin_socket; absolute path
	LogLevel    slog.Level `toml:"log_level" reload:"live"` // log_level: "debug", "info", "warn" or "error"
	LogFormat   string     `toml:"log_format"`              // log_format: "auto", "journal", "text" or "json"
}

// Runtime is the [runtime] table: the CRI runtime and how restores are made.
type Runtime struct {
	Endpoint     string        `toml:"endpoint"`       // endpoint: "unix:///abs/path" or "/abs/path", as written; see SocketPath
	CallTimeout  time.Duration `toml:"call_timeout"`   // call_timeout: per CRI call; > 0
	RestoreMode  string        `toml:"restore_mode"`   // restore_mode: "cri", "static-pod" or "auto"
	StaticPodDir string        `toml:"static_pod_dir"` // static_pod_dir: absolute path
}

// Checkpoint is the [checkpoint] table.
type Checkpoint struct {
	Method          string        `toml:"method"`                          // method: "kubelet", "cri" or "auto"
	DefaultInterval time.Duration `toml:"default_interval"`                // default_interval: >= 100ms
	Timeout         time.Duration `toml:"timeout"`                         // timeout: per checkpoint; > 0
	Retention       int           `toml:"retention"`                       // retention: checkpoints kept per workload; >= 1
	MaxConcurrent   int           `toml:"max_concurrent" reload:"restart"` // max_concurrent: checkpoints at once on this node; >= 1
}

// Kubelet is the [kubelet] table: how to reach the kubelet checkpoint API.
type Kubelet struct {
	URL        string `toml:"url"`         // url: https URL with a host
	ClientCert string `toml:"client_cert"` // client_cert: "" (no client certificate) or absolute path
	ClientKey  string `toml:"client_key"`  // client_key: "" (key is in client_cert's file) or absolute path
	CA         string `toml:"ca"`          // ca: "" (system trust store) or absolute path
}

// Probe is the [probe] table: health probing of protected workloads.
type Probe struct {
	Period           time.Duration `toml:"period"`            // period: > 0
	Timeout          time.Duration `toml:"timeout"`           // timeout: > 0 (may exceed period)
	FailureThreshold int           `toml:"failure_threshold"` // failure_threshold: consecutive failures; >= 1
	InitialDelay     time.Duration `toml:"initial_delay"`     // initial_delay: >= 0
}

// Restore is the [restore] table.
type Restore struct {
	Policy         string        `toml:"policy" reload:"restart"` // policy: "peer" or "local"
	MaxAttempts    int           `toml:"max_attempts"`            // max_attempts: >= 1
	BackoffInitial time.Duration `toml:"backoff_initial"`         // backoff_initial: > 0
	BackoffMax     time.Duration `toml:"backoff_max"`             // backoff_max: >= backoff_initial
}

// Cluster is the [cluster] table, used by the gossip + Raft cluster feature.
type Cluster struct {
	Enabled           bool          `toml:"enabled"`                          // enabled
	BindAddr          string        `toml:"bind_addr"`                        // bind_addr: gossip "host:port" (host may be empty)
	AdvertiseAddr     string        `toml:"advertise_addr"`                   // advertise_addr: "" (derived) or "host:port"
	RPCAddr           string        `toml:"rpc_addr"`                         // rpc_addr: gRPC "host:port" (host may be empty)
	Join              []string      `toml:"join"`                             // join: "host:port" peers; nil when empty
	BootstrapExpect   int           `toml:"bootstrap_expect"`                 // bootstrap_expect: >= 1
	GossipKeyFile     string        `toml:"gossip_key_file"`                  // gossip_key_file: "" or absolute path; required when Enabled unless InsecureGossip
	InsecureGossip    bool          `toml:"insecure_gossip" reload:"restart"` // insecure_gossip: gossip without a key, explicitly
	TLSCert           string        `toml:"tls_cert"`                         // tls_cert: "" or absolute path; required when Enabled
	TLSKey            string        `toml:"tls_key"`                          // tls_key: "" or absolute path; required when Enabled
	TLSCA             string        `toml:"tls_ca"`                           // tls_ca: "" or absolute path; required when Enabled
	ReplicationFactor int           `toml:"replication_factor"`               // replication_factor: >= 0
	FailureProfile    string        `toml:"failure_profile"`                  // failure_profile: "lan", "wan" or "local"
	Lease             time.Duration `toml:"lease"`                            // lease: > 0
	DeadServerGrace   time.Duration `toml:"dead_server_grace"`                // dead_server_grace: > 0
	MaxVoters         int           `toml:"max_voters"`                       // max_voters: odd, >= 1
	FenceGuard        bool          `toml:"fence_guard"`                      // fence_guard: run the fence guard (crfailoverd fence-guard) next to the daemon
}

// Images is the [images] table: the embedded, read-only OCI registry that
// serves this node's checkpoints as checkpoint images (for kubelet static
// pods).
type Images struct {
	ListenAddr  string `toml:"listen_addr"`  // listen_addr: "host:port", or "" for no endpoint; loopback unless AllowRemote
	AllowRemote bool   `toml:"allow_remote"` // allow_remote: serve checkpoints beyond this node
	// pull_secret_files: docker config.json files (absolute paths) in which
	// the daemon keeps the endpoint's credentials for the node's image
	// pulls (kubelet reads /var/lib/kubelet/config.json); other entries in
	// them are kept. nil when empty.
	PullSecretFiles []string `toml:"pull_secret_files"`
}

// Store is the [store] table: how this node keeps checkpoint archives, which
// are untrusted input (limits) and secrets (encryption at rest). Sizes are
// bytes: an integer, or a string such as "8GiB" or "512MiB".
type Store struct {
	DataKeyFile     string `toml:"data_key_file"`     // data_key_file: absolute path of the data key (an age X25519 identity, 0600); "" only with Plaintext
	Plaintext       bool   `toml:"plaintext"`         // plaintext: keep archives unencrypted at rest, explicitly
	MaxArchiveBytes int64  `toml:"max_archive_bytes"` // max_archive_bytes: an archive's size, and the sum of its members' sizes; 1MiB..1TiB
	MaxMemberBytes  int64  `toml:"max_member_bytes"`  // max_member_bytes: one member's size; 1MiB..max_archive_bytes
	WorkloadQuota   int64  `toml:"workload_quota"`    // workload_quota: replicas of one workload from peers; >= 1MiB
	NodeQuota       int64  `toml:"node_quota"`        // node_quota: all replicas from peers on this node; >= workload_quota
	MinFree         int64  `toml:"min_free"`          // min_free: bytes kept free on the data directory's file system; >= 0
}

// Metrics is the [metrics] table, used by the metrics feature.
type Metrics struct {
	PostgresDSN    string `toml:"postgres_dsn"`    // postgres_dsn: "" disables the PostgreSQL sink
	PrometheusAddr string `toml:"prometheus_addr"` // prometheus_addr: "" (off) or "host:port"
	QueueSize      int    `toml:"queue_size"`      // queue_size: >= 1
}

// Default returns the configuration used for every key the file leaves out.
// Node.Name is the host name, or "" if it cannot be determined (which
// Validate rejects).
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		Node: Node{
			Name:        host,
			DataDir:     "/var/lib/crfailoverd",
			AdminSocket: "/run/crfailoverd/admin.sock",
			LogLevel:    slog.LevelInfo,
			LogFormat:   "auto",
		},
		Runtime: Runtime{
			Endpoint:     "unix:///run/containerd/containerd.sock",
			CallTimeout:  10 * time.Second,
			RestoreMode:  "cri",
			StaticPodDir: "/etc/kubernetes/manifests",
		},
		Checkpoint: Checkpoint{
			Method:          "auto",
			DefaultInterval: 10 * time.Second,
			Timeout:         30 * time.Second,
			Retention:       3,
			MaxConcurrent:   2,
		},
		Kubelet: Kubelet{
			URL:        "https://127.0.0.1:10250",
			ClientCert: "/var/lib/kubelet/pki/kubelet-client-current.pem",
			CA:         "/etc/kubernetes/pki/ca.crt",
		},
		Probe: Probe{
			Period:           time.Second,
			Timeout:          time.Second,
			FailureThreshold: 3,
		},
		Restore: Restore{
			Policy:         "peer",
			MaxAttempts:    5,
			BackoffInitial: time.Second,
			BackoffMax:     30 * time.Second,
		},
		Cluster: Cluster{
			BindAddr:          "0.0.0.0:7946",
			RPCAddr:           "0.0.0.0:7947",
			BootstrapExpect:   3,
			ReplicationFactor: 1,
			FailureProfile:    "lan",
			Lease:             3 * time.Second,
			DeadServerGrace:   30 * time.Second,
			MaxVoters:         5,
			FenceGuard:        true,
		},
		Metrics: Metrics{QueueSize: 10000},
		Images:  Images{ListenAddr: "127.0.0.1:7948", PullSecretFiles: []string{"/var/lib/kubelet/config.json"}},
		Store: Store{
			DataKeyFile:     "/etc/crfailoverd/data.key",
			MaxArchiveBytes: 16 << 30,
			MaxMemberBytes:  16 << 30,
			WorkloadQuota:   64 << 30,
			NodeQuota:       256 << 30,
			MinFree:         2 << 30,
		},
	}
}

// Load reads the file at path and returns it decoded over Default() and
// validated, like Parse. A missing file is an error (errors.Is
// fs.ErrNotExist).
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Size limits of the [store] table.
const (
	MinSizeLimit    = 1 << 20 // the smallest max_archive_bytes, max_member_bytes and workload_quota
	MaxArchiveLimit = 1 << 40 // the largest max_archive_bytes
)

// SocketPath returns the CRI socket path of Endpoint: "unix:///run/x.sock"
// and "/run/x.sock" both give "/run/x.sock".
func (r Runtime) SocketPath() string {
	p := strings.TrimPrefix(r.Endpoint, "unix://")
	if p == "" {
		return ""
	}
	return filepath.Clean(p)
}

// problem is one configuration error. It prints as
// "<name>:<line>: <key>: <msg>", leaving out the name and line when unknown.
type problem struct {
	name string
	line int
	key  []string
	msg  string
}

func (p *problem) Error() string {
	var b strings.Builder
	if p.name != "" {
		b.WriteString(p.name)
		if p.line > 0 {
			fmt.Fprintf(&b, ":%d", p.line)
		}
		b.WriteString(": ")
	}
	b.WriteString(keyString(p.key))
	b.WriteString(": ")
	b.WriteString(p.msg)
	return b.String()
}

// joinProblems returns the problems as one error, one per line, or nil.
func joinProblems(probs []problem) error {
	errs := make([]error, len(probs))
	for i := range probs {
		errs[i] = &probs[i]
	}
	return errors.Join(errs...)
}
