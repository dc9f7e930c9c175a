package config

import (
	"log/slog"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestRestartNeeded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string
	}{
		{"no change", func(*Config) {}, nil},

		{"node.name", func(c *Config) { c.Node.Name = "other" }, []string{"node.name"}},
		{"node.data_dir", func(c *Config) { c.Node.DataDir = "/srv/x" }, []string{"node.data_dir"}},
		{"node.admin_socket", func(c *Config) { c.Node.AdminSocket = "/run/x.sock" }, []string{"node.admin_socket"}},
		{"node.log_format", func(c *Config) { c.Node.LogFormat = "json" }, []string{"node.log_format"}},
		{"runtime.endpoint", func(c *Config) { c.Runtime.Endpoint = "/run/crio.sock" }, []string{"runtime.endpoint"}},
		{"runtime.call_timeout", func(c *Config) { c.Runtime.CallTimeout = time.Minute }, []string{"runtime.call_timeout"}},
		{"runtime.restore_mode", func(c *Config) { c.Runtime.RestoreMode = "auto" }, []string{"runtime.restore_mode"}},
		{"runtime.static_pod_dir", func(c *Config) { c.Runtime.StaticPodDir = "/m" }, []string{"runtime.static_pod_dir"}},
		{"checkpoint.max_concurrent", func(c *Config) { c.Checkpoint.MaxConcurrent = 9 }, []string{"checkpoint.max_concurrent"}},
		{"restore.policy", func(c *Config) { c.Restore.Policy = "local" }, []string{"restore.policy"}},
		{"cluster.enabled", func(c *Config) { c.Cluster.Enabled = true }, []string{"cluster.enabled"}},
		{"cluster.bind_addr", func(c *Config) { c.Cluster.BindAddr = ":1" }, []string{"cluster.bind_addr"}},
		{"cluster.advertise_addr", func(c *Config) { c.Cluster.AdvertiseAddr = "h:1" }, []string{"cluster.advertise_addr"}},
		{"cluster.rpc_addr", func(c *Config) { c.Cluster.RPCAddr = ":2" }, []string{"cluster.rpc_addr"}},
		{"cluster.join", func(c *Config) { c.Cluster.Join = []string{"a:1"} }, []string{"cluster.join"}},
		{"cluster.join empty vs nil", func(c *Config) { c.Cluster.Join = []string{} }, []string{"cluster.join"}},
		{"cluster.bootstrap_expect", func(c *Config) { c.Cluster.BootstrapExpect = 1 }, []string{"cluster.bootstrap_expect"}},
		{"cluster.gossip_key_file", func(c *Config) { c.Cluster.GossipKeyFile = "/k" }, []string{"cluster.gossip_key_file"}},
		{"cluster.insecure_gossip", func(c *Config) { c.Cluster.InsecureGossip = true }, []string{"cluster.insecure_gossip"}},
		{"cluster.tls_cert", func(c *Config) { c.Cluster.TLSCert = "/c" }, []string{"cluster.tls_cert"}},
		{"cluster.tls_key", func(c *Config) { c.Cluster.TLSKey = "/k" }, []string{"cluster.tls_key"}},
		{"cluster.tls_ca", func(c *Config) { c.Cluster.TLSCA = "/ca" }, []string{"cluster.tls_ca"}},
		{"cluster.replication_factor", func(c *Config) { c.Cluster.ReplicationFactor = 2 }, []string{"cluster.replication_factor"}},
		{"cluster.failure_profile", func(c *Config) { c.Cluster.FailureProfile = "wan" }, []string{"cluster.failure_profile"}},
		{"cluster.lease", func(c *Config) { c.Cluster.Lease = time.Minute }, []string{"cluster.lease"}},
		{"cluster.dead_server_grace", func(c *Config) { c.Cluster.DeadServerGrace = time.Hour }, []string{"cluster.dead_server_grace"}},
		{"cluster.max_voters", func(c *Config) { c.Cluster.MaxVoters = 3 }, []string{"cluster.max_voters"}},
		{"metrics.postgres_dsn", func(c *Config) { c.Metrics.PostgresDSN = "postgres://x" }, []string{"metrics.postgres_dsn"}},
		{"metrics.prometheus_addr", func(c *Config) { c.Metrics.PrometheusAddr = ":9" }, []string{"metrics.prometheus_addr"}},
		{"metrics.queue_size", func(c *Config) { c.Metrics.QueueSize = 1 }, []string{"metrics.queue_size"}},
		{"images.listen_addr", func(c *Config) { c.Images.ListenAddr = "" }, []string{"images.listen_addr"}},
		{"several, sorted", func(c *Config) {
			c.Metrics.QueueSize = 1
			c.Node.Name = "other"
			c.Probe.Period = time.Minute // reloadable: not listed
			c.Checkpoint.MaxConcurrent = 9
		}, []string{"checkpoint.max_concurrent", "metrics.queue_size", "node.name"}},

		// Reloadable: nothing to restart for.
		{"node.log_level", func(c *Config) { c.Node.LogLevel = slog.LevelDebug }, nil},
		{"checkpoint.method", func(c *Config) { c.Checkpoint.Method = "cri" }, nil},
		{"checkpoint.default_interval", func(c *Config) { c.Checkpoint.DefaultInterval = time.Minute }, nil},
		{"checkpoint.timeout", func(c *Config) { c.Checkpoint.Timeout = time.Minute }, nil},
		{"checkpoint.retention", func(c *Config) { c.Checkpoint.Retention = 9 }, nil},
		{"kubelet.url", func(c *Config) { c.Kubelet.URL = "https://k:1" }, nil},
		{"kubelet.client_cert", func(c *Config) { c.Kubelet.ClientCert = "/c" }, nil},
		{"kubelet.client_key", func(c *Config) { c.Kubelet.ClientKey = "/k" }, nil},
		{"kubelet.ca", func(c *Config) { c.Kubelet.CA = "" }, nil},
		{"probe.period", func(c *Config) { c.Probe.Period = time.Minute }, nil},
		{"probe.timeout", func(c *Config) { c.Probe.Timeout = time.Minute }, nil},
		{"probe.failure_threshold", func(c *Config) { c.Probe.FailureThreshold = 9 }, nil},
		{"probe.initial_delay", func(c *Config) { c.Probe.InitialDelay = time.Minute }, nil},
		{"restore.max_attempts", func(c *Config) { c.Restore.MaxAttempts = 9 }, nil},
		{"restore.backoff_initial", func(c *Config) { c.Restore.BackoffInitial = time.Minute }, nil},
		{"restore.backoff_max", func(c *Config) { c.Restore.BackoffMax = time.Hour }, nil},
		{"all reloadable at once", func(c *Config) {
			c.Node.LogLevel = slog.LevelError
			c.Checkpoint.Retention = 1
			c.Probe.Timeout = time.Hour
			c.Restore.MaxAttempts = 1
			c.Kubelet.URL = "https://k:2"
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, nw := Default(), Default()
			tc.change(&nw)
			if got := RestartNeeded(old, nw); !slices.Equal(got, tc.want) {
				t.Errorf("RestartNeeded(old, new) = %q, want %q", got, tc.want)
			}
			// The comparison is symmetric.
			if got := RestartNeeded(nw, old); !slices.Equal(got, tc.want) {
				t.Errorf("RestartNeeded(new, old) = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRestartNeededCoversEveryKey changes each key in turn, through
// reflection, so that a key added to the structs without a case above is
// still checked: it is reported exactly when it is not reloadable.
func TestRestartNeededCoversEveryKey(t *testing.T) {
	live := map[string]bool{}
	for _, k := range ReloadableKeys() {
		live[k] = true
	}
	n := 0
	forEachKey(func(key string, _ bool, index []int) {
		n++
		nw := Default()
		v := reflect.ValueOf(&nw).Elem().FieldByIndex(index)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Int, reflect.Int64:
			v.SetInt(v.Int() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Slice:
			v.Set(reflect.Append(v, reflect.ValueOf("x")))
		default:
			t.Fatalf("%s: no test change for kind %s", key, v.Kind())
		}
		got := RestartNeeded(Default(), nw)
		var want []string
		if !live[key] {
			want = []string{key}
		}
		if !slices.Equal(got, want) {
			t.Errorf("changing %s: RestartNeeded = %q, want %q", key, got, want)
		}
	})
	if n == 0 {
		t.Fatal("no keys")
	}
}

func TestReloadableKeys(t *testing.T) {
	want := []string{
		"checkpoint.default_interval", "checkpoint.method", "checkpoint.retention", "checkpoint.timeout",
		"kubelet.ca", "kubelet.client_cert", "kubelet.client_key", "kubelet.url",
		"node.log_level",
		"probe.failure_threshold", "probe.initial_delay", "probe.period", "probe.timeout",
		"restore.backoff_initial", "restore.backoff_max", "restore.max_attempts",
	}
	if got := ReloadableKeys(); !slices.Equal(got, want) {
		t.Errorf("ReloadableKeys() = %q\nwant %q", got, want)
	}
}

// TestTOMLTagsMatchDecoder keeps the toml tags, which RestartNeeded names
// keys by, in step with the keys the decoder reads.
func TestTOMLTagsMatchDecoder(t *testing.T) {
	d := decoder{fields: map[string][]string{}}
	var c Config
	d.decode(&c)
	var decoded, tagged []string
	for _, tbl := range d.tables {
		for _, k := range d.fields[tbl] {
			decoded = append(decoded, tbl+"."+k)
		}
	}
	forEachKey(func(key string, _ bool, _ []int) { tagged = append(tagged, key) })
	if !slices.Equal(decoded, tagged) {
		t.Errorf("decoder keys %q\ntoml tags    %q", decoded, tagged)
	}
}
