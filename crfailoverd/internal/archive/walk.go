package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// The kinds of refusal a Walker reports, wrapped in a *MemberError; test
// with errors.Is.
var (
	// ErrUnsafeName: the name is empty, absolute, has a ".." component, or
	// does not name anything (a file called ".").
	ErrUnsafeName = errors.New("unsafe member name")
	// ErrMemberType: the member is neither a regular file nor a directory
	// (a symbolic or hard link, a device, a FIFO, ...).
	ErrMemberType = errors.New("unsupported member type")
	// ErrSparse: the member is a GNU sparse file, in either of its
	// encodings (type 'S', or PAX GNU.sparse.* records), whose bytes in the
	// archive are not its content.
	ErrSparse = errors.New("sparse file")
	// ErrDuplicate: the member's name, once cleaned, was used by an earlier
	// member, or an earlier member is a regular file where this member
	// needs a directory (or the other way round).
	ErrDuplicate = errors.New("duplicate member")
	// ErrTooLarge: the member, or the archive up to and including it, is
	// larger than the Walker's limit (Options.MaxMemberBytes,
	// Options.MaxTotalBytes), or has more members than Options.MaxMembers.
	ErrTooLarge = errors.New("too large")
)

// MemberError is a member refused by a Walker.
type MemberError struct {
	Name   string // the member's name as stored in the archive
	Err    error  // ErrUnsafeName, ErrMemberType, ErrSparse, ErrDuplicate or ErrTooLarge
	Detail string // what exactly was wrong
	// Size and Limit are, for ErrTooLarge, the size found (of the member,
	// the members so far, or the stream read) and the limit it passed.
	Size, Limit int64
}

func (e *MemberError) Error() string {
	return fmt.Sprintf("member %q: %v: %s", e.Name, e.Err, e.Detail)
}

func (e *MemberError) Unwrap() error { return e.Err }

func refuse(name string, kind error, format string, args ...any) error {
	return &MemberError{Name: name, Err: kind, Detail: fmt.Sprintf(format, args...)}
}

// Member is one member of an archive, as a Walker delivers it: a regular
// file or a directory with a safe name. Read reads a regular file's data;
// it is valid until the Walker moves to the next member.
type Member struct {
	// Name is cleaned and relative: no leading "./" or "/", no trailing
	// "/", no "." or ".." components, never empty or ".".
	Name string
	Dir  bool  // a directory; otherwise a regular file
	Mode int64 // the header's mode bits (permissions, setuid, setgid, sticky)
	Size int64 // bytes of data; 0 for a directory
	// Offset is where the member's data starts in the tar stream
	// (uncompressed), counted from where the Walker started reading. For a
	// plain tar read from the start of a file it is the file offset.
	Offset int64
	// Header is the header as archive/tar read it; its Name is the raw name.
	Header *tar.Header

	w    *Walker
	read int64
}

// Read reads the member's data. Errors name the member; truncation errors
// wrap io.ErrUnexpectedEOF.
func (m *Member) Read(p []byte) (int, error) {
	if m.w.cur != m {
		return 0, fmt.Errorf("reading %s: the walk has moved past it", m.Name)
	}
	if m.Dir {
		return 0, io.EOF
	}
	if m.w.err != nil {
		return 0, m.w.err
	}
	if err := m.w.ctx.Err(); err != nil {
		m.w.err = fmt.Errorf("reading %s: walk stopped: %w", m.Name, err)
		return 0, m.w.err
	}
	n, err := m.w.tr.Read(p)
	m.read += int64(n)
	if err != nil && err != io.EOF {
		err = memberError(m.Name, err)
		m.w.err = err
	}
	return n, err
}

// kind of a name already seen by a Walker.
type kind uint8

const (
	kindFile    kind = iota + 1
	kindDir          // a directory member
	kindImplied      // a directory that a member's name passes through
)

