package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const examplePath = "../../../configs/crfailoverd.toml"

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestEmptyFileGivesDefaults(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n", "[node]\n[cluster]\n"} {
		c, err := Parse([]byte(doc), "t.toml")
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("Parse(%q) = %+v, want Default() %+v", doc, c, Default())
		}
	}
}

func TestDefaultsFillAbsentKeys(t *testing.T) {
	c, err := Parse([]byte("[checkpoint]\nretention = 7\n[node]\nname = \"n1\"\n"), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Checkpoint.Retention = 7
	want.Node.Name = "n1"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
}

func TestParseAllValues(t *testing.T) {
	doc := `
[node]
name = "worker-2"
data_dir = "/srv/crf"
admin_socket = "/run/crf.sock"
log_level = "debug"
log_format = "json"

[runtime]
endpoint = "/run/crio/crio.sock"
call_timeout = "2s"
restore_mode = "static-pod"
static_pod_dir = "/etc/manifests"

[checkpoint]
method = "cri"
default_interval = "500ms"
timeout = "1m"
retention = 1
max_concurrent = 4

[kubelet]
url = "https://node:10250"
client_cert = "/pki/c.pem"
client_key = "/pki/k.pem"
ca = ""

[probe]
period = "250ms"
timeout = "2s"
failure_threshold = 1
initial_delay = "5s"

[restore]
policy = "local"
max_attempts = 1
backoff_initial = "100ms"
backoff_max = "100ms"

[cluster]
enabled = true
bind_addr = ":8000"
advertise_addr = "10.0.0.2:8000"
rpc_addr = "[::]:8001"
join = ["10.0.0.1:8000", "n3.example:8000"]
bootstrap_expect = 1
gossip_key_file = "/etc/crf/gossip.key"
insecure_gossip = false
tls_cert = "/etc/crf/tls.crt"
tls_key = "/etc/crf/tls.key"
tls_ca = "/etc/crf/ca.crt"
replication_factor = 0
failure_profile = "wan"
lease = "3s"
dead_server_grace = "2m"
max_voters = 3
fence_guard = false

[metrics]
postgres_dsn = "postgres://m@db/metrics"
prometheus_addr = ":9100"
queue_size = 1

[images]
listen_addr = "127.0.0.1:5001"
pull_secret_files = []

[store]
data_key_file = ""
plaintext = true
max_archive_bytes = "1.5GiB"
max_member_bytes = 1048576
workload_quota = "10MB"
node_quota = "20 MiB"
min_free = 0
`
	want := Config{
		Node:       Node{"worker-2", "/srv/crf", "/run/crf.sock", slog.LevelDebug, "json"},
		Runtime:    Runtime{"/run/crio/crio.sock", 2 * time.Second, "static-pod", "/etc/manifests"},
		Checkpoint: Checkpoint{"cri", 500 * time.Millisecond, time.Minute, 1, 4},
		Kubelet:    Kubelet{"https://node:10250", "/pki/c.pem", "/pki/k.pem", ""},
		Probe:      Probe{250 * time.Millisecond, 2 * time.Second, 1, 5 * time.Second},
		Restore:    Restore{"local", 1, 100 * time.Millisecond, 100 * time.Millisecond},
		Cluster: Cluster{
			Enabled: true, BindAddr: ":8000", AdvertiseAddr: "10.0.0.2:8000", RPCAddr: "[::]:8001",
			Join: []string{"10.0.0.1:8000", "n3.example:8000"}, BootstrapExpect: 1,
			GossipKeyFile: "/etc/crf/gossip.key",
			TLSCert:       "/etc/crf/tls.crt", TLSKey: "/etc/crf/tls.key", TLSCA: "/etc/crf/ca.crt",
			ReplicationFactor: 0, FailureProfile: "wan", Lease: 3 * time.Second,
			DeadServerGrace: 2 * time.Minute, MaxVoters: 3, FenceGuard: false,
		},
		Metrics: Metrics{"postgres://m@db/metrics", ":9100", 1},
		Images:  Images{ListenAddr: "127.0.0.1:5001"},
		Store:   Store{Plaintext: true, MaxArchiveBytes: 3 << 29, MaxMemberBytes: 1 << 20, WorkloadQuota: 10e6, NodeQuota: 20 << 20},
	}
	c, err := Parse([]byte(doc), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestExampleFileLoadsAsDefault(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("example file differs from Default():\ngot  %+v\nwant %+v", c, Default())
	}
}

// TestExampleFileHasEveryKey checks that the example documents every key:
// all of them written, except node.name, which is only mentioned.
func TestExampleFileHasEveryKey(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	md, err := toml.Decode(string(data), &tree)
	if err != nil {
		t.Fatal(err)
	}
	d := decoder{tree: tree, fields: map[string][]string{}}
	c := Default()
	d.decode(&c)
	for _, table := range d.tables {
		for _, key := range d.fields[table] {
			full := table + "." + key
			if full == "node.name" {
				if !strings.Contains(string(data), "# name = ") {
					t.Errorf("example file does not mention node.name")
				}
				continue
			}
			if !md.IsDefined(table, key) {
				t.Errorf("example file lacks %s", full)
			}
		}
	}
}

func TestBadConfigs(t *testing.T) {
	tests := []struct {
		doc  string
		want string // "<name>:<line>: <key>: " or "<name>: <key>: " for defaults
		msg  string // part of the problem text
	}{
		// Unknown keys and tables.
		{"[checkpoint]\nintervall = \"5s\"\n", "t.toml:2: checkpoint.intervall: ", "unknown key; [checkpoint] has method, default_interval"},
		{"[node]\nname = \"a\"\n\n[checkpont]\nretention = 1\n", "t.toml:4: checkpont: ", "unknown key; the tables are node, runtime"},
		{"verbose = true\n", "t.toml:1: verbose: ", "unknown key"},
		{"[probe]\nperiod = \"1s\"\n\n\nchecks.http = 1\n", "t.toml:5: probe.checks: ", "unknown key"},
		{"# c\nextra.deep.key = 1\n", "t.toml:2: extra: ", "unknown key"},
		{"[node]\nLog_Level = \"info\"\n", "t.toml:2: node.Log_Level: ", "unknown key"},
		{"[restore]\n\n[restore.peer]\nx = 1\n", "t.toml:3: restore.peer: ", "unknown key"},
		{"[[cluster.peers]]\naddr = \"a:1\"\n", "t.toml:1: cluster.peers: ", "unknown key"},
		{"[checkpoint]\nretention = 1\nRetention = 2\n", "t.toml:3: checkpoint.Retention: ", "unknown key"},
		// Wrong types.
		{"[checkpoint]\n\nretention = \"three\"\n", "t.toml:3: checkpoint.retention: ", `want an integer, got string "three"`},
		{"[probe]\nperiod = 10\n", "t.toml:2: probe.period: ", `want a duration string such as "10s" or "500ms", got integer 10`},
		{"[cluster]\nenabled = \"yes\"\n", "t.toml:2: cluster.enabled: ", `want a boolean (true or false), got string "yes"`},
		{"[cluster]\njoin = \"a:1\"\n", "t.toml:2: cluster.join: ", `want an array of strings, got string "a:1"`},
		{"[cluster]\njoin = [\n  \"a:1\",\n  2,\n]\n", "t.toml:2: cluster.join: ", "want an array of strings, got array"},
		{"[node]\ndata_dir = 5\n", "t.toml:2: node.data_dir: ", "want a string, got integer 5"},
		{"node = \"x\"\n", "t.toml:1: node: ", `want a table, got string "x"`},
		{"[restore]\nmax_attempts = 2.5\n", "t.toml:2: restore.max_attempts: ", "want an integer, got float 2.5"},
		{"[node]\nlog_level = \"verbose\"\n", "t.toml:2: node.log_level: ", `want one of "debug", "info", "warn", "error", got string "verbose"`},
		// Bad values.
		{"[checkpoint]\ndefault_interval = \"10\"\n", "t.toml:2: checkpoint.default_interval: ", "want a duration string"},
		{"[checkpoint]\ndefault_interval = \"50ms\"\n", "t.toml:2: checkpoint.default_interval: ", "want at least 100ms, got 50ms"},
		{"[checkpoint]\ntimeout = \"0s\"\n", "t.toml:2: checkpoint.timeout: ", "want a duration greater than 0, got 0s"},
		{"[checkpoint]\nretention = 0\n", "t.toml:2: checkpoint.retention: ", "want at least 1, got 0"},
		{"[checkpoint]\nmax_concurrent = -1\n", "t.toml:2: checkpoint.max_concurrent: ", "want at least 1, got -1"},
		{"[checkpoint]\nmethod = \"criu\"\n", "t.toml:2: checkpoint.method: ", `want one of "kubelet", "cri", "auto", got "criu"`},
		{"[node]\ndata_dir = \"var/lib/crf\"\n", "t.toml:2: node.data_dir: ", `want an absolute path, got "var/lib/crf"`},
		{"[node]\nlog_format = \"xml\"\n", "t.toml:2: node.log_format: ", `want one of "auto", "journal", "text", "json"`},
		{"[node]\nname = \"\"\n", "t.toml:2: node.name: ", "want a non-empty name"},
		// The [store] table.
		{"[store]\nmax_archive_bytes = \"lots\"\n", "t.toml:2: store.max_archive_bytes: ", `want a size: bytes as an integer >= 0, or a string such as "512MiB"`},
		{"[store]\nmin_free = -1\n", "t.toml:2: store.min_free: ", "want a size"},
		{"[store]\nmax_archive_bytes = \"2TiB\"\nmax_member_bytes = \"1GiB\"\n", "t.toml:2: store.max_archive_bytes: ", "want 1MiB to 1TiB, got 2TiB"},
		{"[store]\nmax_member_bytes = \"17GiB\"\n", "t.toml:2: store.max_member_bytes: ", "want 1MiB to 16GiB, got 17GiB"},
		{"[store]\nworkload_quota = 1000\n", "t.toml:2: store.workload_quota: ", "want at least 1MiB, got 1000B"},
		{"[store]\nnode_quota = \"1GiB\"\n", "t.toml:2: store.node_quota: ", "want at least 64GiB, got 1GiB"},
		{"[store]\ndata_key_file = \"\"\n", "t.toml:2: store.data_key_file: ", "crfailoverd keygen -data-key PATH"},
		{"[store]\nplaintext = true\n", "t.toml: store.data_key_file: ", "set together with store.plaintext = true"},
		{"[store]\ndata_key_file = \"k\"\n", "t.toml:2: store.data_key_file: ", `want an absolute path, got "k"`},
		{"[images]\npull_secret_files = [\"c.json\"]\n", "t.toml:2: images.pull_secret_files: ", `entry 1: want an absolute path, got "c.json"`},
		{"[runtime]\nendpoint = \"tcp://10.0.0.1:1234\"\n", "t.toml:2: runtime.endpoint: ", `want "unix:///absolute/path" or an absolute socket path`},
		{"[runtime]\nendpoint = \"unix://run/x.sock\"\n", "t.toml:2: runtime.endpoint: ", "absolute socket path"},
		{"[runtime]\nrestore_mode = \"pod\"\n", "t.toml:2: runtime.restore_mode: ", `want one of "cri", "static-pod", "auto"`},
		{"[runtime]\nstatic_pod_dir = \"manifests\"\n", "t.toml:2: runtime.static_pod_dir: ", "want an absolute path"},
		{"[kubelet]\nurl = \"http://127.0.0.1:10250\"\n", "t.toml:2: kubelet.url: ", "want an https:// URL with a host"},
		{"[kubelet]\nurl = \"https://\"\n", "t.toml:2: kubelet.url: ", "want an https:// URL with a host"},
		{"[kubelet]\nca = \"ca.crt\"\n", "t.toml:2: kubelet.ca: ", `want an absolute path or "", got "ca.crt"`},
		{"[kubelet]\nclient_cert = \"\"\nclient_key = \"/k.pem\"\n", "t.toml:3: kubelet.client_key: ", "kubelet.client_cert is empty"},
		{"[probe]\nfailure_threshold = 0\n", "t.toml:2: probe.failure_threshold: ", "want at least 1, got 0"},
		{"[probe]\ninitial_delay = \"-1s\"\n", "t.toml:2: probe.initial_delay: ", "want a duration of 0 or more, got -1s"},
		{"[restore]\npolicy = \"remote\"\n", "t.toml:2: restore.policy: ", `want one of "peer", "local"`},
		{"[restore]\nbackoff_initial = \"10s\"\nbackoff_max = \"5s\"\n", "t.toml:3: restore.backoff_max: ", "want at least restore.backoff_initial (10s), got 5s"},
		{"[restore]\nbackoff_initial = \"1m\"\n", "t.toml: restore.backoff_max: ", "want at least restore.backoff_initial (1m0s), got 30s"},
		{"[cluster]\nbind_addr = \"0.0.0.0\"\n", "t.toml:2: cluster.bind_addr: ", `want "host:port", got "0.0.0.0": missing port in address`},
		{"[cluster]\nrpc_addr = \"host:http\"\n", "t.toml:2: cluster.rpc_addr: ", `port "http" is not a number from 1 to 65535`},
		{"[cluster]\nadvertise_addr = \":7946\"\n", "t.toml:2: cluster.advertise_addr: ", "missing host"},
		{"[cluster]\njoin = [\"a:1\", \"b\"]\n", "t.toml:2: cluster.join: ", `element 2: want "host:port", got "b"`},
		{"[cluster]\nbootstrap_expect = 0\n", "t.toml:2: cluster.bootstrap_expect: ", "want at least 1, got 0"},
		{"[cluster]\ngossip_key_file = \"key\"\n", "t.toml:2: cluster.gossip_key_file: ", "want an absolute path"},
		{"[cluster]\nreplication_factor = -1\n", "t.toml:2: cluster.replication_factor: ", "want at least 0, got -1"},
		{"[cluster]\nfailure_profile = \"fast\"\n", "t.toml:2: cluster.failure_profile: ", `want one of "lan", "wan", "local"`},
		{"[cluster]\nlease = \"0s\"\n", "t.toml:2: cluster.lease: ", "want a duration greater than 0"},
		{"[cluster]\nlease = \"1s\"\n", "t.toml:2: cluster.lease: ", "want at least 2s"},
		{"[cluster]\ndead_server_grace = \"-5s\"\n", "t.toml:2: cluster.dead_server_grace: ", "want a duration greater than 0"},
		{"[cluster]\nmax_voters = 4\n", "t.toml:2: cluster.max_voters: ", "want an odd number of at least 1, got 4"},
		{"[cluster]\nenabled = true\ngossip_key_file = \"/g\"\ntls_cert = \"/c\"\ntls_ca = \"/ca\"\n", "t.toml: cluster.tls_key: ", "required when cluster.enabled = true"},
		{"[cluster]\nenabled = true\ngossip_key_file = \"/g\"\ntls_cert = \"\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n", "t.toml:4: cluster.tls_cert: ", "required when cluster.enabled = true"},
		// The gossip key: required with the cluster on, unless explicitly insecure.
		{"[cluster]\nenabled = true\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n", "t.toml: cluster.gossip_key_file: ",
			"required when cluster.enabled = true: without a key gossip is neither encrypted nor authenticated"},
		{"[cluster]\nenabled = true\ngossip_key_file = \"\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n", "t.toml:3: cluster.gossip_key_file: ",
			"make one with `crfailoverd keygen --out /etc/crfailoverd/tls/gossip.key` (the same file on every node, mode 0600) and set this key to its path, or set cluster.insecure_gossip = true"},
		{"[cluster]\nenabled = true\ninsecure_gossip = false\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n", "t.toml: cluster.gossip_key_file: ", "required when cluster.enabled = true"},
		{"[cluster]\nenabled = true\ngossip_key_file = \"gossip.key\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n", "t.toml:3: cluster.gossip_key_file: ", `want an absolute path or "", got "gossip.key"`},
		{"[cluster]\ninsecure_gossip = true\ngossip_key_file = \"/g\"\n", "t.toml:2: cluster.insecure_gossip: ", "true, but cluster.gossip_key_file is set too: remove one of them"},
		{"[cluster]\ninsecure_gossip = \"yes\"\n", "t.toml:2: cluster.insecure_gossip: ", `want a boolean (true or false), got string "yes"`},
		{"[cluster]\ninsecure_gosip = true\n", "t.toml:2: cluster.insecure_gosip: ", "unknown key; [cluster] has enabled, bind_addr"},
		{"[metrics]\nprometheus_addr = \"9090\"\n", "t.toml:2: metrics.prometheus_addr: ", "missing port in address"},
		{"[metrics]\nqueue_size = 0\n", "t.toml:2: metrics.queue_size: ", "want at least 1, got 0"},
		{"[images]\nlisten_addr = \":5001\"\n", "t.toml:2: images.listen_addr: ", "host"},
		{"[images]\nlisten_addr = \"0.0.0.0:5001\"\n", "t.toml:2: images.listen_addr: ", "is not a loopback address"},
		{"[images]\nlisten_addr = \"10.0.0.5:5001\"\n", "t.toml:2: images.listen_addr: ", "set images.allow_remote = true"},
		{"[images]\nallow_remote = 1\n", "t.toml:2: images.allow_remote: ", "want a boolean"},
		// Dotted keys and inline tables.
		{"checkpoint.retention = 0\n", "t.toml:1: checkpoint.retention: ", "want at least 1"},
		{"\ncheckpoint = { method = \"x\", retention = 1 }\n", "t.toml:2: checkpoint.method: ", "want one of"},
		{"[checkpoint]\nretention = 1\n[probe]\nperiod = \"1s\"\n[checkpoint.x]\ny = 1\n", "t.toml:5: checkpoint.x: ", "unknown key"},
		// Syntax errors.
		{"[node]\nname = \n", "t.toml:2: ", "expected value"},
		{"[node]\nname = \"a\"\nname = \"b\"\n", "t.toml:3: ", "already been defined"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc), "t.toml")
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error %q", tt.doc, tt.want+tt.msg)
			continue
		}
		if !hasLine(err.Error(), tt.want, tt.msg) {
			t.Errorf("Parse(%q) error:\n%v\nwant a line starting %q and containing %q", tt.doc, err, tt.want, tt.msg)
		}
		if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
			t.Errorf("Parse(%q) gave %d errors, want 1:\n%v", tt.doc, n, err)
		}
	}
}

