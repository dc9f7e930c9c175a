// Package archive reads container checkpoint archives as written by the CRI
// CheckpointContainer call of containerd and CRI-O (the layout checkpointctl
// understands):
//
//	checkpoint/        CRIU image files (core-*.img, pages-*.img, ...)
//	config.dump        container metadata (JSON)
//	spec.dump          the container's OCI runtime spec (JSON)
//	stats-dump         CRIU dump statistics (see ParseStatsDump)
//	rootfs-diff.tar    files the container changed
//	status, status.dump, dump.log, container.log, ...
//
// The archive is a plain tar or a gzip-compressed tar. Archives are treated
// as untrusted input, and every reader of one in crfailoverd goes through
// the Walker of this package: the whole stream is checked, so truncation
// anywhere is reported, and only regular files and directories with
// relative, unique names without ".." components are accepted. Symbolic
// links, hard links, devices, FIFOs and sparse files are rejected wherever
// they appear: neither containerd nor CRI-O writes them into the outer
// archive (the container's own files, links included, travel inside
// rootfs-diff.tar, which is a regular member), so their presence means the
// archive was not produced by a CRI runtime.
//
// The metadata is decoded with the field's own types: checkpointctl's for
// config.dump, the OCI runtime spec's for spec.dump, and go-criu's for the
// CRIU statistics image.
package archive

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/checkpoint-restore/go-criu/v8/stats"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// MaxMetadataSize caps the size of the members read into memory
// (config.dump, spec.dump and stats-dump).
const MaxMetadataSize = 16 << 20

// Info describes a checkpoint archive.
type Info struct {
	Container    string    // container name (config.dump "name")
	ID           string    // container ID (config.dump "id")
	Image        string    // image name (config.dump "rootfsImageName", else "rootfsImage")
	ImageRef     string    // resolved image reference (config.dump "rootfsImageRef")
	Runtime      string    // OCI runtime (config.dump "runtime", e.g. "io.containerd.runc.v2")
	Created      time.Time // container creation time (config.dump "createdTime")
	Checkpointed time.Time // checkpoint time (config.dump "checkpointedTime")
	Spec         *Spec     // selected parts of spec.dump

	ArchiveSize    int64 // bytes of the archive as read (compressed size if compressed); -1 if unknown
	CheckpointSize int64 // total bytes of the regular files under checkpoint/
	PagesSize      int64 // bytes of checkpoint/pages-*.img
	RootfsDiffSize int64 // bytes of rootfs-diff.tar, 0 if absent
	Files          int   // number of regular files in the archive

	Stats *DumpStats // CRIU dump statistics; nil when stats-dump is absent
}

// Spec holds the parts of the container's OCI runtime spec (spec.dump) that
// crfailoverd needs, taken from the spec decoded as the runtime-spec
// module's specs.Spec. JSON keys follow the OCI runtime specification.
type Spec struct {
	Hostname    string            `json:"hostname,omitempty"`
	Process     Process           `json:"process"`
	Mounts      []Mount           `json:"mounts,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Linux       Linux             `json:"linux"`
}

// Process is the container's init process as recorded in the OCI spec.
type Process struct {
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd"`
}

// Mount is an OCI spec mount.
type Mount struct {
	Destination string `json:"destination"`
	Type        string `json:"type,omitempty"`
	Source      string `json:"source,omitempty"`
}

// Linux holds the Linux-specific parts of the OCI spec.
type Linux struct {
	Namespaces []Namespace `json:"namespaces,omitempty"`
}

// Namespace is an OCI spec namespace; an empty Path means a new namespace.
type Namespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

// Read parses the checkpoint archive at path with the default Options.
// See ReadFrom.
func Read(path string) (*Info, error) { return ReadWith(path, Options{}) }

// ReadWith is Read with Options (limits and a context).
func ReadWith(path string, opts Options) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	size := int64(-1)
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	return ReadFromWith(f, size, path, opts)
}

// ReadFrom parses a checkpoint archive (plain or gzip-compressed tar) from r,
// reading it to the end. name is used in error messages and size is reported
// as Info.ArchiveSize (-1 if unknown).
//
// It fails if the stream is not a tar archive, is truncated or corrupt, has
// unsafe or unsupported members, lacks config.dump, spec.dump or the
// checkpoint/ directory, has anything but zero padding after the tar
// end-of-archive marker, or if config.dump, spec.dump or stats-dump cannot be
// parsed. Errors name the archive and the offending member; truncation
// errors wrap io.ErrUnexpectedEOF.
//
// It reads with the default Options; ReadFromWith takes others.
func ReadFrom(r io.Reader, size int64, name string) (*Info, error) {
	return ReadFromWith(r, size, name, Options{})
}

