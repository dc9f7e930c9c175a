package testbed

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/nativerestore"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// nativeContainerd is the containerd release that has CRI checkpoint but no
// CRI restore, on which TestE2ENativeRestore runs.
const nativeContainerd = "2.4.2"

// requireNativeBed is the bed's configuration when it is one of containerd
// nativeContainerd nodes without kubelet, where what (a test) runs, and
// skips the test, saying why and what to set, otherwise.
func requireNativeBed(t *testing.T, what string) Config {
	t.Helper()
	c := requireE2E(t)
	if c.Runtime != RuntimeContainerd || c.Containerd.Version != nativeContainerd || len(c.Containerd.Nodes) > 0 {
		t.Skipf("%s runs on a bed of containerd %s nodes: set %s=%s (this bed: runtime %s, containerd %q, per-node runtimes %v)",
			what, nativeContainerd, EnvContainerd, nativeContainerd, c.Runtime, c.Containerd.Version, c.Containerd.Nodes)
	}
	if c.Kubelet {
		t.Skipf("%s is for nodes without kubelet: unset %s", what, EnvKubelet)
	}
	return c
}

// TestE2ENativeRestore runs the counter on n1 of a containerd 2.4.2 bed
// through the CRI, checkpoints it through the CRI, shows that CRI restore
// (CreateContainer with the archive) is refused on n2, power-cuts n1, and
// restores the archive on n2 through nativerestore (containerd's own
// client) with the configuration read back from n1 as the daemon records
// it; the counter must go on from its checkpointed value. Then List sees
// the container and Remove fences it.
func TestE2ENativeRestore(t *testing.T) {
	c := requireNativeBed(t, "native restore")
	b := upBed(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	n2, _ := b.Node("n2")

	pod, err := b.RunTestApp(ctx, "n1", PodSpec{Name: "counter"})
	if err != nil {
		t.Fatal(err)
	}
	src, err := cri.Dial(n1.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// The registration, as the agent records it and the cluster
	// replicates it.
	sb, err := src.SandboxConfig(ctx, pod.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := src.ContainerConfig(ctx, pod.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := restorecfg.Marshal(sb, ctr)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := restorecfg.Parse(recorded)
	if err != nil {
		t.Fatal(err)
	}

	atCheckpoint := waitCounter(ctx, t, b, "n1", 10)
	archivePath := filepath.Join(n1.Dir, "archives", "counter.tar")
	if err := os.MkdirAll(filepath.Dir(archivePath), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := src.CheckpointContainer(ctx, pod.ContainerID, archivePath, 30*time.Second); err != nil {
		t.Fatalf("CRI checkpoint on containerd %s: %v", nativeContainerd, err)
	}
	checkpointTime := time.Since(start)
	members := archiveMembers(t, archivePath)
	for _, want := range []string{"config.dump", "spec.dump", "checkpoint/", "rootfs-diff.tar"} {
		if !members[want] {
			t.Errorf("the archive lacks %s (has %v)", want, members)
		}
	}
	shipped := filepath.Join(n2.Dir, "archives", "counter.tar")
	if err := copyFile(archivePath, shipped); err != nil {
		t.Fatal(err)
	}

	// CRI restore is gone on 2.4: CreateContainer with the archive fails.
	dst, err := cri.Dial(n2.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	sb.Metadata.Attempt++
	_, _, criErr := dst.RestoreContainer(ctx, sb, ctr, shipped)
	if criErr == nil {
		t.Fatalf("CRI restore through CreateContainer worked on containerd %s: the native path is not needed there", nativeContainerd)
	}
	// containerd 2.4 takes the archive's path for an image name.
	if !strings.Contains(criErr.Error(), "failed to resolve image") {
		t.Fatalf("CRI restore on containerd %s failed, but not as a runtime without restore refuses it: %v", nativeContainerd, criErr)
	}
	t.Logf("CRI restore on containerd %s refused, as expected: %v", nativeContainerd, criErr)
	if _, err := b.Counter(ctx, "n2"); err == nil {
		t.Fatal("a counter answers on n2 after the refused CRI restore")
	}

	r, err := nativerestore.New(n2.Socket, nativerestore.Options{
		StateDir:     filepath.Join(n2.Dir, "native"),
		CgroupParent: "/" + cgroupRoot + "/n2/native",
		Log:          slog.New(slog.NewTextHandler(TestWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	version, err := r.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if version != nativeContainerd {
		t.Fatalf("n2 runs containerd %s, want %s", version, nativeContainerd)
	}
	// The holder pulls the base image when the checkpoint reaches it,
	// before any failure.
	start = time.Now()
	if err := r.EnsureImage(ctx, reg); err != nil {
		t.Fatal(err)
	}
	prepull := time.Since(start)
	if err := b.KillNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	// A restore that CRIU fails (no images) leaves nothing behind: no
	// container, task, snapshot or state directory.
	empty := withoutCRIUImages(t, shipped)
	if _, err := r.Restore(ctx, nativerestore.Request{ID: "counter-broken", Archive: empty, Registration: reg}); err == nil {
		t.Fatal("a restore without CRIU images worked")
	} else {
		t.Logf("a restore without CRIU images fails: %v", err)
	}
	if list, err := r.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("after a failed restore: containers %+v, %v", list, err)
	}
	if _, err := os.Stat(filepath.Join(n2.Dir, "native", "counter-broken")); !os.IsNotExist(err) {
		t.Errorf("a failed restore left its state directory: %v", err)
	}
	res, err := r.Restore(ctx, nativerestore.Request{ID: "counter-native", Archive: shipped, Registration: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored natively: pid %d, extract %s, image %s, create %s, CRIU restore and start %s, total %s",
		res.PID, res.Extract, res.EnsureImage, res.Create, res.Restore, res.Total)
	if err := b.WaitApp(ctx, "n2", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	afterRestore, err := b.Counter(ctx, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if afterRestore < atCheckpoint {
		t.Errorf("restored counter %d is below the counter %d read before the checkpoint: state was lost", afterRestore, atCheckpoint)
	}
	if later := waitCounter(ctx, t, b, "n2", afterRestore); later <= afterRestore {
		t.Errorf("restored counter does not rise: %d, then %d", afterRestore, later)
	}

	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(c nativerestore.Container) bool { return c.ID == "counter-native" })
	if i < 0 || list[i].Status != "running" || list[i].PID != res.PID || list[i].Workload != "default/counter/counter" {
		t.Errorf("List: %+v, want counter-native running as pid %d for default/counter/counter", list, res.PID)
	}
	// The CRI does not see it.
	if ids := criContainerIDs(ctx, t, n2.Socket); slices.Contains(ids, "counter-native") {
		t.Errorf("the CRI of n2 lists the natively restored container: %v", ids)
	}
	if err := r.Remove(ctx, "counter-native"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Counter(ctx, "n2"); err == nil {
		t.Error("the counter still answers on n2 after Remove")
	}
	if list, err := r.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List after Remove: %+v, %v", list, err)
	}
	if err := r.Remove(ctx, "counter-native"); err != nil {
		t.Errorf("a second Remove: %v", err)
	}
	if !t.Failed() {
		fmt.Printf("E2E native-restore: containerd=%s counter_at_checkpoint=%d counter_after_restore=%d restore_ms=%d checkpoint_ms=%d criu_restore_ms=%d prepull_ms=%d cri_restore=refused\n",
			version, atCheckpoint, afterRestore, res.Total.Milliseconds(), checkpointTime.Milliseconds(), res.Restore.Milliseconds(), prepull.Milliseconds())
	}
}

// withoutCRIUImages writes a copy of the archive at path with an empty
// checkpoint/ directory (spec.dump, config.dump and rootfs-diff.tar kept).
func withoutCRIUImages(t *testing.T, path string) string {
	t.Helper()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := strings.TrimSuffix(path, ".tar") + "-no-images.tar"
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	tr := tar.NewReader(in)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if strings.HasPrefix(name, "checkpoint/") && h.Typeflag != tar.TypeDir {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func criContainerIDs(ctx context.Context, t *testing.T, socket string) []string {
	t.Helper()
	c, err := DialCRI(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ctr := range resp.Containers {
		ids = append(ids, ctr.Id)
	}
	return ids
}
