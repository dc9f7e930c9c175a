package nativerestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

// dumped is what an extraction keeps of the archive's own description of
// its container: untrusted, never the source of a privilege.
type dumped struct {
	Binds    []string // destinations of spec.dump's bind mounts
	ImageRef string   // config.dump's rootfsImageRef (the image ID the container ran)
	// RootfsDiff: the archive has rootfs-diff.tar (containerd applies it
	// from beside the checkpoint directory).
	RootfsDiff bool
}

// maxDumpBytes bounds spec.dump and config.dump, which are read into
// memory.
const maxDumpBytes = 4 << 20

// extract unpacks what a native restore needs of a CRI checkpoint archive
// (plain or gzip tar, read as hostile input by archive.Walker) into dir,
// which must not exist: checkpoint/ (CRIU's images) and rootfs-diff.tar,
// as files 0600 in directories 0700; spec.dump and config.dump are only
// read. Other members are skipped.
func extract(ctx context.Context, archivePath, dir string, limits archive.Options) (dumped, error) {
	var d dumped
	f, err := os.Open(archivePath)
	if err != nil {
		return d, fmt.Errorf("open checkpoint archive: %w", err)
	}
	defer f.Close()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return d, fmt.Errorf("create the extraction directory: %w", err)
	}
	limits.Context = ctx
	var haveCheckpoint bool
	err = archive.WalkWith(f, limits, func(m *archive.Member) error {
		switch {
		case m.Name == "spec.dump" && !m.Dir:
			b, err := readSmall(m)
			if err != nil {
				return err
			}
			var s struct {
				Mounts []struct {
					Destination string   `json:"destination"`
					Type        string   `json:"type"`
					Options     []string `json:"options"`
				} `json:"mounts"`
			}
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("spec.dump: %w", err)
			}
			for _, mt := range s.Mounts {
				if mt.Type == "bind" || hasBind(mt.Options) {
					d.Binds = append(d.Binds, mt.Destination)
				}
			}
			return nil
		case m.Name == "config.dump" && !m.Dir:
			b, err := readSmall(m)
			if err != nil {
				return err
			}
			var c struct {
				RootfsImageRef string `json:"rootfsImageRef"`
			}
			if err := json.Unmarshal(b, &c); err != nil {
				return fmt.Errorf("config.dump: %w", err)
			}
			d.ImageRef = c.RootfsImageRef
			return nil
		case m.Name == "rootfs-diff.tar" && !m.Dir:
			d.RootfsDiff = true
			return writeMember(dir, m)
		case m.Name == "checkpoint" && m.Dir:
			haveCheckpoint = true
			return os.MkdirAll(filepath.Join(dir, m.Name), 0o700)
		case strings.HasPrefix(m.Name, "checkpoint/"):
			haveCheckpoint = true
			if m.Dir {
				return os.MkdirAll(filepath.Join(dir, m.Name), 0o700)
			}
			return writeMember(dir, m)
		}
		return nil
	})
	if err != nil {
		return d, fmt.Errorf("extract checkpoint archive %s: %w", archivePath, err)
	}
	if !haveCheckpoint {
		return d, fmt.Errorf("extract checkpoint archive %s: no checkpoint/ directory (CRIU images): not a CRI checkpoint archive", archivePath)
	}
	return d, nil
}

func hasBind(opts []string) bool {
	for _, o := range opts {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

func readSmall(m *archive.Member) ([]byte, error) {
	if m.Size > maxDumpBytes {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d read of it", m.Name, m.Size, maxDumpBytes)
	}
	return io.ReadAll(m)
}

// writeMember writes a regular member under dir (its name is safe: the
// Walker refused "..", absolute names and links), creating the
// directories its name passes through, never following a link or
// replacing a file.
func writeMember(dir string, m *archive.Member) error {
	p := filepath.Join(dir, m.Name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, m)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", m.Name, err), os.Remove(p))
	}
	return nil
}