// TestGossipKeyOrInsecure: a cluster node needs a gossip key, or
// insecure_gossip = true to do without one; without the cluster neither
// matters.
func TestImageEndpointLoopbackUnlessAllowed(t *testing.T) {
	for _, tc := range []struct {
		toml string
		ok   bool
	}{
		{"[images]\nlisten_addr = \"127.0.0.1:7948\"\n", true},
		{"[images]\nlisten_addr = \"localhost:7948\"\n", true},
		{"[images]\nlisten_addr = \"[::1]:7948\"\n", true},
		{"[images]\nlisten_addr = \"10.0.0.5:7948\"\n", false},
		{"[images]\nlisten_addr = \"10.0.0.5:7948\"\nallow_remote = true\n", true},
	} {
		_, err := Parse([]byte(tc.toml), "t.toml")
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%t", tc.toml, err, tc.ok)
		}
	}
}

func TestGossipKeyOrInsecure(t *testing.T) {
	const tlsKeys = "tls_cert = \"/c\"\ntls_key = \"/k\"\ntls_ca = \"/ca\"\n"
	for _, tc := range []struct {
		doc      string
		key      string
		insecure bool
	}{
		{"[cluster]\nenabled = true\ngossip_key_file = \"/etc/crf/gossip.key\"\n" + tlsKeys, "/etc/crf/gossip.key", false},
		{"[cluster]\nenabled = true\ninsecure_gossip = true\n" + tlsKeys, "", true},
		{"[cluster]\nenabled = false\n", "", false},
		{"[cluster]\nenabled = false\ninsecure_gossip = true\n", "", true},
		{"[cluster]\ngossip_key_file = \"/g\"\ninsecure_gossip = false\n", "/g", false},
	} {
		c, err := Parse([]byte(tc.doc), "t.toml")
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.doc, err)
			continue
		}
		if c.Cluster.GossipKeyFile != tc.key || c.Cluster.InsecureGossip != tc.insecure {
			t.Errorf("Parse(%q): gossip_key_file %q, insecure_gossip %v; want %q, %v",
				tc.doc, c.Cluster.GossipKeyFile, c.Cluster.InsecureGossip, tc.key, tc.insecure)
		}
	}
}

