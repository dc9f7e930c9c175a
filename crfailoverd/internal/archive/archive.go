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
// as untrusted input: the whole stream is read, so truncation anywhere is
// reported, and only regular files and directories with relative names
// without ".." components are accepted. Symbolic links, hard links, devices
// and FIFOs are rejected wherever they appear: neither containerd nor CRI-O
// writes them into the outer archive (the container's own files, links
// included, travel inside rootfs-diff.tar, which is a regular member), so
// their presence means the archive was not produced by a CRI runtime.
package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
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
// crfailoverd needs. JSON keys follow the OCI runtime specification.
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

// containerConfig is the JSON document stored as config.dump.
type containerConfig struct {
	ID               string    `json:"id"`
	Name             string    `json:"name"`
	RootfsImage      string    `json:"rootfsImage"`
	RootfsImageRef   string    `json:"rootfsImageRef"`
	RootfsImageName  string    `json:"rootfsImageName"`
	Runtime          string    `json:"runtime"`
	CreatedTime      time.Time `json:"createdTime"`
	CheckpointedTime time.Time `json:"checkpointedTime"`
}

// Read parses the checkpoint archive at path. See ReadFrom.
func Read(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	size := int64(-1)
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	return ReadFrom(f, size, path)
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
func ReadFrom(r io.Reader, size int64, name string) (*Info, error) {
	info, err := read(r)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", name, err)
	}
	info.ArchiveSize = size
	return info, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func read(r io.Reader) (*Info, error) {
	br := bufio.NewReader(r)
	var src io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("truncated gzip header: %w", io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("gzip: %w", err)
		}
		src = zr
	}
	cr := &countingReader{r: src}
	tr := tar.NewReader(cr)

	info := &Info{}
	var (
		cfg, spec     bool
		checkpointDir bool
		last          string // last member seen, for error messages
		entryEnd      int64  // stream offset after the last member's data
		seen          = map[string]bool{}
	)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			// archive/tar accepts a stream that ends at a member boundary or
			// after one zero block; a complete archive ends with two.
			if cr.n-entryEnd < 2*512 {
				if cr.n == 0 {
					return nil, errors.New("not a tar archive: empty input")
				}
				return nil, fmt.Errorf("truncated %s: missing end-of-archive marker: %w",
					after(last), io.ErrUnexpectedEOF)
			}
			break
		}
		if err != nil {
			switch {
			case errors.Is(err, io.ErrUnexpectedEOF):
				return nil, fmt.Errorf("truncated %s: %w", after(last), err)
			case errors.Is(err, tar.ErrHeader) && last == "":
				return nil, fmt.Errorf("not a tar archive: %w", err)
			default:
				return nil, fmt.Errorf("reading header %s: %w", after(last), err)
			}
		}
		name, err := memberName(hdr.Name)
		if err != nil {
			return nil, err
		}
		last = name
		switch hdr.Typeflag {
		case tar.TypeDir:
			if name == "checkpoint" {
				checkpointDir = true
			}
			entryEnd = cr.n
			continue
		case tar.TypeXGlobalHeader:
			entryEnd = cr.n
			continue // archive-wide PAX metadata, not a member
		case tar.TypeReg:
		default:
			return nil, fmt.Errorf("%s: unsupported member type %q (only regular files and directories are allowed)",
				name, hdr.Typeflag)
		}
		if name == "." {
			return nil, fmt.Errorf("invalid member name %q", hdr.Name)
		}
		if seen[name] {
			return nil, fmt.Errorf("%s: duplicate member", name)
		}
		seen[name] = true
		info.Files++

		if strings.HasPrefix(name, "checkpoint/") {
			checkpointDir = true
			info.CheckpointSize += hdr.Size
			if ok, _ := path.Match("checkpoint/pages-*.img", name); ok {
				info.PagesSize += hdr.Size
			}
		}

		switch name {
		case "config.dump", "spec.dump", "stats-dump":
			b, err := readMember(tr, name, hdr.Size)
			if err != nil {
				return nil, err
			}
			switch name {
			case "config.dump":
				err = parseConfig(b, info)
				cfg = true
			case "spec.dump":
				info.Spec = new(Spec)
				if err = json.Unmarshal(b, info.Spec); err != nil {
					err = fmt.Errorf("spec.dump: invalid JSON: %w", err)
				}
				spec = true
			case "stats-dump":
				info.Stats, err = ParseStatsDump(b)
			}
			if err != nil {
				return nil, err
			}
		default:
			if name == "rootfs-diff.tar" {
				info.RootfsDiffSize = hdr.Size
			}
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return nil, memberError(name, err)
			}
		}
		entryEnd = cr.n
	}

	// Consume the rest of the stream: this verifies the gzip trailer
	// (checksum and length) and rejects data after the end of the archive.
	if err := checkTrailer(cr); err != nil {
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

// after describes the stream position following member last.
func after(last string) string {
	if last == "" {
		return "at start"
	}
	return "after " + last
}

// memberName validates a member name and returns it cleaned, without a
// leading "./" or trailing "/".
func memberName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("invalid member name %q: must be a relative path", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("invalid member name %q: contains \"..\"", name)
		}
	}
	return path.Clean(name), nil
}

// memberError describes a failure to read the data of member name.
func memberError(name string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated inside %s: %w", name, err)
	}
	return fmt.Errorf("reading %s: %w", name, err)
}

// readMember reads the size bytes of member name into memory.
func readMember(r io.Reader, name string, size int64) ([]byte, error) {
	if size > MaxMetadataSize {
		return nil, fmt.Errorf("%s: too large (%d bytes, limit %d)", name, size, MaxMetadataSize)
	}
	// Grow the buffer as data arrives rather than trusting the header's size.
	b, err := io.ReadAll(io.LimitReader(r, size))
	if err == nil && int64(len(b)) < size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, memberError(name, err)
	}
	return b, nil
}

// parseConfig fills info from the contents of config.dump.
func parseConfig(b []byte, info *Info) error {
	var c containerConfig
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
	info.Runtime = c.Runtime
	info.Created = c.CreatedTime
	info.Checkpointed = c.CheckpointedTime
	return nil
}

// checkTrailer reads r to the end after the tar end-of-archive marker. Only
// zero padding in whole 512-byte blocks may follow the marker.
func checkTrailer(r io.Reader) error {
	var (
		buf [32 << 10]byte
		n   int64
	)
	for {
		k, err := r.Read(buf[:])
		for _, c := range buf[:k] {
			if c != 0 {
				return errors.New("unexpected data after the end of the tar archive")
			}
		}
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("truncated after the end-of-archive marker: %w", err)
			}
			return fmt.Errorf("reading after the end-of-archive marker: %w", err)
		}
	}
	if n%512 != 0 {
		return fmt.Errorf("truncated padding after the end-of-archive marker: %w", io.ErrUnexpectedEOF)
	}
	return nil
}
