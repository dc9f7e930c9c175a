package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/peer"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/poll"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// allCaps is what a privileged container gets.
var allCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
	"CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
	"CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// privilegedArchive rewrites a real checkpoint archive so that its
// spec.dump asks for every capability, no masked or read-only paths, and
// the host's root file system bind-mounted read-write at /host: what a
// compromised owner would plant for a peer to restore as root. Every
// other member is copied unchanged; the result is a plain tar.
func privilegedArchive(src []byte) ([]byte, error) {
	var r io.Reader = bytes.NewReader(src)
	if len(src) > 2 && src[0] == 0x1f && src[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	tr := tar.NewReader(r)
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	found := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("read the archive: %w", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		if strings.TrimPrefix(h.Name, "./") == "spec.dump" {
			var s specs.Spec
			if err := json.Unmarshal(data, &s); err != nil {
				return nil, fmt.Errorf("spec.dump: %w", err)
			}
			if s.Process == nil {
				s.Process = &specs.Process{}
			}
			s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: allCaps, Effective: allCaps, Permitted: allCaps}
			if s.Linux != nil {
				s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, s.Linux.Seccomp = nil, nil, nil
			}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
			if data, err = json.Marshal(&s); err != nil {
				return nil, err
			}
			found = true
		}
		h.Size = int64(len(data))
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, errors.New("the archive has no spec.dump")
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// nodeTLS is node's own cluster certificate: what an attacker who owns
// that node holds.
func nodeTLS(t *testing.T, b *testbed.Bed, node string) *peer.TLS {
	t.Helper()
	tl, err := peer.LoadTLS(b.PKI.PeerCert(node), b.PKI.PeerKey(node), b.PKI.CACert)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// pullAs asks node's image endpoint for path, in the node's network
// namespace, as root with the endpoint's credentials (auth true) or as
// the unprivileged user nobody without them, and returns the HTTP status.
func pullAs(ctx context.Context, n testbed.Node, path string, auth bool) (int, error) {
	url := "http://127.0.0.1:7948" + path
	args := []string{"--net=" + n.Netns}
	if auth {
		secret, err := os.ReadFile(filepath.Join(n.DaemonDir(), "images", "secret"))
		if err != nil {
			return 0, fmt.Errorf("read the endpoint's secret: %w", err)
		}
		args = append(args, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", "crfailoverd:"+strings.TrimSpace(string(secret)), url)
	} else {
		args = append(args, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)
	}
	out, err := exec.CommandContext(ctx, "nsenter", args...).Output()
	if err != nil {
		return 0, fmt.Errorf("curl %s: %w (%s)", url, err, out)
	}
	var code int
	if _, err := fmt.Sscanf(string(out), "%d", &code); err != nil {
		return 0, fmt.Errorf("curl %s: status %q", url, out)
	}
	return code, nil
}

// storeFiles lists the files in node's store directory of the counter.
func storeFiles(t *testing.T, n testbed.Node) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.DaemonDir(), "checkpoints", "default_counter_counter"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestE2EHostileArchive: an attacker holding the owner's own node
// certificate (a compromised owner) plants checkpoints for its peers.
// (a) A correctly checksummed checkpoint, recorded in Raft and replicated,
// whose spec asks for privileged mode and the host's root file system is
// never restored: after the owner's power cut its holder refuses it and
// the counter comes back, with its state, from a good checkpoint.
// (b) A push whose content does not match its header's sha256 leaves
// nothing in the holder's store or catalog. (c) An unprivileged local user
// cannot pull a checkpoint image from a node's image endpoint (401), and
// the endpoint's credentials (kubelet's, so any pod's) pull nothing while
// no restore is handed to kubelet (404).
func TestE2EHostileArchive(t *testing.T) {
	// The owner's daemon is stopped below for an attacker who holds the
	// node, not a frozen daemon: without the fence guard, which would
	// kill the owner's copy 2.5 s into the stop (TestE2EDaemonPause
	// tests that), the copy serves until the power cut.
	cb := startCluster(t, 3, "fence_guard = false")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	leader := cb.leader(ctx, "n1")
	owner := "n1"
	if leader == owner {
		owner = "n2"
	}
	cb.runCounter(ctx, owner)
	observer := leader
	// On kubelet nodes crfailoverd takes the user's static pod over after
	// its first checkpoint (a restore handed to kubelet): the attack below
	// starts once the taken-over copy serves.
	poll.Until(t, time.Minute, "the owner serves the taken-over copy", func() (bool, string) {
		if !strings.Contains(cb.b.Flavor(), "kubelet") {
			return true, ""
		}
		pods, err := runningPods(ctx, mustNode(t, cb.b, owner))
		if err != nil || !cb.b.TakenOver(owner) {
			return false, fmt.Sprintf("pods %v, %v", pods, err)
		}
		a, err := getRestore(ctx, cb.b, owner)
		// crfailoverd's static pod is POD-rSEQ (the user's is gone).
		return err == nil && len(pods) == 1 && strings.HasPrefix(pods[0], "counter-r"), fmt.Sprintf("pods %v, counter %+v %v", pods, a, err)
	})

	// (c) The image endpoint asks for credentials.
	on := mustNode(t, cb.b, owner)
	manifest := "/v2/crfailoverd/default/counter/counter/manifests/latest"
	unauth, err := pullAs(ctx, on, manifest, false)
	if err != nil {
		t.Fatal(err)
	}
	if unauth != 401 {
		t.Errorf("an unprivileged local user's pull of %s got %d, want 401", manifest, unauth)
	}

	// A holder of the newest checkpoint, as the leader records it.
	var before api.ClusterWorkload
	holder := ""
	poll.Until(t, 30*time.Second, "the leader records a replica of the counter's newest checkpoint", func() (bool, string) {
		if before, err = cb.workload(ctx, observer); err != nil || before.Newest == nil {
			return false, fmt.Sprintf("record %+v, %v", before, err)
		}
		holder = ""
		for _, h := range before.Newest.Holders {
			if h != owner {
				holder = h
			}
		}
		return holder != "", fmt.Sprintf("newest %+v", before.Newest)
	})
	counterStore := store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}
	// The credentials are kubelet's, which every pod's pull on the node
	// uses: with them, a checkpoint is served only while its restore is
	// handed to kubelet there (the failover below pulls one that is). The
	// holder has the counter's replicas and no restore pending.
	if code, err := pullAs(ctx, mustNode(t, cb.b, holder), manifest, true); err != nil || code != 404 {
		t.Errorf("a pull of %s on %s with the endpoint's credentials and no restore pending got %d, %v; want 404", manifest, holder, code, err)
	}
	as := nodeTLS(t, cb.b, owner)
	dial := func(node string) *peer.Client { return dialAs(t, cb.b, node, as) }
	// The plaintext of the newest checkpoint, fetched as the owner.
	tmp, err := store.Open(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	good, err := dial(holder).Fetch(ctx, tmp, counterStore, before.Newest.Seq, peer.Expect{SHA256: before.Newest.SHA256, Size: before.Newest.Size})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := os.ReadFile(good.Path)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := privilegedArchive(plain)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(evil)
	evilSum := hex.EncodeToString(sum[:])
	dir := t.TempDir()
	evilPath := filepath.Join(dir, "evil.tar")
	if err := os.WriteFile(evilPath, evil, 0o600); err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(evil)
	tampered[len(tampered)/2] ^= 0xff
	tamperedPath := filepath.Join(dir, "tampered.tar")
	if err := os.WriteFile(tamperedPath, tampered, 0o600); err != nil {
		t.Fatal(err)
	}

	// The owner's daemon stops (the attacker has the node): it takes no
	// checkpoint that would replace the planted one.
	if err := syscall.Kill(cb.pids[owner], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	enc := func(cmd state.Command) []byte { return encode(t, cmd) }
	seq := before.Newest.Seq + 1
	now := time.Now()
	if err := dial(leader).Apply(ctx, enc(&state.CommitCheckpoint{At: now, ID: counterWL, Node: owner, Epoch: before.Epoch,
		Checkpoint: state.Checkpoint{Seq: seq, SHA256: evilSum, Size: int64(len(evil)), Created: now}})); err != nil {
		t.Fatalf("commit the planted checkpoint as %s: %v", owner, err)
	}
	entry := store.Entry{Workload: counterStore, Seq: seq, SHA256: evilSum, Size: int64(len(evil)), Created: now, Method: "cri", Source: owner}

	// (b) Content that does not match the header's sha256.
	hn := mustNode(t, cb.b, holder)
	filesBefore := storeFiles(t, hn)
	bad := entry
	bad.Path = tamperedPath
	perr := dial(holder).Push(ctx, bad, nil)
	cps, err := cb.admin(holder).Checkpoints(ctx, counterWL)
	if err != nil {
		t.Fatal(err)
	}
	inCatalog := false
	for _, c := range cps {
		inCatalog = inCatalog || c.Seq == seq
	}
	filesAfter := storeFiles(t, hn)
	mismatchRefused := perr != nil && strings.Contains(perr.Error(), "sha256") && !inCatalog && slices.Equal(filesBefore, filesAfter)
	if !mismatchRefused {
		t.Errorf("push of content not matching its sha256: err %v; in %s's catalog %t; store files %v -> %v", perr, holder, inCatalog, filesBefore, filesAfter)
	} else {
		t.Logf("refused: %v", perr)
	}

	// (a) The planted checkpoint, correctly checksummed, stored by the
	// holder and recorded as held.
	good2 := entry
	good2.Path = evilPath
	if err := dial(holder).Push(ctx, good2, nil); err != nil {
		t.Fatalf("push of the planted checkpoint: %v", err)
	}
	if err := dial(leader).Apply(ctx, enc(&state.AddHolder{At: now, ID: counterWL, Seq: seq, SHA256: evilSum, Size: int64(len(evil)), Node: holder})); err != nil {
		t.Fatalf("record %s as a holder of the planted checkpoint: %v", holder, err)
	}
	poll.Until(t, 10*time.Second, "the leader records the planted checkpoint as the newest, held by "+holder, func() (bool, string) {
		w, err := cb.workload(ctx, observer)
		if err != nil || w.Newest == nil {
			return false, fmt.Sprintf("%+v %v", w, err)
		}
		return w.Newest.Seq == seq && slices.Contains(w.Newest.Holders, holder), fmt.Sprintf("newest %+v", w.Newest)
	})
	r, err := cb.b.PowerCutFailover(ctx, owner, observer, testbed.TestWriter{T: t})
	if err != nil {
		t.Fatal(err)
	}
	ans, err := getRestore(ctx, cb.b, r.ServedOn)
	if err != nil {
		t.Fatal(err)
	}
	// The restored copy answers before its node reports the restore: the
	// record says "restoring" until then.
	poll.Until(t, 30*time.Second, "the cluster records the counter running on "+r.ServedOn, func() (bool, string) {
		w, err := cb.workload(ctx, r.ServedOn)
		if err != nil {
			return false, err.Error()
		}
		r.Workload = w
		return w.Status == "running" && w.Owner == r.ServedOn, fmt.Sprintf("record %+v", w)
	})
	// The planted checkpoint: marked bad where it was refused, and never
	// the one that runs.
	privilegedRefused := false
	for _, n := range cb.b.Nodes() {
		if n.Name == owner {
			continue
		}
		cps, err := cb.admin(n.Name).Checkpoints(ctx, counterWL)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cps {
			if c.Seq == seq && c.Bad {
				privilegedRefused = true
				t.Logf("%s marked the planted checkpoint #%d bad", n.Name, seq)
			}
		}
	}
	hostMount, err := hasMount(ctx, mustNode(t, cb.b, r.ServedOn), "/host")
	if err != nil {
		t.Fatal(err)
	}
	if hostMount {
		privilegedRefused = false
		t.Errorf("the copy on %s has the host's root file system at /host", r.ServedOn)
	}
	if !privilegedRefused {
		t.Errorf("no node marked the planted checkpoint #%d bad", seq)
	}
	restoredOK := r.ServedOn != owner && ans.Restore && r.CounterAfter > 0 && r.Workload.Status == "running"
	if !restoredOK {
		t.Errorf("after the power cut: served on %s, restored %t, counter %d, record %+v", r.ServedOn, ans.Restore, r.CounterAfter, r.Workload)
	}
	t.Logf("failover with a planted checkpoint: downtime %v, state lost %d ticks", r.Downtime.Round(time.Millisecond), r.Lost())
	if !t.Failed() {
		fmt.Printf("E2E hostile-archive: privileged_refused=%t mismatch_refused=%t unauthenticated_pull=%d restored_ok=%t runtime=%s downtime_ms=%d\n",
			privilegedRefused, mismatchRefused, unauth, restoredOK, cb.b.Flavor(), r.Downtime.Milliseconds())
	}
}

// hasMount reports whether a live counter container on n has a mount at
// dest, through the node's CRI.
func hasMount(ctx context.Context, n testbed.Node, dest string) (bool, error) {
	cri, err := testbed.DialCRI(n.Socket)
	if err != nil {
		return false, err
	}
	defer cri.Close()
	resp, err := cri.Runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		LabelSelector: map[string]string{testbed.LabelContainerName: "counter"}}})
	if err != nil {
		return false, err
	}
	for _, c := range resp.Containers {
		if c.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		st, err := cri.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.Id, Verbose: true})
		if err != nil {
			return false, err
		}
		for _, m := range st.GetStatus().GetMounts() {
			if m.ContainerPath == dest {
				return true, nil
			}
		}
		// The verbose info carries the runtime spec.
		for _, v := range st.GetInfo() {
			sc := bufio.NewScanner(strings.NewReader(v))
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"destination":"`+dest+`"`) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}
