package testbed

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func requireE2E(t *testing.T) Config { return RequireE2E(t) }

func upBed(t *testing.T, c Config, n int) *Bed { return UpT(t, c, n) }

type testWriter = TestWriter

// TestE2ERestore checkpoints the counter on node n1 through the kubelet
// emulator, restores the archive on node n2 through CRI, checks that the
// counter went on from its checkpointed value, and power-cuts n1.
func TestE2ERestore(t *testing.T) {
	c := requireE2E(t)
	b := upBed(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	r, err := b.RunRestoreScenario(ctx, "n1", "n2", 20, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := b.Node("n1")
	if !strings.HasPrefix(r.Archive, filepath.Join(n1.KubeletDir, "checkpoints", "checkpoint-counter_default-counter-")) {
		t.Errorf("archive %s is not where kubelet puts it", r.Archive)
	}
	members := archiveMembers(t, r.Shipped)
	for _, want := range []string{"config.dump", "spec.dump", "stats-dump", "checkpoint/"} {
		if !members[want] {
			t.Errorf("archive lacks %s (has %v)", want, members)
		}
	}
	if r.CounterAtCheckpoint <= 20 {
		t.Errorf("checkpointed at counter %d, want > 20", r.CounterAtCheckpoint)
	}
	if r.CounterAfterRestore < r.CounterAtCheckpoint {
		t.Errorf("restored counter %d is below the counter %d read before the checkpoint: state was lost", r.CounterAfterRestore, r.CounterAtCheckpoint)
	}
	if r.CounterLater <= r.CounterAfterRestore {
		t.Errorf("restored counter does not rise: %d, then %d after %s", r.CounterAfterRestore, r.CounterLater, RiseWait)
	}
	if _, err := b.Counter(ctx, "n1"); err == nil {
		t.Error("the app on n1 still answers after the power cut")
	}
	if err := PingCRI(ctx, n1.Socket); err == nil {
		t.Error("containerd of n1 still answers after the power cut")
	}
	if v, err := b.Counter(ctx, "n2"); err != nil || v < r.CounterLater {
		t.Errorf("n2 after n1's power cut: counter %d, %v", v, err)
	}
	if CompareVersions(r.CRIU, minVersions.CRIU) < 0 {
		t.Errorf("criu %s", r.CRIU)
	}
	if !t.Failed() {
		fmt.Printf("E2E restore: runtime=%s %s\n", b.Flavor(), r)
	}
}

// TestE2EBedOperations covers the rest of what tests need from the bed on
// the real runtime: the emulator's TLS and error answers, cutting and
// healing a node, restarting a killed node, and a second Up over the
// leftovers of a bed that was never torn down.
func TestE2EBedOperations(t *testing.T) {
	c := requireE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// A bed whose program "died": Up, then Up again without Down.
	unlock, err := LockBed(c, true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Up(ctx, c, 1, testWriter{t})
	left := Leftovers(c)
	unlock()
	if err != nil {
		t.Fatalf("first bed: %v", err)
	}
	if len(left) == 0 {
		t.Fatal("a running bed shows no processes, namespaces or links: Leftovers cannot see them")
	}
	b := upBed(t, c, 2)
	if _, err := b.RunTestApp(ctx, "n1", PodSpec{Name: "counter"}); err != nil {
		t.Fatal(err)
	}
	n1, _ := b.Node("n1")

	t.Run("kubelet emulator", func(t *testing.T) {
		addr := strings.TrimPrefix(n1.KubeletURL(), "https://")
		pool, err := loadPool(b.PKI.CACert)
		if err != nil {
			t.Fatal(err)
		}
		// No client certificate: 401.
		code := postStatus(t, &tls.Config{RootCAs: pool}, addr, "/checkpoint/default/counter/counter")
		if code != 401 {
			t.Errorf("no client certificate: %d, want 401", code)
		}
		// A certificate of another CA: the handshake fails.
		other, _ := NewCA("stranger")
		cp, kp, _ := other.Issue("stranger", true, false, nil, nil)
		cert, _ := tls.X509KeyPair(cp, kp)
		d := tls.Dialer{Config: &tls.Config{RootCAs: pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}}
		if conn, err := d.DialContext(ctx, "tcp", addr); err == nil {
			// TLS 1.3 reports a refused client certificate on first read.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, werr := conn.Write([]byte("POST /checkpoint/default/counter/counter HTTP/1.1\r\nHost: x\r\n\r\n"))
			_, rerr := conn.Read(make([]byte, 1))
			conn.Close()
			if werr == nil && rerr == nil {
				t.Error("certificate of another CA: the TLS connection was accepted")
			}
		}
		// Unknown container: 404.
		tlsCfg, _ := b.PKI.ClientTLS()
		if code := postStatus(t, tlsCfg, addr, "/checkpoint/default/counter/nothere"); code != 404 {
			t.Errorf("unknown container: %d, want 404", code)
		}
	})

	t.Run("cut and heal", func(t *testing.T) {
		if err := b.CutNode(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Counter(ctx, "n1"); err == nil {
			t.Fatal("app answers while its node is cut off")
		}
		if err := b.HealNode(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		if err := b.WaitApp(ctx, "n1", 10*time.Second); err != nil {
			t.Fatalf("after heal: %v", err)
		}
	})

	t.Run("kill and start", func(t *testing.T) {
		if err := b.KillNode(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		if err := b.StartNode(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		// The node boots empty of running containers, as after a power cut.
		if _, err := b.Counter(ctx, "n1"); err == nil {
			t.Fatal("the app survived the power cut")
		}
		if _, err := b.RunTestApp(ctx, "n1", PodSpec{Name: "counter2"}); err != nil {
			t.Fatalf("run a pod on the restarted node: %v", err)
		}
	})
}

// TestE2EBadEnvironments checks that the bed fails fast, saying what to
// do, where this machine cannot run it.
func TestE2EBadEnvironments(t *testing.T) {
	c := requireE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("registry port taken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cc := c
		cc.RegistryPort = ln.Addr().(*net.TCPAddr).Port
		unlock, err := LockBed(c, true)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Up(ctx, cc, 1, io.Discard)
		unlock()
		if err == nil || !strings.Contains(err.Error(), "is taken") || !strings.Contains(err.Error(), EnvRegistryPort) {
			t.Fatalf("want an error naming the taken port and %s, got %v", EnvRegistryPort, err)
		}
	})

	t.Run("debootstrap fails", func(t *testing.T) {
		cc := c
		cc.CacheDir = t.TempDir()
		cc.Suite = "no-such-suite"
		_, _, err := EnsureRootfs(ctx, cc, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "debootstrap no-such-suite") {
			t.Fatalf("want an error naming the failed debootstrap, got %v", err)
		}
		if _, err := os.Stat(cc.RootfsDir()); !os.IsNotExist(err) {
			t.Fatalf("a failed debootstrap left a root file system that looks usable: %v", err)
		}
	})

	t.Run("not root", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", exe, "-test.run=^TestHelperUpAsCaller$")
		cmd.Env = append(os.Environ(), "CRF_BED_UP_AS_CALLER=1")
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "must run as root") {
			t.Fatalf("Up as an unprivileged user: want a 'must run as root' error, got:\n%s", out)
		}
	})
}

// TestHelperUpAsCaller is run by TestE2EBadEnvironments as another user.
func TestHelperUpAsCaller(t *testing.T) {
	if os.Getenv("CRF_BED_UP_AS_CALLER") == "" {
		t.Skip("run by TestE2EBadEnvironments")
	}
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Up(context.Background(), c, 1, io.Discard)
	t.Log(err)
	fmt.Println(err)
}