// ReadFromWith is ReadFrom with Options: size limits, and a context that
// ends the read.
func ReadFromWith(r io.Reader, size int64, name string, opts Options) (*Info, error) {
	info, err := read(r, opts)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", name, err)
	}
	info.ArchiveSize = size
	return info, nil
}

func read(r io.Reader, opts Options) (*Info, error) {
	w, err := NewWalker(r, opts)
	if err != nil {
		return nil, err
	}
	info := &Info{}
	var cfg, spec, checkpointDir bool
	err = w.Walk(func(m *Member) error {
		if m.Dir {
			if m.Name == metadata.CheckpointDirectory {
				checkpointDir = true
			}
			return nil
		}
		info.Files++
		if strings.HasPrefix(m.Name, metadata.CheckpointDirectory+"/") {
			checkpointDir = true
			info.CheckpointSize += m.Size
			if ok, _ := path.Match(metadata.CheckpointDirectory+"/"+metadata.PagesPrefix+"*.img", m.Name); ok {
				info.PagesSize += m.Size
			}
		}
		// The data of the other members is skipped; the Walker still
		// detects truncation there.
		switch m.Name {
		case metadata.RootFsDiffTar:
			info.RootfsDiffSize = m.Size
		case metadata.ConfigDumpFile, metadata.SpecDumpFile, stats.StatsDump:
			b, err := readMember(m)
			if err != nil {
				return err
			}
			switch m.Name {
			case metadata.ConfigDumpFile:
				err = parseConfig(b, info)
				cfg = true
			case metadata.SpecDumpFile:
				info.Spec, err = parseSpec(b)
				spec = true
			default:
				info.Stats, err = ParseStatsDump(b)
			}
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	switch {
	case !cfg:
		return nil, errors.New("missing config.dump")
	case !spec:
		return nil, errors.New("missing spec.dump")
	case !checkpointDir:
		return nil, errors.New("missing checkpoint/ directory")
	}
	return info, nil
}

// readMember reads the data of m into memory.
func readMember(m *Member) ([]byte, error) {
	if m.Size > MaxMetadataSize {
		return nil, &MemberError{Name: m.Header.Name, Err: ErrTooLarge, Size: m.Size, Limit: MaxMetadataSize,
			Detail: fmt.Sprintf("%d bytes, above the limit of %d bytes for a metadata file read into memory", m.Size, MaxMetadataSize)}
	}
	// Grow the buffer as data arrives rather than trusting the header's size.
	b, err := io.ReadAll(io.LimitReader(m, m.Size))
	if err != nil {
		return nil, err // names the member
	}
	if int64(len(b)) < m.Size {
		return nil, memberError(m.Name, io.ErrUnexpectedEOF)
	}
	return b, nil
}

// parseConfig fills info from the contents of config.dump, decoded into
// checkpointctl's type for it (the subset of Podman's container config that
// containerd and CRI-O write).
func parseConfig(b []byte, info *Info) error {
	var c metadata.ContainerConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("config.dump: invalid JSON: %w", err)
	}
	info.Container = c.Name
	info.ID = c.ID
	info.Image = c.RootfsImageName
	if info.Image == "" {
		info.Image = c.RootfsImage
	}
	info.ImageRef = c.RootfsImageRef
	info.Runtime = c.OCIRuntime
	info.Created = c.CreatedTime
	info.Checkpointed = c.CheckpointedAt
	return nil
}

// parseSpec decodes spec.dump as the OCI runtime spec it is (the type
// checkpointctl's ReadContainerCheckpointSpecDump returns) and keeps the
// parts crfailoverd uses.
func parseSpec(b []byte) (*Spec, error) {
	var oci specs.Spec
	if err := json.Unmarshal(b, &oci); err != nil {
		return nil, fmt.Errorf("spec.dump: invalid JSON: %w", err)
	}
	s := &Spec{Hostname: oci.Hostname, Annotations: oci.Annotations}
	if p := oci.Process; p != nil {
		s.Process = Process{Args: p.Args, Env: p.Env, Cwd: p.Cwd}
	}
	for _, m := range oci.Mounts {
		s.Mounts = append(s.Mounts, Mount{Destination: m.Destination, Type: m.Type, Source: m.Source})
	}
	if l := oci.Linux; l != nil {
		for _, ns := range l.Namespaces {
			s.Linux.Namespaces = append(s.Linux.Namespaces, Namespace{Type: string(ns.Type), Path: ns.Path})
		}
	}
	return s, nil
}
