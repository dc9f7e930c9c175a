package config

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Parse decodes the TOML document data over Default() and validates the
// result. name (usually the file path) prefixes every error message. On
// error the returned Config is the zero value and the error lists every
// problem found, one per line, ordered by line.
func Parse(data []byte, name string) (Config, error) {
	if name == "" {
		name = "config"
	}
	doc := string(data)
	var tree map[string]any
	md, err := toml.Decode(doc, &tree)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, fmt.Errorf("%s:%d: %s", name, syntaxLine(doc, pe.Position), pe.Message)
		}
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}

	c := Default()
	d := decoder{tree: tree, fields: map[string][]string{}}
	d.decode(&c)
	d.unknownKeys(md.Keys())
	probs := append(d.probs, c.problems()...)
	if len(probs) == 0 {
		return c, nil
	}

	loc := locator{doc: doc, tree: tree, md: md, cache: map[string]int{}}
	for i := range probs {
		probs[i].name = name
		probs[i].line = loc.line(probs[i].key)
	}
	// By line; problems of keys absent from the file (line 0) go last.
	slices.SortStableFunc(probs, func(a, b problem) int {
		return cmp.Compare(sortLine(a.line), sortLine(b.line))
	})
	err = joinProblems(probs)
	if d.moreUnknown > 0 {
		err = errors.Join(err, fmt.Errorf("%s: and %d more unknown keys", name, d.moreUnknown))
	}
	return Config{}, err
}

// maxUnknown is how many unknown keys Parse reports one by one; finding the
// line of each costs a decode of the whole document.
const maxUnknown = 20

// syntaxLine returns the line of a syntax error. It counts lines up to the
// error's byte offset because the toml package puts an error found at a
// newline on the line after it.
func syntaxLine(doc string, pos toml.Position) int {
	if pos.Line < 1 || pos.Start < 0 || pos.Start > len(doc) {
		return pos.Line
	}
	return 1 + strings.Count(doc[:pos.Start], "\n")
}

func sortLine(line int) int {
	if line == 0 {
		return math.MaxInt
	}
	return line
}

// decoder copies the values of a parsed TOML tree into a Config, recording
// type problems and which keys the schema knows.
type decoder struct {
	tree   map[string]any
	tables []string            // known tables, in order
	fields map[string][]string // known table name → its known keys, in order
	probs  []problem

	unknown, moreUnknown int // unknown keys reported, and left out
}

func (d *decoder) decode(c *Config) {
	t := d.table("node")
	t.str("name", &c.Node.Name)
	t.str("data_dir", &c.Node.DataDir)
	t.str("admin_socket", &c.Node.AdminSocket)
	t.logLevel("log_level", &c.Node.LogLevel)
	t.str("log_format", &c.Node.LogFormat)

	t = d.table("runtime")
	t.str("endpoint", &c.Runtime.Endpoint)
	t.duration("call_timeout", &c.Runtime.CallTimeout)
	t.str("restore_mode", &c.Runtime.RestoreMode)
	t.str("static_pod_dir", &c.Runtime.StaticPodDir)

	t = d.table("checkpoint")
	t.str("method", &c.Checkpoint.Method)
	t.duration("default_interval", &c.Checkpoint.DefaultInterval)
	t.duration("timeout", &c.Checkpoint.Timeout)
	t.integer("retention", &c.Checkpoint.Retention)
	t.integer("max_concurrent", &c.Checkpoint.MaxConcurrent)

	t = d.table("kubelet")
	t.str("url", &c.Kubelet.URL)
	t.str("client_cert", &c.Kubelet.ClientCert)
	t.str("client_key", &c.Kubelet.ClientKey)
	t.str("ca", &c.Kubelet.CA)

	t = d.table("probe")
	t.duration("period", &c.Probe.Period)
	t.duration("timeout", &c.Probe.Timeout)
	t.integer("failure_threshold", &c.Probe.FailureThreshold)
	t.duration("initial_delay", &c.Probe.InitialDelay)

	t = d.table("restore")
	t.str("policy", &c.Restore.Policy)
	t.integer("max_attempts", &c.Restore.MaxAttempts)
	t.duration("backoff_initial", &c.Restore.BackoffInitial)
	t.duration("backoff_max", &c.Restore.BackoffMax)

	t = d.table("cluster")
	t.boolean("enabled", &c.Cluster.Enabled)
	t.str("bind_addr", &c.Cluster.BindAddr)
	t.str("advertise_addr", &c.Cluster.AdvertiseAddr)
	t.str("rpc_addr", &c.Cluster.RPCAddr)
	t.strList("join", &c.Cluster.Join)
	t.integer("bootstrap_expect", &c.Cluster.BootstrapExpect)
	t.str("gossip_key_file", &c.Cluster.GossipKeyFile)
	t.boolean("insecure_gossip", &c.Cluster.InsecureGossip)
	t.str("tls_cert", &c.Cluster.TLSCert)
	t.str("tls_key", &c.Cluster.TLSKey)
	t.str("tls_ca", &c.Cluster.TLSCA)
	t.integer("replication_factor", &c.Cluster.ReplicationFactor)
	t.str("failure_profile", &c.Cluster.FailureProfile)
	t.duration("lease", &c.Cluster.Lease)
	t.duration("dead_server_grace", &c.Cluster.DeadServerGrace)
	t.integer("max_voters", &c.Cluster.MaxVoters)
	t.boolean("fence_guard", &c.Cluster.FenceGuard)

	t = d.table("metrics")
	t.str("postgres_dsn", &c.Metrics.PostgresDSN)
	t.str("prometheus_addr", &c.Metrics.PrometheusAddr)
	t.integer("queue_size", &c.Metrics.QueueSize)

	t = d.table("images")
	t.str("listen_addr", &c.Images.ListenAddr)
	t.boolean("allow_remote", &c.Images.AllowRemote)
	t.strList("pull_secret_files", &c.Images.PullSecretFiles)

	t = d.table("store")
	t.str("data_key_file", &c.Store.DataKeyFile)
	t.boolean("plaintext", &c.Store.Plaintext)
	t.size("max_archive_bytes", &c.Store.MaxArchiveBytes)
	t.size("max_member_bytes", &c.Store.MaxMemberBytes)
	t.size("workload_quota", &c.Store.WorkloadQuota)
	t.size("node_quota", &c.Store.NodeQuota)
	t.size("min_free", &c.Store.MinFree)
}