// Walker reads a tar archive (plain or gzip-compressed) as hostile input.
// It delivers only regular files and directories whose names are relative,
// without ".." components and unique once cleaned; it refuses anything
// else with a *MemberError naming the member: symbolic and hard links,
// devices, FIFOs, GNU sparse files (type 'S' or PAX GNU.sparse.* records),
// absolute names, names with "..", and duplicate names. PAX global headers
// are skipped, as is an entry for the archive's root directory ("./").
//
// The whole stream is checked: Next reports io.EOF only after the tar
// end-of-archive marker (two zero blocks) and, after it, nothing but zero
// padding in whole blocks up to the end of the input (for gzip, the end of
// the compressed stream, whose checksum is verified). Truncation anywhere
// is an error that wraps io.ErrUnexpectedEOF and says where it happened.
//
// Members whose data is not read are skipped by seeking when the input is
// an io.Seeker (an *os.File, a *bytes.Reader), so walking a plain archive
// on disk costs little more than reading its headers.
type Walker struct {
	opts       Options // with the defaults filled in
	ctx        context.Context
	cnt        *counter
	tr         *tar.Reader
	compressed bool

	seen     map[string]kind
	members  int   // members admitted
	total    int64 // sum of the sizes of the members admitted
	cur      *Member
	last     string // name of the last entry read, for error messages
	entryEnd int64  // stream offset after the last entry's data
	err      error  // sticky
}

// NewWalker returns a Walker reading the archive from r. It reads the
// first bytes of r to tell a gzip stream from a plain tar, and for gzip the
// gzip header.
func NewWalker(r io.Reader, opts Options) (*Walker, error) {
	opts = opts.withDefaults()
	w := &Walker{opts: opts, ctx: opts.Context, seen: map[string]kind{}}
	if err := w.ctx.Err(); err != nil {
		return nil, fmt.Errorf("walk not started: %w", err)
	}
	src, compressed, err := decompress(r)
	if err != nil {
		return nil, err
	}
	w.compressed = compressed
	w.cnt = &counter{r: src, w: w}
	var tarSrc io.Reader = w.cnt
	if s, ok := src.(io.Seeker); ok {
		if base, err := s.Seek(0, io.SeekCurrent); err == nil {
			tarSrc = &seekCounter{counter: w.cnt, s: s, base: base}
		}
	}
	w.tr = tar.NewReader(tarSrc)
	return w, nil
}

// Walk walks the archive read from r with the default Options, calling fn
// for each member in archive order. It stops at the first error: fn's,
// returned as is, or the Walker's.
func Walk(r io.Reader, fn func(*Member) error) error {
	return WalkWith(r, Options{}, fn)
}

// WalkWith is Walk with Options (limits and a context).
func WalkWith(r io.Reader, opts Options, fn func(*Member) error) error {
	w, err := NewWalker(r, opts)
	if err != nil {
		return err
	}
	return w.Walk(fn)
}

