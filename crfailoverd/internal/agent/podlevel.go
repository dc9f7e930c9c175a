package agent

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
)

// podLevelSupport records what the runtime answered to CheckpointPod.
type podLevelSupport int

const (
	podLevelUnknown podLevelSupport = iota
	podLevelSupported
	podLevelUnsupported
)

func (a *Agent) podLevelMayWork() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.podLevel != podLevelUnsupported
}

func (a *Agent) setPodLevel(s podLevelSupport) {
	a.mu.Lock()
	a.podLevel = s
	a.mu.Unlock()
}

// checkpointPod takes a pod-level checkpoint (one consistent cut of the
// pod's container) into a scratch directory and packs it as a tar at dst.
func (a *Agent) checkpointPod(ctx context.Context, w discovery.Workload, dst string, timeout time.Duration) error {
	scratch, err := os.MkdirTemp(filepath.Dir(dst), ".pod-")
	if err != nil {
		return fmt.Errorf("pod checkpoint of %s: %w", w.ID, err)
	}
	defer os.RemoveAll(scratch)
	if err := a.rt.CheckpointPod(ctx, w.SandboxID, []string{w.ContainerID}, scratch, timeout); err != nil {
		return err
	}
	a.setPodLevel(podLevelSupported)
	if err := tarDir(scratch, dst); err != nil {
		return fmt.Errorf("pack pod checkpoint of %s: %w", w.ID, err)
	}
	return nil
}

// restorePod unpacks a pod-level checkpoint and restores it with RestorePod.
func (a *Agent) restorePod(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, archivePath string) (string, string, error) {
	scratch, err := os.MkdirTemp(filepath.Dir(archivePath), ".restore-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(scratch)
	if err := untar(ctx, archivePath, scratch); err != nil {
		return "", "", fmt.Errorf("unpack pod checkpoint %s: %w", archivePath, err)
	}
	sbID, ids, err := a.rt.RestorePod(ctx, scratch, sb, []*runtimeapi.ContainerConfig{ctr})
	if err != nil {
		return sbID, "", err
	}
	if len(ids) != 1 {
		return sbID, "", fmt.Errorf("RestorePod restored %d containers, want 1", len(ids))
	}
	return sbID, ids[0], nil
}

func tarDir(dir, dst string) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return fmt.Errorf("%s: only regular files and directories are packed", p)
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// untar unpacks a tar made by tarDir into dir. The tar is untrusted input,
// read with an archive.Walker under the default limits (store.max_member_bytes,
// store.max_archive_bytes) and ctx: only regular files and directories with
// relative, unique names without ".." are unpacked, no more than the limits
// allow, and anything else fails (what was unpacked stays in dir, which the
// caller removes).
func untar(ctx context.Context, archivePath, dir string) error {
	f, err := os.Open(archivePath)
	if err != nil {
		return err
	}
	defer f.Close()
	return archive.WalkWith(f, archive.Options{Context: ctx}, func(m *archive.Member) error {
		p := filepath.Join(dir, filepath.FromSlash(m.Name))
		if m.Dir {
			return os.MkdirAll(p, 0o700)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fs.FileMode(m.Mode).Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(out, m)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	})
}
