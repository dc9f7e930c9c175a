package nativerestore

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/rootfs"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// CheckpointResult is what a checkpoint did and how long its steps took.
type CheckpointResult struct {
	ID string
	// Frozen: the task paused (CRIU's dump and the root file system's
	// diff); Archive: the archive written; Total: all of it.
	Frozen, Archive, Total time.Duration
	Bytes                  int64 // the archive's size
}

// Checkpoint checkpoints the running task of container id into a CRI
// checkpoint archive at location (a path that must not exist yet, made
// 0600), leaving the task running. The archive has the layout of
// containerd's CRI CheckpointContainer, so that Restore (on this node or
// another) takes it as it takes a CRI one: checkpoint/ (CRIU's images,
// from the shim's checkpoint with runc's ImagePath and WorkPath),
// rootfs-diff.tar (the container's read-write snapshot against its image,
// from containerd's diff service), spec.dump (the container's runtime
// spec, which Restore does not trust), config.dump and status.dump (from
// the registration the container was restored with), dump.log and
// stats-dump. The task stays paused from CRIU's dump to the end of the
// diff, so that files and memory are of one moment.
func (r *Restorer) Checkpoint(ctx context.Context, id, location string) (res CheckpointResult, err error) {
	start := time.Now()
	res.ID = id
	if !idRE.MatchString(id) {
		return res, fmt.Errorf("native checkpoint of %q: not a container ID", id)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("native checkpoint of %s to %s: %w", id, location, err)
		}
	}()
	ctx = r.ctx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return res, fmt.Errorf("load the container: %w", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return res, fmt.Errorf("read the container: %w", err)
	}
	reg, err := registrationOf(info.Extensions)
	if err != nil {
		return res, err
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return res, fmt.Errorf("load its task: %w", err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return res, fmt.Errorf("status of its task: %w", err)
	}
	if st.Status != containerd.Running {
		return res, fmt.Errorf("its task is %s: only a running task is checkpointed", st.Status)
	}
	imageRef := ""
	if img, err := r.client.GetImage(ctx, info.Image); err == nil {
		if cfg, err := img.Config(ctx); err == nil {
			imageRef = cfg.Digest.String()
		}
	}

	// The shim (in containerd's mount namespace) writes CRIU's images
	// here: the state directory, which containerd sees at the same path.
	work, err := os.MkdirTemp(filepath.Join(r.opts.StateDir, id), "checkpoint-")
	if err != nil {
		return res, fmt.Errorf("create the checkpoint's work directory: %w", err)
	}
	defer os.RemoveAll(work)
	images := filepath.Join(work, metadata.CheckpointDirectory)
	if err := os.Mkdir(images, 0o700); err != nil {
		return res, fmt.Errorf("create the checkpoint's image directory: %w", err)
	}
	// The diff's content lives under a lease: it is garbage once copied.
	lctx, done, err := r.client.WithLease(ctx)
	if err != nil {
		return res, fmt.Errorf("take a lease for the root file system's diff: %w", err)
	}
	defer done(context.WithoutCancel(lctx))

	frozen := time.Now()
	diffDesc, err := r.dumpPaused(lctx, task, info.ID, info.Snapshotter, info.SnapshotKey, images, work)
	res.Frozen = time.Since(frozen)
	if err != nil {
		return res, err
	}

	t := time.Now()
	if err := r.copyBlob(lctx, diffDesc, filepath.Join(work, metadata.RootFsDiffTar)); err != nil {
		return res, fmt.Errorf("copy the root file system's diff: %w", err)
	}
	if info.Spec == nil {
		return res, errors.New("the container has no runtime spec")
	}
	files := map[string][]byte{metadata.SpecDumpFile: info.Spec.GetValue()}
	if files[metadata.ConfigDumpFile], err = json.Marshal(metadata.ContainerConfig{
		ID: id, Name: reg.Container.GetMetadata().GetName(),
		RootfsImage: info.Image, RootfsImageRef: imageRef, RootfsImageName: info.Image,
		OCIRuntime: info.Runtime.Name, CreatedTime: info.CreatedAt, CheckpointedAt: time.Now(),
	}); err != nil {
		return res, fmt.Errorf("encode config.dump: %w", err)
	}
	if files[metadata.StatusDumpFile], err = json.Marshal(statusOf(id, reg, info.Image, imageRef, info.CreatedAt)); err != nil {
		return res, fmt.Errorf("encode status.dump: %w", err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(work, name), b, 0o600); err != nil {
			return res, fmt.Errorf("write %s: %w", name, err)
		}
	}
	if res.Bytes, err = writeArchive(ctx, work, location); err != nil {
		return res, err
	}
	res.Archive = time.Since(t)
	res.Total = time.Since(start)
	r.log.Info("checkpointed natively", "container", id, "workload", workloadOf(reg), "archive", location, "bytes", res.Bytes,
		"frozen_ms", res.Frozen.Milliseconds(), "archive_ms", res.Archive.Milliseconds(), "total_ms", res.Total.Milliseconds())
	return res, nil
}