// Walk calls fn for each remaining member, as the function Walk does.
func (w *Walker) Walk(fn func(*Member) error) error {
	for {
		m, err := w.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// Compressed reports whether the archive is gzip-compressed.
func (w *Walker) Compressed() bool { return w.compressed }

// Next returns the next member. It returns io.EOF at the end of a whole,
// valid archive, and then and after any error the same result again.
func (w *Walker) Next() (*Member, error) {
	if w.err != nil {
		return nil, w.err
	}
	m, err := w.next()
	if err != nil {
		w.cur = nil
		w.err = err
		return nil, err
	}
	w.cur = m
	return m, nil
}

func (w *Walker) next() (*Member, error) {
	for {
		if err := w.ctx.Err(); err != nil {
			return nil, fmt.Errorf("walk stopped %s: %w", after(w.last), err)
		}
		hdr, err := w.tr.Next()
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			err = nil // with GODEBUG tarinsecurepath=0; the name is checked below
		}
		if err == io.EOF {
			return nil, w.end()
		}
		if err != nil {
			return nil, w.headerError(err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			// Archive-wide PAX records, not a member; archive/tar applies
			// them to nothing.
			w.last, w.entryEnd = "PAX global header", w.cnt.n
			continue
		}
		m, err := w.check(hdr)
		if err != nil {
			return nil, err
		}
		if m == nil { // the root directory
			w.last, w.entryEnd = hdr.Name, w.cnt.n
			continue
		}
		w.last, w.entryEnd = m.Name, m.Offset+m.Size
		if err := w.admit(m); err != nil {
			return nil, err
		}
		return m, nil
	}
}

// check validates hdr and returns it as a member, or nil for an entry of
// the archive's root directory.
func (w *Walker) check(hdr *tar.Header) (*Member, error) {
	raw := hdr.Name
	// Sparse first: archive/tar expands sparse files on reading, so their
	// headers otherwise look like those of regular files.
	if hdr.Typeflag == tar.TypeGNUSparse {
		return nil, refuse(raw, ErrSparse, "old GNU sparse file (type 'S') is not supported")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return nil, refuse(raw, ErrSparse, "GNU sparse file (PAX record %s) is not supported", k)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir:
	default:
		return nil, refuse(raw, ErrMemberType, "%s (only regular files and directories are allowed)", describeType(hdr))
	}
	dir := hdr.Typeflag == tar.TypeDir

	switch {
	case raw == "":
		return nil, refuse(raw, ErrUnsafeName, "empty name")
	case strings.HasPrefix(raw, "/"):
		return nil, refuse(raw, ErrUnsafeName, "absolute name (must be a relative path)")
	case len(raw) > MaxNameBytes:
		return nil, refuse(raw[:256]+"...", ErrUnsafeName, "name of %d bytes, above the limit of %d", len(raw), MaxNameBytes)
	}
	for part := range strings.SplitSeq(raw, "/") {
		if part == ".." {
			return nil, refuse(raw, ErrUnsafeName, `contains ".."`)
		}
	}
	name := path.Clean(raw)
	if name == "." {
		if dir {
			return nil, nil
		}
		return nil, refuse(raw, ErrUnsafeName, "a regular file cannot be the archive's root")
	}

	if k, ok := w.seen[name]; ok {
		switch {
		case k == kindImplied && dir:
		case k == kindImplied:
			return nil, refuse(raw, ErrDuplicate, "a regular file, but earlier members are inside %s/", name)
		default:
			return nil, refuse(raw, ErrDuplicate, "%s appears twice", name)
		}
	}
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if w.seen[p] == kindFile {
			return nil, refuse(raw, ErrDuplicate, "%s is a regular file, not a directory", p)
		}
		if _, ok := w.seen[p]; ok {
			break // p's own parents were recorded with it
		}
		w.seen[p] = kindImplied
	}
	m := &Member{Name: name, Dir: dir, Mode: hdr.Mode, Offset: w.cnt.n, Header: hdr, w: w}
	if dir {
		w.seen[name] = kindDir
	} else {
		w.seen[name] = kindFile
		m.Size = hdr.Size
	}
	return m, nil
}

// describeType names the type of a member that is not a regular file or
// directory.
func describeType(hdr *tar.Header) string {
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return fmt.Sprintf("symbolic link to %q", hdr.Linkname)
	case tar.TypeLink:
		return fmt.Sprintf("hard link to %q", hdr.Linkname)
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "FIFO"
	case tar.TypeCont:
		return "contiguous file (type '7')"
	}
	return fmt.Sprintf("type %q", hdr.Typeflag)
}

