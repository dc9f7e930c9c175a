package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/secfile"
)

func TestMain(m *testing.M) {
	HelperMain()
	os.Exit(m.Run())
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"4.2.1", "4.2.0", 1}, {"4.1.1", "4.2.0", -1}, {"2.1", "2.1.0", 0},
		{"1.10.0", "1.9.9", 1}, {"2.3.0", "2.3.0", 0}, {"10", "9.9", 1},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestCheckVersionsNamesWhatIsTooOld(t *testing.T) {
	err := checkVersions(Versions{CRIU: "4.1.1", Runc: "1.3.6", Containerd: "2.1.9"}, "/x")
	if err == nil || !strings.Contains(err.Error(), "criu 4.1.1") || !strings.Contains(err.Error(), EnvSuite) {
		t.Fatalf("want an error naming criu 4.1.1 and what to do, got %v", err)
	}
	if err := checkVersions(Versions{CRIU: "4.2.1", Runc: "1.3.6", Containerd: "2.1.9"}, "/x"); err != nil {
		t.Fatalf("verified versions refused: %v", err)
	}
}

func TestContainerdConfigTurnsRestoreOnFrom23(t *testing.T) {
	b := &Bed{cfg: Config{RegistryPort: 5000, Dir: "/bed", Subnet: netip.MustParsePrefix("10.1.2.0/24")}}
	n := b.newNode(1)
	for v, want := range map[string]bool{"2.1.9": false, "2.3.0": true, "2.4.1": true} {
		b.state.Versions.Containerd = v
		got := strings.Contains(b.containerdConfig(n), "enable_experimental_restore_via_create = true")
		if got != want {
			t.Errorf("containerd %s: restore option present = %t, want %t", v, got, want)
		}
	}
	cfg := b.containerdConfig(n)
	for _, s := range []string{`address = "/bed/nodes/n1/containerd.sock"`, `sandbox = "localhost:5000/pause:3.10"`, "restrict_oom_score_adj = true"} {
		if !strings.Contains(cfg, s) {
			t.Errorf("containerd config lacks %q:\n%s", s, cfg)
		}
	}
}

func TestNodeAddresses(t *testing.T) {
	t.Setenv(EnvSubnet, "10.9.8.0/24")
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.HostAddr().String() != "10.9.8.1" || c.NodeAddr(3).String() != "10.9.8.13" {
		t.Fatalf("host %s node3 %s", c.HostAddr(), c.NodeAddr(3))
	}
	for _, bad := range []string{"10.9.8.0/16", "fd00::/64", "nonsense"} {
		t.Setenv(EnvSubnet, bad)
		if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), EnvSubnet) {
			t.Errorf("subnet %q: want an error naming %s, got %v", bad, EnvSubnet, err)
		}
	}
}

// fakeRuntime answers the two CRI calls the emulator makes.
type fakeRuntime struct {
	runtimeapi.RuntimeServiceClient
	containers []*runtimeapi.Container
	err        error
	got        *runtimeapi.CheckpointContainerRequest
}