// dumpPaused pauses the task, has the shim dump it with CRIU into images
// (leaving it running), diffs its read-write snapshot against the image,
// and resumes it, whatever failed.
func (r *Restorer) dumpPaused(ctx context.Context, task containerd.Task, id, snapshotter, snapshotKey, images, work string) (d ocispec.Descriptor, err error) {
	if err := task.Pause(ctx); err != nil {
		return d, fmt.Errorf("pause the task: %w", err)
	}
	defer func() {
		if rerr := task.Resume(context.WithoutCancel(ctx)); rerr != nil && !errdefs.IsNotFound(rerr) {
			err = errors.Join(err, fmt.Errorf("resume the task after its checkpoint: %w", rerr))
		}
	}()
	// A paused task is checkpointed as it is (the client neither pauses
	// nor resumes it); with ImagePath the shim writes CRIU's images there
	// and containerd stores nothing.
	if _, err := task.Checkpoint(ctx, func(i *containerd.CheckpointTaskInfo) error {
		i.Options = &options.CheckpointOptions{Exit: false, ImagePath: images, WorkPath: work}
		return nil
	}); err != nil {
		return d, fmt.Errorf("checkpoint the task with CRIU: %w", err)
	}
	if snapshotKey == "" {
		return d, errors.New("the container has no snapshot to diff")
	}
	d, err = rootfs.CreateDiff(ctx, snapshotKey, r.client.SnapshotService(snapshotter), r.client.DiffService(),
		diff.WithMediaType(ocispec.MediaTypeImageLayer), diff.WithReference("crfailoverd-checkpoint-rw-"+id))
	if err != nil {
		return d, fmt.Errorf("diff the root file system: %w", err)
	}
	return d, nil
}

// copyBlob copies a blob of containerd's content store to a new file.
func (r *Restorer) copyBlob(ctx context.Context, d ocispec.Descriptor, dst string) error {
	ra, err := r.client.ContentStore().ReaderAt(ctx, d)
	if err != nil {
		return err
	}
	defer ra.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, content.NewReader(ra))
	return errors.Join(err, f.Close())
}

// statusOf is a CRI container status for status.dump (containerd's CRI
// writes one; its restore wants it): what the registration says.
func statusOf(id string, reg restorecfg.Config, image, imageRef string, created time.Time) *runtimeapi.ContainerStatus {
	return &runtimeapi.ContainerStatus{
		Id: id, Metadata: reg.Container.GetMetadata(), State: runtimeapi.ContainerState_CONTAINER_RUNNING,
		CreatedAt: created.UnixNano(), Image: &runtimeapi.ImageSpec{Image: image}, ImageRef: imageRef,
		Labels: reg.Container.GetLabels(), Annotations: reg.Container.GetAnnotations(), LogPath: reg.Container.GetLogPath(),
	}
}

// writeArchive writes dir's regular files and directories as a tar at
// location (which must not exist), names relative to dir; links and
// other files are refused. It returns the archive's size.
func writeArchive(ctx context.Context, dir, location string) (int64, error) {
	f, err := os.OpenFile(location, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create the archive: %w", err)
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			return fmt.Errorf("%s is neither a file nor a directory", rel)
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name, h.Uname, h.Gname = filepath.ToSlash(rel), "", ""
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, src)
		return errors.Join(err, src.Close())
	})
	if err == nil {
		err = tw.Close()
	}
	var size int64
	if err == nil {
		size, err = f.Seek(0, io.SeekCurrent)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, errors.Join(fmt.Errorf("write the archive: %w", err), os.Remove(location))
	}
	return size, nil
}
