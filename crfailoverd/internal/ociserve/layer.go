package ociserve

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
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
	name string // archive.Member.Name: cleaned, relative, unique
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

// sizedReaderAt is an archive's plaintext: a store.Archive.
type sizedReaderAt interface {
	io.ReaderAt
	Size() int64
}

// writeLayer writes the gzip-compressed tar layer holding the files of the
// checkpoint archive read from archive (its plaintext) to out. The layer is
// deterministic: its members are the archive's regular files and
// directories at the archive's paths, sorted by name, with the archive's
// permission bits, owner 0:0, a fixed modification time and no user or
// group names; the gzip header has no name and no time, and the level is
// fixed. The archive is read with archive.Walker, as untrusted input.
// spoolDir is where a temporary copy of the members' data goes when the
// archive cannot be read in place (it is compressed); with sealSpool that
// copy is encrypted with a key of this call only, which never leaves
// memory.
func writeLayer(ctx context.Context, arch sizedReaderAt, spoolDir string, out io.Writer, sealSpool bool) (layerResult, error) {
	w, err := archive.NewWalker(io.NewSectionReader(arch, 0, arch.Size()), archive.Options{})
	if err != nil {
		return layerResult{}, fmt.Errorf("read archive: %w", err)
	}
	src := io.ReaderAt(arch)
	var members []member
	if w.Compressed() {
		spool, err := os.CreateTemp(spoolDir, tmpPrefix+"spool-")
		if err != nil {
			return layerResult{}, fmt.Errorf("create spool file: %w", err)
		}
		defer func() {
			spool.Close()
			os.Remove(spool.Name())
		}()
		if src, members, err = spoolMembers(ctx, w, spool, sealSpool); err != nil {
			return layerResult{}, err
		}
	} else if members, err = indexInPlace(ctx, w); err != nil {
		return layerResult{}, err
	}
	// The Walker refuses duplicate names, so the order is total.
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })

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

// indexInPlace lists the members of a plain tar archive with the offsets of
// their data in the file the Walker reads (from its start). The Walker
// seeks past the data.
func indexInPlace(ctx context.Context, w *archive.Walker) ([]member, error) {
	var ms []member
	err := w.Walk(func(m *archive.Member) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ms = append(ms, member{name: m.Name, dir: m.Dir, mode: m.Mode, off: m.Offset, size: m.Size})
		return nil
	})
	if err != nil {
		return nil, walkError(ctx, err)
	}
	return ms, nil
}

// spoolMembers copies the members' data from the Walker to spool
// (encrypted with a new key of its own if sealed) and returns where to
// read it back and the members with their offsets there.
func spoolMembers(ctx context.Context, w *archive.Walker, spool *os.File, sealed bool) (io.ReaderAt, []member, error) {
	if !sealed {
		ms, err := indexSpooled(ctx, w, spool)
		return spool, ms, err
	}
	id, err := seal.Generate()
	if err != nil {
		return nil, nil, fmt.Errorf("spool key: %w", err)
	}
	key, err := seal.Parse(id)
	if err != nil {
		return nil, nil, fmt.Errorf("spool key: %w", err)
	}
	enc, err := key.Encrypt(spool)
	if err != nil {
		return nil, nil, err
	}
	ms, err := indexSpooled(ctx, w, enc)
	if err != nil {
		return nil, nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, nil, fmt.Errorf("write spool file: %w", err)
	}
	st, err := spool.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("spool file: %w", err)
	}
	r, err := key.DecryptAt(spool, st.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("spool file: %w", err)
	}
	return r, ms, nil
}

// indexSpooled reads the archive from the Walker and copies the members'
// data to spool, returning the members with their offsets in what was
// written to spool.
func indexSpooled(ctx context.Context, w *archive.Walker, spool io.Writer) ([]member, error) {
	bw := bufio.NewWriterSize(spool, 1<<20)
	var (
		ms  []member
		off int64
		buf = make([]byte, 1<<20)
	)
	err := w.Walk(func(m *archive.Member) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		x := member{name: m.Name, dir: m.Dir, mode: m.Mode}
		if !m.Dir {
			n, err := io.CopyBuffer(bw, m, buf)
			if err != nil {
				return err
			}
			x.off, x.size = off, n
			off += n
		}
		ms = append(ms, x)
		return nil
	})
	if err != nil {
		return nil, walkError(ctx, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("write spool file: %w", err)
	}
	return ms, nil
}

// walkError describes a failed walk of the archive: the context's error
// if it ended the walk.
func walkError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return cerr
	}
	return fmt.Errorf("read archive: %w", err)
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