func (f *fakeRuntime) ListContainers(_ context.Context, r *runtimeapi.ListContainersRequest, _ ...grpc.CallOption) (*runtimeapi.ListContainersResponse, error) {
	var out []*runtimeapi.Container
	for _, c := range f.containers {
		match := c.State == r.Filter.State.State
		for k, v := range r.Filter.LabelSelector {
			match = match && c.Labels[k] == v
		}
		if match {
			out = append(out, c)
		}
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

func (f *fakeRuntime) CheckpointContainer(_ context.Context, r *runtimeapi.CheckpointContainerRequest, _ ...grpc.CallOption) (*runtimeapi.CheckpointContainerResponse, error) {
	f.got = r
	return &runtimeapi.CheckpointContainerResponse{}, f.err
}

func ctr(id string, created int64, state runtimeapi.ContainerState) *runtimeapi.Container {
	return &runtimeapi.Container{Id: id, CreatedAt: created, State: state, Labels: map[string]string{
		LabelPodNamespace: "ns", LabelPodName: "web", LabelContainerName: "app",
	}}
}

// emulatorServer serves e over TLS like ServeEmulator does and returns a
// client with the given client certificate (nil: none).
func emulatorServer(t *testing.T, e *Emulator, ca *CA, clientCert *tls.Certificate) (*httptest.Server, *http.Client) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue("kubelet", false, true, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv := httptest.NewUnstartedServer(e.Handler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := &tls.Config{RootCAs: pool}
	if clientCert != nil {
		// Present the certificate even when the server names other CAs
		// (Go's default would then send none), as OpenSSL clients do.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return clientCert, nil }
	}
	return srv, &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func clientCertOf(t *testing.T, ca *CA) *tls.Certificate {
	t.Helper()
	c, k, err := ca.Issue("client", true, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

func TestEmulatorAnswersAsKubelet(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	now := time.Date(2026, 11, 24, 10, 20, 30, 0, time.UTC)
	fake := &fakeRuntime{containers: []*runtimeapi.Container{
		ctr("old", 1, runtimeapi.ContainerState_CONTAINER_RUNNING),
		ctr("new", 2, runtimeapi.ContainerState_CONTAINER_RUNNING),
		ctr("exited", 3, runtimeapi.ContainerState_CONTAINER_EXITED),
	}}
	e := &Emulator{Runtime: fake, KubeletDir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now }}
	srv, client := emulatorServer(t, e, ca, clientCertOf(t, ca))
	post := func(c *http.Client, path string) (int, string) {
		t.Helper()
		resp, err := c.Post(srv.URL+path, "", nil)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := post(client, "/checkpoint/ns/web/app?timeout=7")
	if code != 200 {
		t.Fatalf("checkpoint: %d %s", code, body)
	}
	want := filepath.Join(dir, "checkpoints", "checkpoint-web_ns-app-2026-11-24T10:20:30Z.tar")
	var answer struct{ Items []string }
	if err := json.Unmarshal([]byte(body), &answer); err != nil || len(answer.Items) != 1 || answer.Items[0] != want {
		t.Fatalf("answer %s, want items [%s]", body, want)
	}
	if fake.got.ContainerId != "new" || fake.got.Location != want || fake.got.Timeout != 7 {
		t.Fatalf("CRI request %+v: want the newest running container, location %s, timeout 7", fake.got, want)
	}
	if st, err := os.Stat(filepath.Join(dir, "checkpoints")); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("checkpoints directory: %v %v", st, err)
	}

	if code, body := post(client, "/checkpoint/ns/web/other"); code != 404 || !strings.Contains(body, "ns/web/other does not exist") {
		t.Errorf("unknown container: %d %q, want 404", code, body)
	}
	if code, _ := post(client, "/checkpoint/ns/web/app?timeout=soon"); code != 400 {
		t.Errorf("bad timeout: %d, want 400", code)
	}
	fake.err = errors.New("criu failed: type DUMP errno 0")
	if code, body := post(client, "/checkpoint/ns/web/app"); code != 500 || !strings.Contains(body, "criu failed: type DUMP") {
		t.Errorf("runtime error: %d %q, want 500 with the runtime's message", code, body)
	}
	resp, err := client.Get(srv.URL + "/checkpoint/ns/web/app")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}

	_, anon := emulatorServer(t, e, ca, nil)
	srv2, _ := emulatorServer(t, e, ca, nil)
	resp, err = anon.Post(srv2.URL+"/checkpoint/ns/web/app", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no client certificate: %d, want 401", resp.StatusCode)
	}

	other, err := NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	srv3, wrong := emulatorServer(t, e, ca, clientCertOf(t, other))
	if resp, err := wrong.Post(srv3.URL+"/checkpoint/ns/web/app", "", nil); err == nil {
		resp.Body.Close()
		t.Fatalf("certificate of another CA: got %s, want a TLS handshake failure", resp.Status)
	}
}

func TestServeEmulatorNamesATakenPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	p := pkiAt(dir)
	if err := writePKI(p, map[string]net.IP{"n1": net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	e := &Emulator{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	err = ServeEmulator(context.Background(), e, ln.Addr().String(), p.ServerCert("n1"), p.ServerKey("n1"), p.CACert)
	if err == nil || !regexp.MustCompile(`listen on 127\.0\.0\.1:\d+`).MatchString(err.Error()) {
		t.Fatalf("want an error naming the taken address, got %v", err)
	}
}

// TestWritePKIKeysArePrivate: the bed's keys pass crfailoverd's check of
// key files (secfile.CheckPrivate), also over files an earlier bed left
// with a looser mode.
func TestWritePKIKeysArePrivate(t *testing.T) {
	dir := t.TempDir()
	p := pkiAt(dir)
	nodes := map[string]net.IP{"n1": net.ParseIP("10.0.0.1"), "n2": net.ParseIP("10.0.0.2")}
	if err := os.WriteFile(p.GossipKey(), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p.GossipKey(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writePKI(p, nodes); err != nil {
		t.Fatal(err)
	}
	keys := []string{p.CAKey, p.ClientKey, p.GossipKey()}
	for n := range nodes {
		keys = append(keys, p.PeerKey(n), p.ServerKey(n))
	}
	for _, k := range keys {
		if err := secfile.CheckPrivate(k); err != nil {
			t.Error(err)
		}
	}
}

// TestClusterConfigIsValid: the configuration StartCluster writes passes
// crfailoverd's validation, with the gossip key set.
func TestClusterConfigIsValid(t *testing.T) {
	b := &Bed{cfg: Config{RegistryPort: 5000, Dir: "/bed", Subnet: netip.MustParsePrefix("10.1.2.0/24")}}
	b.PKI = pkiAt("/bed/pki")
	for i := 1; i <= 3; i++ {
		n := b.newNode(i)
		b.state.Nodes = append(b.state.Nodes, &n)
	}
	for _, n := range b.Nodes() {
		cfg, err := b.DaemonConfig(n.Name, "cri", "")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := b.ClusterConfig(n.Name, 3, "replication_factor = 2")
		if err != nil {
			t.Fatal(err)
		}
		c, err := config.Parse([]byte(cfg+cl), n.DaemonConfigPath())
		if err != nil {
			t.Fatalf("node %s: %v\n%s", n.Name, err, cfg+cl)
		}
		if !c.Cluster.Enabled || c.Cluster.GossipKeyFile != b.PKI.GossipKey() || c.Cluster.InsecureGossip {
			t.Errorf("node %s: cluster enabled %v, gossip_key_file %q, insecure_gossip %v; want true, %q, false",
				n.Name, c.Cluster.Enabled, c.Cluster.GossipKeyFile, c.Cluster.InsecureGossip, b.PKI.GossipKey())
		}
	}
}