// hasLine reports whether one line of s starts with prefix and contains part.
func hasLine(s, prefix, part string) bool {
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, part) {
			return true
		}
	}
	return false
}

func TestErrorsComeTogetherSortedByLine(t *testing.T) {
	doc := `[probe]
period = "0s"
timeout = 5

[checkpoint]
retention = 0
intervall = "1s"

[cluster]
enabled = true
max_voters = 2

[node]
data_dir = "rel"
`
	_, err := Parse([]byte(doc), "/etc/crf.toml")
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`/etc/crf.toml:2: probe.period: want a duration greater than 0, got 0s`,
		`/etc/crf.toml:3: probe.timeout: want a duration string such as "10s" or "500ms", got integer 5`,
		`/etc/crf.toml:6: checkpoint.retention: want at least 1, got 0`,
		`/etc/crf.toml:7: checkpoint.intervall: unknown key; [checkpoint] has method, default_interval, timeout, retention, max_concurrent`,
		`/etc/crf.toml:11: cluster.max_voters: want an odd number of at least 1, got 2`,
		`/etc/crf.toml:14: node.data_dir: want an absolute path, got "rel"`,
		"/etc/crf.toml: cluster.gossip_key_file: required when cluster.enabled = true: without a key gossip is neither encrypted nor authenticated, " +
			"and anyone who reaches bind_addr can join the membership; make one with `crfailoverd keygen --out /etc/crfailoverd/tls/gossip.key` " +
			"(the same file on every node, mode 0600) and set this key to its path, or set cluster.insecure_gossip = true to run without one",
		`/etc/crf.toml: cluster.tls_cert: required when cluster.enabled = true: want an absolute path`,
		`/etc/crf.toml: cluster.tls_key: required when cluster.enabled = true: want an absolute path`,
		`/etc/crf.toml: cluster.tls_ca: required when cluster.enabled = true: want an absolute path`,
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestManyUnknownKeysAreCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("[probe]\n")
	for i := range maxUnknown + 5 {
		fmt.Fprintf(&b, "k%d = 1\n", i)
	}
	_, err := Parse([]byte(b.String()), "t.toml")
	lines := strings.Split(fmt.Sprint(err), "\n")
	if len(lines) != maxUnknown+1 || lines[maxUnknown-1] != "t.toml:21: probe.k19: unknown key; [probe] has period, timeout, failure_threshold, initial_delay" ||
		lines[maxUnknown] != "t.toml: and 5 more unknown keys" {
		t.Errorf("got:\n%v", err)
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := Default()
	c.Checkpoint.Retention = 0
	c.Node.LogLevel = slog.Level(2)
	err := c.Validate()
	want := "node.log_level: want one of \"debug\", \"info\", \"warn\", \"error\", got level INFO+2\n" +
		"checkpoint.retention: want at least 1, got 0"
	if err == nil || err.Error() != want {
		t.Errorf("Validate() = %v, want %q", err, want)
	}
}

func TestSyntaxErrorNamesFileAndLine(t *testing.T) {
	_, err := Parse([]byte("[node]\ndata_dir = \"/x\"\n[checkpoint\n"), "/etc/c.toml")
	if err == nil || !strings.HasPrefix(err.Error(), "/etc/c.toml:3: ") {
		t.Errorf("got %v, want an error at /etc/c.toml:3", err)
	}
}

func TestParseErrorReturnsZeroConfig(t *testing.T) {
	c, err := Parse([]byte("[checkpoint]\nretention = 0\n"), "t.toml")
	if err == nil || !reflect.DeepEqual(c, Config{}) {
		t.Errorf("Parse = %+v, %v; want zero Config and an error", c, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/none.toml")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestLoadUsesPathInErrors(t *testing.T) {
	path := t.TempDir() + "/c.toml"
	if err := os.WriteFile(path, []byte("\n[metrics]\nqueue_size = -3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + ":3: metrics.queue_size: want at least 1, got -3"; err == nil || err.Error() != want {
		t.Errorf("Load: %v, want %q", err, want)
	}
}

func TestSocketPath(t *testing.T) {
	for endpoint, want := range map[string]string{
		"unix:///run/x.sock":                     "/run/x.sock",
		"/run/x.sock":                            "/run/x.sock",
		"unix:///run/containerd/containerd.sock": "/run/containerd/containerd.sock",
		"unix:///run//x.sock":                    "/run/x.sock",
		"":                                       "",
	} {
		if got := (Runtime{Endpoint: endpoint}).SocketPath(); got != want {
			t.Errorf("SocketPath(%q) = %q, want %q", endpoint, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"[checkpoint]\nretention = \"x\"\nintervall = 1\n",
		"a.b.c = 1\n[x.y]\nz = [1, {q = 2}]\n[[arr]]\nk = 1\n",
		"checkpoint = { retention = 0, Retention = 1 }\n\"a,b\" = 1\n\"-\" = 2\n",
		"[cluster]\njoin = [\"a\", 1]\nenabled = true\nlease = \"-1s\"\n",
		"node = 1979-05-27T07:32:00Z\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.toml")
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Errorf("Parse accepted a config that Validate rejects: %v", verr)
			}
		}
	})
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"8GiB", 8 << 30, true}, {"512 MiB", 512 << 20, true},
		{"1.5GiB", 3 << 29, true}, {"10MB", 10e6, true}, {"1TB", 1e12, true}, {"7B", 7, true}, {"2KiB", 2048, true},
		{"", 0, false}, {"-1", 0, false}, {"GiB", 0, false}, {"1 PiB", 0, false}, {"9223372036854775807KiB", 0, false}, {"1e30B", 0, false}, {"NaN", 0, false},
	} {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%t", tt.in, got, err, tt.want, tt.ok)
		}
	}
	for _, n := range []int64{0, 100, 1536 << 10, 8 << 30, 3 << 40} {
		if got, err := ParseSize(FormatSize(n)); err != nil || got != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), got, err)
		}
	}
}
