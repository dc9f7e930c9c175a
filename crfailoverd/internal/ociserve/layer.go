package ociserve

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// layerMtime is the modification time of every member of a layer: a fixed
// time keeps the layer's digest a function of the archive's content only.
var layerMtime = time.Unix(0, 0).UTC()

// gzipLevel is the compression level of layers. CRIU page images of most
// programs are largely zeros; the fastest level already shrinks them
// well, and a layer built on the pull path must not keep a restore waiting.
const gzipLevel = gzip.BestSpeed

// member is one entry of the checkpoint archive, with where its data can be
// read from.
type member struct {
	name string // cleaned, relative, without a trailing slash
	dir  bool
	mode int64
	off  int64 // offset of the data in the source file
	size int64
}

// layerResult describes a layer written by writeLayer.
type layerResult struct {
	digest string // sha256 of the gzip stream, "sha256:<hex>"
	size   int64  // bytes of the gzip stream
	diffID string // sha256 of the uncompressed tar stream, "sha256:<hex>"
}

// writeLayer writes the gzip-compressed tar layer holding the files of the
// checkpoint archive at archivePath to out. The layer is deterministic: its
// members are the archive's regular files and directories at the archive's
// paths, sorted by name, with the archive's permission bits, owner 0:0, a
// fixed modification time and no user or group names; the gzip header has
// no name and no time, and the level is fixed. spoolDir is where a
// temporary copy of the members' data goes when the archive cannot be read
// in place (it is compressed, or holds sparse members).
func writeLayer(ctx context.Context, archivePath, spoolDir string, out io.Writer) (layerResult, error) {
	f, err := os.Open(archivePath)
	if err != nil {
		return layerResult{}, err
	}
	defer f.Close()

	src := io.ReaderAt(f)
	members, err := indexInPlace(ctx, f)
	if errors.Is(err, errNeedSpool) {
		spool, err := os.CreateTemp(spoolDir, tmpPrefix+"spool-")
		if err != nil {
			return layerResult{}, fmt.Errorf("create spool file: %w", err)
		}
		defer func() {
			spool.Close()
			os.Remove(spool.Name())
		}()
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return layerResult{}, err
		}
		if members, err = indexSpooled(ctx, f, spool); err != nil {
			return layerResult{}, err
		}
		src = spool
	} else if err != nil {
		return layerResult{}, err
	}
	slices.SortStableFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })
	// A directory may be listed twice; a file cannot (archive.Read
	// rejects duplicate files).
	members = slices.CompactFunc(members, func(a, b member) bool { return a.name == b.name && a.dir && b.dir })

	gzHash, tarHash := sha256.New(), sha256.New()
	counted := &countWriter{w: io.MultiWriter(out, gzHash)}
	bw := bufio.NewWriterSize(counted, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzipLevel)
	if err != nil {
		return layerResult{}, err
	}
	tw := tar.NewWriter(io.MultiWriter(zw, tarHash))
	buf := make([]byte, 1<<20)
	for _, m := range members {
		if err := ctx.Err(); err != nil {
			return layerResult{}, err
		}
		hdr := &tar.Header{
			Name:    m.name,
			Mode:    m.mode & 0o7777,
			ModTime: layerMtime,
			Format:  tar.FormatPAX,
		}
		if m.dir {
			hdr.Typeflag, hdr.Name = tar.TypeDir, m.name+"/"
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, m.size
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return layerResult{}, fmt.Errorf("layer member %s: %w", m.name, err)
		}
		if m.dir {
			continue
		}
		n, err := io.CopyBuffer(tw, io.NewSectionReader(src, m.off, m.size), buf)
		if err == nil && n != m.size {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return layerResult{}, fmt.Errorf("layer member %s: %w", m.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return layerResult{}, err
	}
	if err := zw.Close(); err != nil {
		return layerResult{}, err
	}
	if err := bw.Flush(); err != nil {
		return layerResult{}, err
	}
	return layerResult{digest: digestOf(gzHash), size: counted.n, diffID: digestOf(tarHash)}, nil
}

// errNeedSpool means the archive cannot be read in place.
var errNeedSpool = errors.New("archive must be spooled")

// indexInPlace lists the members of a plain tar archive with the offsets of
// their data in f. It returns errNeedSpool for a compressed archive or one
// with sparse members, whose data is not stored as is.
func indexInPlace(ctx context.Context, f *os.File) ([]member, error) {
	var magic [2]byte
	if n, _ := io.ReadFull(f, magic[:]); n == 2 && bytes.Equal(magic[:], []byte{0x1f, 0x8b}) {
		return nil, errNeedSpool
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	// archive/tar reads headers straight from f, without buffering ahead,
	// and skips data by seeking: after Next, f's offset is where the
	// member's data starts.
	tr := tar.NewReader(f)
	var ms []member
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return ms, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		if isSparse(hdr) {
			return nil, errNeedSpool
		}
		m, ok, err := toMember(hdr)
		if err != nil || !ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		if !m.dir {
			if m.off, err = f.Seek(0, io.SeekCurrent); err != nil {
				return nil, err
			}
		}
		ms = append(ms, m)
	}
}

// indexSpooled reads the archive (plain or gzip-compressed tar) from r and
// copies the members' data to spool, returning the members with their
// offsets in spool.
func indexSpooled(ctx context.Context, r io.Reader, spool *os.File) ([]member, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var src io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("read archive: gzip: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	tr := tar.NewReader(src)
	bw := bufio.NewWriterSize(spool, 1<<20)
	var (
		ms  []member
		off int64
		buf = make([]byte, 1<<20)
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		m, ok, err := toMember(hdr)
		if err != nil || !ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		if !m.dir {
			n, err := io.CopyBuffer(bw, tr, buf)
			if err != nil {
				return nil, fmt.Errorf("read archive member %s: %w", m.name, err)
			}
			m.off, m.size = off, n
			off += n
		}
		ms = append(ms, m)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("write spool file: %w", err)
	}
	return ms, nil
}

// toMember converts a header of the archive. ok is false for entries that
// are not members (PAX global headers). Anything but regular files and
// directories with safe relative names is rejected, as archive.Read does.
func toMember(hdr *tar.Header) (m member, ok bool, err error) {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return member{}, false, nil
	case tar.TypeDir, tar.TypeReg:
	default:
		return member{}, false, fmt.Errorf("archive member %q: unsupported type %q", hdr.Name, hdr.Typeflag)
	}
	name := hdr.Name
	if name == "" || strings.HasPrefix(name, "/") || slices.Contains(strings.Split(name, "/"), "..") {
		return member{}, false, fmt.Errorf("archive member %q: unsafe name", hdr.Name)
	}
	name = path.Clean(name)
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return member{}, false, nil // the archive's root adds nothing
		}
		return member{}, false, fmt.Errorf("archive member %q: invalid name", hdr.Name)
	}
	m = member{name: name, dir: hdr.Typeflag == tar.TypeDir, mode: hdr.Mode}
	if !m.dir {
		m.size = hdr.Size
	}
	return m, true, nil
}

// isSparse reports whether the member's data is stored in a sparse format,
// so that its bytes in the archive are not its content.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