// unknownKeys reports, in document order, every key the schema does not
// know: top-level keys other than the known tables, and keys inside a known
// table other than its fields. Keys below an unknown key are not repeated;
// after maxUnknown keys the rest are only counted.
func (d *decoder) unknownKeys(keys []toml.Key) {
	seen := map[string]bool{}
	for _, k := range keys {
		// keys holds "a.b.c = 1" as one key: its parents a and a.b count too.
		var unknown toml.Key
		var msg string
		fields, known := d.fields[k[0]]
		_, isTable := d.tree[k[0]].(map[string]any)
		switch {
		case !known:
			unknown, msg = k[:1], "unknown key; the tables are "+strings.Join(d.tables, ", ")
		case len(k) >= 2 && isTable && !slices.Contains(fields, k[1]):
			unknown, msg = k[:2], fmt.Sprintf("unknown key; [%s] has %s", k[0], strings.Join(fields, ", "))
		default:
			continue
		}
		if s := unknown.String(); !seen[s] {
			seen[s] = true
			if d.unknown++; d.unknown > maxUnknown {
				d.moreUnknown++
				continue
			}
			d.probs = append(d.probs, problem{key: unknown, msg: msg})
		}
	}
}

// table is one known top-level table; its methods decode its keys.
type table struct {
	d    *decoder
	name string
	m    map[string]any // nil if absent or not a table
}

// table returns the top-level table name and records it as known.
func (d *decoder) table(name string) table {
	d.tables = append(d.tables, name)
	d.fields[name] = []string{}
	t := table{d: d, name: name}
	if v, ok := d.tree[name]; ok {
		if t.m, ok = v.(map[string]any); !ok {
			d.probs = append(d.probs, problem{key: []string{name}, msg: "want a table, got " + describe(v)})
		}
	}
	return t
}

// get returns the value of key in t and records key as known.
func (t table) get(key string) (any, bool) {
	t.d.fields[t.name] = append(t.d.fields[t.name], key)
	v, ok := t.m[key]
	return v, ok
}

// bad records that key holds v where want was expected.
func (t table) bad(key, want string, v any) {
	t.d.probs = append(t.d.probs, problem{key: []string{t.name, key}, msg: fmt.Sprintf("want %s, got %s", want, describe(v))})
}

func (t table) str(key string, dst *string) {
	if v, ok := t.get(key); ok {
		if s, ok := v.(string); ok {
			*dst = s
		} else {
			t.bad(key, "a string", v)
		}
	}
}

func (t table) boolean(key string, dst *bool) {
	if v, ok := t.get(key); ok {
		if b, ok := v.(bool); ok {
			*dst = b
		} else {
			t.bad(key, "a boolean (true or false)", v)
		}
	}
}

func (t table) integer(key string, dst *int) {
	if v, ok := t.get(key); ok {
		if n, ok := v.(int64); ok && int64(int(n)) == n {
			*dst = int(n)
		} else {
			t.bad(key, "an integer", v)
		}
	}
}

// size reads a byte count: a non-negative integer, or a string of a
// number and a unit (B, KiB, MiB, GiB, TiB; KB, MB, GB, TB are powers of
// 1000), such as "8GiB".
func (t table) size(key string, dst *int64) {
	v, ok := t.get(key)
	if !ok {
		return
	}
	switch x := v.(type) {
	case int64:
		if x >= 0 {
			*dst = x
			return
		}
	case string:
		if n, err := ParseSize(x); err == nil {
			*dst = n
			return
		}
	}
	t.bad(key, `a size: bytes as an integer >= 0, or a string such as "512MiB" or "8GiB"`, v)
}

func (t table) duration(key string, dst *time.Duration) {
	if v, ok := t.get(key); ok {
		s, _ := v.(string)
		if d, err := time.ParseDuration(s); err == nil {
			*dst = d
		} else {
			t.bad(key, `a duration string such as "10s" or "500ms"`, v)
		}
	}
}

func (t table) strList(key string, dst *[]string) {
	v, ok := t.get(key)
	if !ok {
		return
	}
	arr, ok := v.([]any)
	var list []string // an empty array gives nil, like the default
	for _, e := range arr {
		s, isStr := e.(string)
		if !isStr {
			ok = false
			break
		}
		list = append(list, s)
	}
	if !ok {
		t.bad(key, "an array of strings", v)
		return
	}
	*dst = list
}

func (t table) logLevel(key string, dst *slog.Level) {
	v, ok := t.get(key)
	if !ok {
		return
	}
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if name, _ := levelName(l); v == name {
			*dst = l
			return
		}
	}
	t.bad(key, `one of "debug", "info", "warn", "error"`, v)
}

// describe names the TOML type of v, with the value for scalars.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return "string " + strconv.Quote(v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %t", v)
	case time.Time:
		return "datetime"
	case []any:
		return "array"
	case []map[string]any:
		return "array of tables"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// keyString formats a key path as written in TOML, quoting parts as needed.
func keyString(k []string) string { return toml.Key(k).String() }
