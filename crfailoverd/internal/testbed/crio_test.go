package testbed

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
)

// requireCRIO skips t unless end-to-end tests run on CRI-O nodes.
func requireCRIO(t *testing.T) Config {
	t.Helper()
	c := requireE2E(t)
	if c.Runtime != RuntimeCRIO {
		t.Skipf("CRI-O nodes only: set %s=%s", EnvRuntime, RuntimeCRIO)
	}
	return c
}

// TestE2ECRIOEnsure checks that a second EnsureCRIO, with everything
// cached, is quick and leaves the binaries and the root file system as
// they were.
func TestE2ECRIOEnsure(t *testing.T) {
	c := requireCRIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := EnsureCRIO(ctx, c, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := EnsureCRIO(ctx, c, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("a cached EnsureCRIO took %s", took)
	}
	root := crioRootfsDir(c)
	for _, bin := range []string{crioBinary, crioPatchedBinary, pinnsBinary, "/usr/bin/conmon", "/usr/lib/cni/bridge", "/usr/sbin/runc", "/usr/sbin/criu"} {
		if _, err := os.Stat(filepath.Join(root, bin)); err != nil {
			t.Errorf("CRI-O root file system: %v", err)
		}
	}
	for _, bin := range []string{crioBinary, crioPatchedBinary} {
		v, err := crioVersion(ctx, filepath.Join(root, bin))
		if err != nil || "v"+v != CRIOVersion {
			t.Errorf("%s: version %q, %v; want %s", bin, v, err, CRIOVersion)
		}
	}
}

// TestE2ECRIORestore runs the counter on n1 of a CRI-O bed, checkpoints it
// through CRI CheckpointContainer, and restores it on n2 the way the
// daemon does: the sandbox and container configuration read back from n1
// (cri.Client.SandboxConfig and ContainerConfig), the archive shipped, and
// cri.Client.RestoreContainer on n2.
func TestE2ECRIORestore(t *testing.T) {
	c := requireCRIO(t)
	b := upBed(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	n2, _ := b.Node("n2")

	pod, err := b.RunTestApp(ctx, "n1", PodSpec{Name: "counter"})
	if err != nil {
		t.Fatal(err)
	}
	atCheckpoint := waitCounter(ctx, t, b, "n1", 10)
	src, err := cri.Dial(n1.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sb, err := src.SandboxConfig(ctx, pod.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := src.ContainerConfig(ctx, pod.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(n1.Dir, "archives", "counter.tar")
	if err := os.MkdirAll(filepath.Dir(archive), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := src.CheckpointContainer(ctx, pod.ContainerID, archive, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	checkpointTime := time.Since(start)
	members := archiveMembers(t, archive)
	for _, want := range []string{"config.dump", "spec.dump", "checkpoint/", "bind.mounts"} {
		if !members[want] {
			t.Errorf("CRI-O's archive lacks %s (has %v)", want, members)
		}
	}
	shipped := filepath.Join(n2.Dir, "archives", "counter.tar")
	if err := copyFile(archive, shipped); err != nil {
		t.Fatal(err)
	}

	dst, err := cri.Dial(n2.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	sb.Metadata.Attempt++
	start = time.Now()
	_, _, err = dst.RestoreContainer(ctx, sb, ctr, shipped)
	restoreTime := time.Since(start)
	if err != nil {
		dumpCRIOLogs(t, b)
		t.Fatal(err)
	}
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
	later := waitCounter(ctx, t, b, "n2", afterRestore)
	if later <= afterRestore {
		t.Errorf("restored counter does not rise: %d, then %d", afterRestore, later)
	}
	fmt.Printf("E2E crio-restore: crio=%s checkpoint_ms=%d restore_ms=%d counter_at_checkpoint=%d counter_after_restore=%d\n",
		b.Versions().CRIO, checkpointTime.Milliseconds(), restoreTime.Milliseconds(), atCheckpoint, afterRestore)
}

// TestE2ECRIOPatch shows what 0001-customization.patch changes, on a bed
// with the plain build and one with the patched build (keep_checkpoint_logs
// set): whether CRIU's logs and statistics stay after the checkpoint and
// the restore, and whether the restored container has exactly the masked
// and read-only paths of the checkpointed one when the checkpoint has none
// and the restoring request (as kubelet's for a pod with the default
// /proc mount) has some.
func TestE2ECRIOPatch(t *testing.T) {
	c := requireCRIO(t)
	results := map[bool]patchResult{}
	for _, patched := range []bool{false, true} {
		t.Run(fmt.Sprintf("patched=%v", patched), func(t *testing.T) {
			cc := c
			cc.CRIOPatched = patched
			r := measurePatch(t, cc)
			results[patched] = r
			fmt.Printf("E2E crio-patch: patched=%v criu_logs_kept=%v masked_paths_ok=%v\n", patched, r.logsKept, r.maskedOK)
			t.Logf("patched=%v: %s", patched, r.detail)
			if patched && (!r.logsKept || !r.maskedOK) {
				t.Errorf("patched build: criu_logs_kept=%v masked_paths_ok=%v, want both true", r.logsKept, r.maskedOK)
			}
		})
	}
	if p, u := results[true], results[false]; len(results) == 2 && p == u {
		t.Errorf("the patched and the plain build measure the same (%+v): the patch changes nothing the test sees", p)
	}
}

type patchResult struct {
	logsKept, maskedOK bool
	detail             string
}

// kubeletMaskedPaths and kubeletReadonlyPaths are what kubelet sends for a
// container with the default /proc mount type.
var (
	kubeletMaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	kubeletReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

func measurePatch(t *testing.T, c Config) patchResult {
	b := upBed(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n1, _ := b.Node("n1")
	n2, _ := b.Node("n2")
	spec := PodSpec{Name: "counter"}
	pod, err := b.RunTestApp(ctx, "n1", spec)
	if err != nil {
		t.Fatal(err)
	}
	waitCounter(ctx, t, b, "n1", 5)
	mountsBefore, err := containerMounts(ctx, n1, pod.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	src, err := cri.Dial(n1.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	archive := filepath.Join(n1.Dir, "archives", "counter.tar")
	if err := os.MkdirAll(filepath.Dir(archive), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := src.CheckpointContainer(ctx, pod.ContainerID, archive, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var r patchResult
	// CRI-O keeps a container's CRIU files in its storage directory
	// (ctr.Dir()) and restore's in its bundle (in the run root).
	dumpLogs := crioContainerFiles(n1, pod.ContainerID, "dump.log", "stats-dump")
	var dumped specs.Spec
	if err := json.Unmarshal(archiveMember(t, archive, "spec.dump"), &dumped); err != nil {
		t.Fatalf("spec.dump: %v", err)
	}
	shipped := filepath.Join(n2.Dir, "archives", "counter.tar")
	if err := copyFile(archive, shipped); err != nil {
		t.Fatal(err)
	}

	dst, err := cri.Dial(n2.Socket, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	spec.fill()
	ctr := containerConfig(spec, shipped)
	ctr.Linux.SecurityContext.MaskedPaths = kubeletMaskedPaths
	ctr.Linux.SecurityContext.ReadonlyPaths = kubeletReadonlyPaths
	_, ctrID, err := dst.RestoreContainer(ctx, b.sandboxConfig(n2, spec), ctr, shipped)
	if err != nil {
		// A restore the runtime refused also means the paths were wrong.
		r.detail = fmt.Sprintf("checkpoint logs kept: %v; restore failed: %v", dumpLogs, err)
		return r
	}
	if err := b.WaitApp(ctx, "n2", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	restoreLogs := crioContainerFiles(n2, ctrID, "restore.log", "stats-restore")
	r.logsKept = len(dumpLogs) == 2 && len(restoreLogs) == 2

	restored, err := runtimeSpec(ctx, n2, ctrID)
	if err != nil {
		t.Fatal(err)
	}
	mountsAfter, err := containerMounts(ctx, n2, ctrID)
	if err != nil {
		t.Fatal(err)
	}
	var dm, dr, rm, rr []string
	if dumped.Linux != nil {
		dm, dr = dumped.Linux.MaskedPaths, dumped.Linux.ReadonlyPaths
	}
	if restored.Linux != nil {
		rm, rr = restored.Linux.MaskedPaths, restored.Linux.ReadonlyPaths
	}
	// The spec must say what the restored process has: CRIU restored the
	// mount table it dumped.
	r.maskedOK = sameSet(dm, rm) && sameSet(dr, rr) && sameSet(mountsBefore, mountsAfter)
	r.detail = fmt.Sprintf("CRIU files after checkpoint %v, after restore %v; masked paths checkpointed %v restored %v, read-only checkpointed %v restored %v; "+
		"the process's mount points before the checkpoint %v, after the restore %v", dumpLogs, restoreLogs, dm, rm, dr, rr, mountsBefore, mountsAfter)
	return r
}

// crioContainerFiles returns which of names exist in the directories CRI-O
// keeps for container id on node n.
func crioContainerFiles(n Node, id string, names ...string) []string {
	var found []string
	for _, name := range names {
		m, _ := filepath.Glob(filepath.Join(crioDir(n), "*", "overlay-containers", id, "userdata", name))
		if len(m) > 0 {
			found = append(found, name)
		}
	}
	return found
}

// containerMounts lists the mount points of container id's process on
// node n (from its mountinfo).
func containerMounts(ctx context.Context, n Node, id string) ([]string, error) {
	info, err := containerInfo(ctx, n, id)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", info.Pid))
	if err != nil {
		return nil, fmt.Errorf("mounts of %s on %s: %w", id, n.Name, err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out, nil
}

type crioContainerInfo struct {
	Pid         int        `json:"pid"`
	RuntimeSpec specs.Spec `json:"runtimeSpec"`
}

// runtimeSpec is the OCI spec CRI-O runs container id with.
func runtimeSpec(ctx context.Context, n Node, id string) (*specs.Spec, error) {
	info, err := containerInfo(ctx, n, id)
	if err != nil {
		return nil, err
	}
	return &info.RuntimeSpec, nil
}

// containerInfo is CRI-O's verbose status of container id on node n.
func containerInfo(ctx context.Context, n Node, id string) (*crioContainerInfo, error) {
	c, err := DialCRI(n.Socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st, err := c.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("status of %s on %s: %w", id, n.Name, err)
	}
	var v crioContainerInfo
	if err := json.Unmarshal([]byte(st.Info["info"]), &v); err != nil || v.Pid == 0 {
		return nil, fmt.Errorf("verbose status of %s on %s: no runtime spec and pid (%v)", id, n.Name, err)
	}
	return &v, nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// waitCounter waits until the counter on node is above min and returns it.
func waitCounter(ctx context.Context, t *testing.T, b *Bed, node string, min int64) int64 {
	t.Helper()
	for {
		v, err := b.Counter(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		if v > min {
			return v
		}
		select {
		case <-ctx.Done():
			t.Fatalf("counter on %s stays at %d, want above %d", node, v, min)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func archiveMember(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no %s (%v)", path, name, err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

func dumpCRIOLogs(t *testing.T, b *Bed) {
	for _, n := range b.Nodes() {
		if tail, err := tailFile(n.logPath("crio"), 30); err == nil {
			t.Logf("--- %s crio log:\n%s", n.Name, tail)
		}
	}
}
