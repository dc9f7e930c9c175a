package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

// RuntimeCRIO is the runtime name CRI-O gives in its CRI Version answer.
const RuntimeCRIO = "cri-o"

// runtimeName returns the runtime's name from its Version answer ("cri-o",
// "containerd"), asked once per client.
func (c *Client) runtimeName(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.name != "" {
		return c.name, nil
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	v, err := c.rt.Version(cctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", c.wrap("Version", err)
	}
	c.name = v.RuntimeName
	return c.name, nil
}

// prepareRestore does what kubelet would have done for a restore before
// CreateContainer, and what CRI-O, unlike containerd, does not do itself:
// it creates the container's log directory, and for an archive on this
// node pulls the checkpoint's base image when it is missing (CRI-O fails
// with "image not known" otherwise) and adds to ctr every mount of the
// checkpointed container that CRI-O wants in the request (it refuses a
// restore that lacks one) when its source exists here. ctr is changed.
func (c *Client) prepareRestore(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, archivePath string) error {
	name, err := c.runtimeName(ctx)
	if err != nil {
		return err
	}
	crio := name == RuntimeCRIO
	if err := makeLogDir(sb, ctr); err != nil && crio {
		return err
	}
	if !crio {
		return nil
	}
	if st, err := os.Stat(archivePath); err != nil || !st.Mode().IsRegular() {
		return nil // a checkpoint image: CRI-O reads it from its own store
	}
	md, err := readRestoreMetadata(archivePath)
	if err != nil {
		return fmt.Errorf("restore from %s: %w", archivePath, err)
	}
	if md.image != "" {
		if err := c.ensureImage(ctx, sb, md.image); err != nil {
			return fmt.Errorf("restore from %s: the checkpoint's base image: %w", archivePath, err)
		}
	}
	ctr.Mounts = append(ctr.Mounts, missingMounts(md.mounts, ctr.Mounts, exists)...)
	return nil
}

// makeLogDir creates the directory of the container's log file below the
// sandbox's log directory, as kubelet does before CreateContainer.
func makeLogDir(sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig) error {
	dir := sb.GetLogDirectory()
	if dir == "" || !filepath.IsAbs(dir) {
		return nil
	}
	if lp := ctr.GetLogPath(); lp != "" && filepath.IsLocal(lp) {
		dir = filepath.Join(dir, filepath.Dir(lp))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create the container's log directory: %w", err)
	}
	return nil
}

// ensureImage pulls image unless the runtime has it.
func (c *Client) ensureImage(ctx context.Context, sb *runtimeapi.PodSandboxConfig, image string) error {
	spec := &runtimeapi.ImageSpec{Image: image}
	cctx, cancel := c.call(ctx)
	st, err := c.img.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: spec})
	cancel()
	if err != nil {
		return c.wrap("ImageStatus "+image, err)
	}
	if st.GetImage() != nil {
		return nil
	}
	cctx, cancel = context.WithTimeout(ctx, 4*c.timeout)
	defer cancel()
	_, err = c.img.PullImage(cctx, &runtimeapi.PullImageRequest{Image: spec, SandboxConfig: sb})
	return c.wrap("PullImage "+image, err)
}

// restoreMetadata is what a restore needs from an archive's config.dump
// and spec.dump.
type restoreMetadata struct {
	image  string        // the base image by name (config.dump rootfsImageName)
	mounts []specs.Mount // the checkpointed container's mounts (spec.dump)
}

var errStop = errors.New("stop")

// readRestoreMetadata reads config.dump and spec.dump from the archive,
// through the archive package's checks and under its default limits
// (store.max_member_bytes, store.max_archive_bytes: a header announcing
// more is refused before its data is read), and stops reading once it has
// both (the memory images are not read).
func readRestoreMetadata(path string) (restoreMetadata, error) {
	var md restoreMetadata
	f, err := os.Open(path)
	if err != nil {
		return md, err
	}
	defer f.Close()
	var cfg, spec bool
	err = archive.WalkWith(f, archive.Options{}, func(m *archive.Member) error {
		if m.Dir || (m.Name != metadata.ConfigDumpFile && m.Name != metadata.SpecDumpFile) {
			return nil
		}
		if m.Size > archive.MaxMetadataSize {
			return &archive.MemberError{Name: m.Header.Name, Err: archive.ErrTooLarge, Size: m.Size, Limit: archive.MaxMetadataSize,
				Detail: fmt.Sprintf("%d bytes, above the limit of %d bytes for a metadata file read into memory", m.Size, archive.MaxMetadataSize)}
		}
		dec := json.NewDecoder(m)
		if m.Name == metadata.ConfigDumpFile {
			var c metadata.ContainerConfig
			if err := dec.Decode(&c); err != nil {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
			md.image, cfg = c.RootfsImageName, true
			if md.image == "" {
				md.image = c.RootfsImage
			}
		} else {
			var s specs.Spec
			if err := dec.Decode(&s); err != nil {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
			md.mounts, spec = s.Mounts, true
		}
		if cfg && spec {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return md, err
	}
	switch {
	case !cfg:
		return md, errors.New("missing config.dump")
	case !spec:
		return md, errors.New("missing spec.dump")
	}
	return md, nil
}

// crioOwnMounts are the destinations CRI-O's restore sets up itself (the
// list in its CRImportCheckpoint); every other mount of the checkpoint
// must be in the CreateContainer request.
var crioOwnMounts = []string{
	"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
	"/etc/resolv.conf", "/etc/hostname", "/etc/passwd", "/etc/group", "/run/secrets", "/run/.containerenv",
}

// missingMounts returns the mounts of the checkpoint that CRI-O wants in
// the request and the request lacks, as bind mounts of their recorded
// source, for those whose source exists on this node (as /etc/hosts,
// which CRI-O binds from the node into host-network pods). The rest are
// left to CRI-O's refusal, which names them.
func missingMounts(dumped []specs.Mount, have []*runtimeapi.Mount, exists func(string) bool) []*runtimeapi.Mount {
	var out []*runtimeapi.Mount
	for _, m := range dumped {
		if slices.Contains(crioOwnMounts, m.Destination) || !strings.HasPrefix(m.Source, "/") || !exists(m.Source) {
			continue
		}
		if slices.ContainsFunc(have, func(h *runtimeapi.Mount) bool { return h.GetContainerPath() == m.Destination }) {
			continue
		}
		out = append(out, &runtimeapi.Mount{ContainerPath: m.Destination, HostPath: m.Source, Readonly: slices.Contains(m.Options, "ro")})
		have = append(have, out[len(out)-1])
	}
	return out
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
