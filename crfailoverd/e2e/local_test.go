package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

// TestE2ELocalRestore runs crfailoverd on one node with the counter app
// annotated for a checkpoint every second: through the kubelet emulator
// first, then (after a SIGHUP reload) through the CRI; inspects an archive;
// kills the app with GET /kill and checks that the daemon restores it from
// its newest checkpoint with the counter going on.
func TestE2ELocalRestore(t *testing.T) {
	c := testbed.RequireE2E(t)
	bin := daemonBinary(t, c)
	b := testbed.UpT(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	const wl = "default/counter/counter"

	if err := b.RunCounter(ctx, "n1", counterAnnotations); err != nil {
		t.Fatal(err)
	}
	cfg, err := b.DaemonConfig("n1", "kubelet", "")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := b.StartDaemon(ctx, "n1", bin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl := admin.NewClient(n1.DaemonSocket())

	// Method kubelet: at least 5 checkpoints, about a second apart.
	var cs []api.CheckpointInfo
	waitUntil(t, 30*time.Second, "5 kubelet checkpoints", func() (bool, error) {
		st, err := cl.Status(ctx)
		if err != nil || len(st.Workloads) != 1 {
			return false, err
		}
		return st.Workloads[0].Checkpoints >= 5, nil
	})
	if cs, err = cl.Checkpoints(ctx, wl); err != nil {
		t.Fatal(err)
	}
	for _, x := range cs {
		if x.Method != "kubelet" {
			t.Errorf("checkpoint #%d taken with %q, want kubelet", x.Seq, x.Method)
		}
	}
	if len(cs) != 3 {
		t.Errorf("store holds %d checkpoints, want the retention of 3", len(cs))
	}
	interval := meanInterval(cs)
	if interval < 800*time.Millisecond || interval > 1600*time.Millisecond {
		t.Errorf("checkpoints %s apart on average, want about 1 s (start to start)", interval)
	}

	// Method cri, by reloading the configuration.
	cfg = strings.Replace(cfg, `method = "kubelet"`, `method = "cri"`, 1)
	if err := os.WriteFile(n1.DaemonConfigPath(), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := testbed.Signal(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "3 CRI checkpoints after the reload", func() (bool, error) {
		cs, err = cl.Checkpoints(ctx, wl)
		if err != nil {
			return false, err
		}
		n := 0
		for _, x := range cs {
			if x.Method == "cri" {
				n++
			}
		}
		return n == 3, nil
	})

	// inspect shows CRIU's statistics.
	out, err := exec.CommandContext(ctx, bin, "inspect", "--config", n1.DaemonConfigPath(), cs[0].Path).CombinedOutput()
	if err != nil {
		t.Fatalf("crfailoverd inspect: %v\n%s", err, out)
	}
	for _, want := range []string{"CRIU dump statistics", "counter"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	// The archive is sealed on disk; the bed's data key opens it.
	info, err := readSealed(b, cs[0].Path)
	if err != nil || info.Stats == nil || info.Stats.PagesWritten == 0 || info.Stats.FrozenTime <= 0 {
		t.Fatalf("archive %s: stats %+v, %v", cs[0].Path, info, err)
	}

	// Kill the app; the daemon restores it from the newest checkpoint. (On
	// kubelet nodes its take-over of the static pod was a restore already.)
	st0, err := cl.Status(ctx)
	if err != nil || len(st0.Workloads) != 1 {
		t.Fatalf("status before the kill: %+v, %v", st0, err)
	}
	smp := startSampler(b, "n1")
	time.Sleep(1500 * time.Millisecond)
	killedAt := time.Now()
	resp, err := http.Get(n1.AppURL() + "/kill")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var st api.Status
	waitUntil(t, 60*time.Second, "the daemon to restore the app", func() (bool, error) {
		st, err = cl.Status(ctx)
		if err != nil || len(st.Workloads) != 1 {
			return false, err
		}
		w := st.Workloads[0]
		return w.Restores == st0.Workloads[0].Restores+1 && w.LastRestore != nil && w.LastRestore.OK, nil
	})
	if err := b.WaitApp(ctx, "n1", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	after, err := b.Counter(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	samples := smp.halt()
	lr := st.Workloads[0].LastRestore
	cs, err = cl.Checkpoints(ctx, wl)
	if err != nil {
		t.Fatal(err)
	}
	var used *api.CheckpointInfo
	for i := range cs {
		if cs[i].Seq == lr.Seq {
			used = &cs[i]
		}
	}
	if used == nil {
		t.Fatalf("restored from #%d, which the store no longer lists (%v)", lr.Seq, cs)
	}
	atCkpt, ok := before(samples, used.Created)
	if !ok {
		t.Fatalf("no counter reading before checkpoint #%d (taken %s)", used.Seq, used.Created)
	}
	atKill, _ := before(samples, killedAt)
	if after < atCkpt.value {
		t.Errorf("restored counter %d is below %d, read before checkpoint #%d started: state was lost", after, atCkpt.value, used.Seq)
	}
	if after > atKill.value+200 {
		t.Errorf("restored counter %d is far above %d, the value at the kill", after, atKill.value)
	}
	if used.Created.After(killedAt) {
		t.Errorf("restored from checkpoint #%d taken after the kill", used.Seq)
	}
	total := st.Workloads[0].Checkpoints

	// An invalid configuration on SIGHUP is refused; the daemon goes on.
	if err := os.WriteFile(n1.DaemonConfigPath(), []byte(cfg+"\n[checkpoint]\nretention = \"many\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := testbed.Signal(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the daemon to refuse the invalid configuration", func() (bool, error) {
		b, err := os.ReadFile(n1.DaemonLog())
		return bytes.Contains(b, []byte("configuration reload refused")), err
	})
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("after an invalid reload the daemon no longer answers: %v", err)
	}

	// SIGTERM stops the daemon within 10 s.
	stopAt := time.Now()
	if err := testbed.Signal(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 12*time.Second, "crfailoverd to stop on SIGTERM", func() (bool, error) {
		return syscall.Kill(pid, 0) != nil, nil
	})
	t.Logf("stopped %s after SIGTERM", time.Since(stopAt).Round(time.Millisecond))

	if !t.Failed() {
		fmt.Printf("E2E local-restore: runtime=%s interval_ms=%d checkpoints=%d restore_ms=%d counter_at_checkpoint=%d counter_after_restore=%d\n",
			b.Flavor(), interval.Milliseconds(), total, lr.Duration.Milliseconds(), atCkpt.value, after)
	}
}

func meanInterval(cs []api.CheckpointInfo) time.Duration {
	if len(cs) < 2 {
		return 0
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Seq < cs[j].Seq })
	defer sort.Slice(cs, func(i, j int) bool { return cs[i].Seq > cs[j].Seq })
	return cs[len(cs)-1].Created.Sub(cs[0].Created) / time.Duration(len(cs)-1)
}

// readSealed reads the archive at path, which must be sealed with the
// bed's data key.
func readSealed(b *testbed.Bed, path string) (*archive.Info, error) {
	key, err := seal.Load(b.PKI.DataKey())
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	prefix := make([]byte, seal.HeaderLen)
	if _, err := io.ReadFull(f, prefix); err != nil || !seal.Encrypted(prefix) {
		return nil, fmt.Errorf("%s is not sealed at rest (%v)", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sr, err := key.DecryptAt(f, fi.Size())
	if err != nil {
		return nil, err
	}
	return archive.ReadFrom(sr, sr.Size(), path)
}