// headerError describes a failure of tar.Reader.Next.
func (w *Walker) headerError(err error) error {
	var me *MemberError
	switch {
	case errors.As(err, &me):
		return me // the stream limit, which names the member itself
	case isContextError(err):
		return fmt.Errorf("walk stopped reading the header %s: %w", after(w.last), err)
	case errors.Is(err, io.ErrUnexpectedEOF) && w.cnt.n < w.entryEnd:
		// The data of the last member was cut short while it was skipped.
		return memberError(w.last, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("truncated %s: %w", after(w.last), err)
	case errors.Is(err, tar.ErrHeader) && w.last == "":
		return fmt.Errorf("not a tar archive: %w", err)
	default:
		return fmt.Errorf("reading header %s: %w", after(w.last), err)
	}
}

// end checks the end of the archive once archive/tar reports io.EOF.
func (w *Walker) end() error {
	// archive/tar accepts a stream that ends at a member boundary or
	// after one zero block; a complete archive ends with two.
	if w.cnt.n-w.entryEnd < 2*512 {
		if w.cnt.n == 0 {
			return errors.New("not a tar archive: empty input")
		}
		return fmt.Errorf("truncated %s: missing end-of-archive marker: %w", after(w.last), io.ErrUnexpectedEOF)
	}
	// Consume the rest of the stream: this verifies the gzip trailer
	// (checksum and length) and rejects data after the end of the archive.
	if err := checkTrailer(w.cnt); err != nil {
		return err
	}
	return io.EOF
}

// after describes the stream position following member last.
func after(last string) string {
	if last == "" {
		return "at start"
	}
	return "after " + last
}

// memberError describes a failure to read the data of member name.
func memberError(name string, err error) error {
	var me *MemberError
	if errors.As(err, &me) {
		return me
	}
	if isContextError(err) {
		return fmt.Errorf("reading %s: walk stopped: %w", name, err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated inside %s: %w", name, err)
	}
	return fmt.Errorf("reading %s: %w", name, err)
}

// decompress returns the tar stream of r, which is a plain tar or a gzip
// stream. It keeps a plain r that is an io.Seeker as it is (rewound to
// where it was), so that archive/tar can seek past data.
func decompress(r io.Reader) (io.Reader, bool, error) {
	var (
		magic [2]byte
		src   io.Reader
	)
	if s, ok := r.(io.ReadSeeker); ok {
		if pos, err := s.Seek(0, io.SeekCurrent); err == nil {
			n, err := io.ReadFull(s, magic[:])
			if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
				return nil, false, err
			}
			if _, err := s.Seek(pos, io.SeekStart); err != nil {
				return nil, false, err
			}
			if n < 2 || !bytes.Equal(magic[:], []byte{0x1f, 0x8b}) {
				return s, false, nil
			}
			src = bufio.NewReader(s)
		}
	}
	if src == nil {
		br := bufio.NewReader(r)
		if b, _ := br.Peek(2); !bytes.Equal(b, []byte{0x1f, 0x8b}) {
			return br, false, nil
		}
		src = br
	}
	zr, err := gzip.NewReader(src)
	if err != nil {
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, true, fmt.Errorf("truncated gzip header: %w", io.ErrUnexpectedEOF)
		}
		return nil, true, fmt.Errorf("gzip: %w", err)
	}
	return zr, true, nil
}

// counter counts the bytes read through it, and fails a read once they
// pass the Walker's total limit or its context is done.
type counter struct {
	r io.Reader
	n int64
	w *Walker
}

func (c *counter) Read(p []byte) (int, error) {
	if err := c.w.ctx.Err(); err != nil {
		return 0, err
	}
	// Read at most one byte past the limit: enough to know it is passed.
	room := c.w.opts.MaxTotalBytes - c.n // never overflows: c.n >= 0
	if room < 0 {
		return 0, c.w.streamTooLarge(c.n)
	}
	if room < int64(len(p)) {
		p = p[:room+1]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.w.opts.MaxTotalBytes {
		return n, c.w.streamTooLarge(c.n)
	}
	return n, err
}

// seekCounter is a counter over an io.Seeker, keeping the count right
// when archive/tar seeks past data.
type seekCounter struct {
	*counter
	s    io.Seeker
	base int64 // position of s where counting started
}

func (c *seekCounter) Seek(offset int64, whence int) (int64, error) {
	pos, err := c.s.Seek(offset, whence)
	if err == nil {
		c.n = pos - c.base
	}
	return pos, err
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
			var me *MemberError
			if errors.As(err, &me) {
				return me // the stream limit
			}
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
