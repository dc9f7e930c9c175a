package testbed

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// RestoreResult is what the restore scenario measured.
type RestoreResult struct {
	Archive             string        // on the source node
	ArchiveBytes        int64         // size of the archive
	Shipped             string        // the copy on the target node
	CheckpointTime      time.Duration // the kubelet checkpoint call
	RestoreTime         time.Duration // RunPodSandbox + CreateContainer + StartContainer
	CounterAtCheckpoint int64         // read just before the checkpoint
	CounterAfterRestore int64         // first read on the target
	CounterLater        int64         // read again RiseWait later
	CRIU                string
}

// RiseWait is how long the scenario waits to see the restored counter rise.
const RiseWait = 500 * time.Millisecond

// String is the scenario's one-line report.
func (r RestoreResult) String() string {
	return fmt.Sprintf("checkpoint_ms=%d archive_bytes=%d restore_ms=%d counter_at_checkpoint=%d counter_after_restore=%d criu=%s",
		r.CheckpointTime.Milliseconds(), r.ArchiveBytes, r.RestoreTime.Milliseconds(), r.CounterAtCheckpoint, r.CounterAfterRestore, r.CRIU)
}

// RunRestoreScenario is the bed's demonstration of checkpoint/restore
// failover by hand, on the real runtime: run the counter on node from,
// wait until it passes minCounter, checkpoint it through from's kubelet
// (mutual TLS), copy the archive to node to, restore it there through CRI,
// read the counter twice, then power-cut from. Progress goes to log. It
// checks nothing: callers judge the result.
func (b *Bed) RunRestoreScenario(ctx context.Context, from, to string, minCounter int64, log io.Writer) (RestoreResult, error) {
	r := RestoreResult{CRIU: b.state.Versions.CRIU}
	spec := PodSpec{Name: "counter", Namespace: "default", Annotations: map[string]string{
		"hitachienergy.com/cr_mode": "cr", "hitachienergy.com/cr_interval": "10",
	}}
	fmt.Fprintf(log, "scenario: running the counter on %s\n", from)
	if _, err := b.RunTestApp(ctx, from, spec); err != nil {
		return r, err
	}
	for {
		v, err := b.Counter(ctx, from)
		if err != nil {
			return r, err
		}
		if v > minCounter {
			r.CounterAtCheckpoint = v
			break
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Fprintf(log, "scenario: counter on %s is %d; checkpointing through its kubelet\n", from, r.CounterAtCheckpoint)
	start := time.Now()
	archive, err := b.CheckpointViaKubelet(ctx, from, spec.Namespace, spec.Name, "counter", 30*time.Second)
	r.CheckpointTime = time.Since(start)
	if err != nil {
		return r, err
	}
	r.Archive = archive
	st, err := os.Stat(archive)
	if err != nil {
		return r, fmt.Errorf("archive the kubelet named: %w", err)
	}
	r.ArchiveBytes = st.Size()

	tn, err := b.Node(to)
	if err != nil {
		return r, err
	}
	r.Shipped = filepath.Join(tn.Dir, "archives", filepath.Base(archive))
	fmt.Fprintf(log, "scenario: %s (%d bytes, %d ms); copying it to %s and restoring there\n", archive, r.ArchiveBytes, r.CheckpointTime.Milliseconds(), to)
	if err := copyFile(archive, r.Shipped); err != nil {
		return r, fmt.Errorf("copy archive to %s: %w", to, err)
	}
	pod, err := b.RestoreTestApp(ctx, to, spec, r.Shipped)
	if err != nil {
		return r, err
	}
	r.RestoreTime = pod.StartTime
	if r.CounterAfterRestore, err = b.Counter(ctx, to); err != nil {
		return r, err
	}
	time.Sleep(RiseWait)
	if r.CounterLater, err = b.Counter(ctx, to); err != nil {
		return r, err
	}
	fmt.Fprintf(log, "scenario: restored on %s in %d ms: counter %d, %d a moment later; power-cutting %s\n", to, r.RestoreTime.Milliseconds(), r.CounterAfterRestore, r.CounterLater, from)
	if err := b.KillNode(ctx, from); err != nil {
		return r, err
	}
	return r, nil
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
