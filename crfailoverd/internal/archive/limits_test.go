package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
)

// headerOnly returns the header blocks of a regular file member of size
// bytes, and nothing after them: a reader that reads past the header hits
// the end of the input.
func headerOnly(t *testing.T, name string, size int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: size}); err != nil {
		t.Fatal(err)
	}
	// No Close: its check that the data was written would fail.
	return buf.Bytes()
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// tooLarge checks that err is a *MemberError of kind ErrTooLarge naming
// member, size and limit.
func tooLarge(t *testing.T, err error, member string, size, limit int64) {
	t.Helper()
	var me *MemberError
	if !errors.Is(err, ErrTooLarge) || !errors.As(err, &me) {
		t.Fatalf("error = %v, want a *MemberError of kind ErrTooLarge", err)
	}
	if me.Name != member || me.Size != size || me.Limit != limit {
		t.Errorf("refusal names member %q size %d limit %d, want %q, %d, %d", me.Name, me.Size, me.Limit, member, size, limit)
	}
	for _, s := range []string{fmt.Sprintf("%q", member), fmt.Sprint(size), fmt.Sprint(limit)} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %s", err, s)
		}
	}
}

// A header that announces more than the limits is refused from the header
// alone: the walk reads nothing past it, and the refusal is not a
// truncation even though no data follows.
func TestWalkRefusesAnnouncedSizes(t *testing.T) {
	const exbibyte = int64(1) << 60
	for _, tc := range []struct {
		name   string
		size   int64
		opts   Options
		detail string
		report int64 // the size the refusal names
		limit  int64
	}{
		{"1 EiB, default limits", exbibyte, Options{}, "per member (store.max_member_bytes)", exbibyte, DefaultMaxBytes},
		{"above max member", 1<<20 + 1, Options{MaxMemberBytes: 1 << 20}, "per member", 1<<20 + 1, 1 << 20},
		{"above max total", 1<<20 + 1, Options{MaxTotalBytes: 1 << 20}, "per archive (store.max_archive_bytes)", 1<<20 + 1, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := headerOnly(t, "checkpoint/pages-1.img", tc.size)
			for _, src := range []struct {
				name string
				r    func(*countingReader) io.Reader
			}{
				{"stream", func(c *countingReader) io.Reader { return c }},
				{"gzip", nil},
			} {
				data := hdr
				if src.r == nil {
					data = gzipped(hdr)
				}
				cr := &countingReader{r: bytes.NewReader(data)}
				var r io.Reader = cr
				err := WalkWith(r, tc.opts, func(m *Member) error {
					t.Errorf("%s: member %s delivered", src.name, m.Name)
					return nil
				})
				tooLarge(t, err, "checkpoint/pages-1.img", tc.report, tc.limit)
				if !strings.Contains(err.Error(), tc.detail) {
					t.Errorf("%s: error %q does not say %q", src.name, err, tc.detail)
				}
				if errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("%s: refused as a truncation: %v", src.name, err)
				}
				if cr.n > int64(len(data)) {
					t.Errorf("%s: read %d bytes of a %d-byte input", src.name, cr.n, len(data))
				}
			}
		})
	}
}

// Members that each fit the per-member limit are refused at the first one
// that brings their sum above the total limit.
func TestWalkRefusesTotal(t *testing.T) {
	members := []member{file("a", strings.Repeat("a", 3000)), file("b", strings.Repeat("b", 3000)), file("c", strings.Repeat("c", 3000))}
	data := buildTar(t, members)
	var got []string
	err := WalkWith(bytes.NewReader(data), Options{MaxMemberBytes: 4000, MaxTotalBytes: 8000}, func(m *Member) error {
		got = append(got, m.Name)
		return nil
	})
	tooLarge(t, err, "c", 9000, 8000)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("delivered %q before the refusal, want a and b", got)
	}
	// Within the limits the same archive is read whole.
	if err := WalkWith(bytes.NewReader(data), Options{MaxMemberBytes: 3000, MaxTotalBytes: int64(len(data))}, func(*Member) error { return nil }); err != nil {
		t.Errorf("archive within its limits: %v", err)
	}
}

// The tar stream itself counts against the total limit: zero blocks after
// the end-of-archive marker (which a gzip stream compresses to nothing)
// stop the walk once they pass it.
func TestWalkRefusesStreamBeyondTotal(t *testing.T) {
	data := append(buildTar(t, []member{file("a", "x")}), make([]byte, 4<<20)...)
	zipped := gzipped(data)
	if len(zipped) > 64<<10 {
		t.Fatalf("the bomb is %d bytes compressed", len(zipped))
	}
	const limit = 1 << 20
	for _, r := range []io.Reader{bytes.NewReader(zipped), bytes.NewReader(data), struct{ io.Reader }{bytes.NewReader(data)}} {
		err := WalkWith(r, Options{MaxTotalBytes: limit}, func(*Member) error { return nil })
		tooLarge(t, err, "a", limit+1, limit)
		if !strings.Contains(err.Error(), "the tar stream passes the limit") {
			t.Errorf("error %q does not say that the stream passed the limit", err)
		}
	}
	// The same archive with the default limit is valid.
	if err := Walk(bytes.NewReader(zipped), func(*Member) error { return nil }); err != nil {
		t.Errorf("with the default limit: %v", err)
	}
}

func TestWalkRefusesMemberCount(t *testing.T) {
	data := buildTar(t, []member{{"d/", tar.TypeDir, ""}, file("d/1", "1"), file("d/2", "2"), file("d/3", "3")})
	n := 0
	err := WalkWith(bytes.NewReader(data), Options{MaxMembers: 3}, func(*Member) error { n++; return nil })
	tooLarge(t, err, "d/3", 4, 3)
	if n != 3 {
		t.Errorf("delivered %d members, want 3", n)
	}
}

func TestWalkRefusesLongName(t *testing.T) {
	long := strings.Repeat("n/", MaxNameBytes/2) + "x"
	_, _, err := walkAll(t, bytes.NewReader(buildTar(t, []member{file(long, "y")})))
	if !errors.Is(err, ErrUnsafeName) || !strings.Contains(err.Error(), fmt.Sprintf("name of %d bytes, above the limit of %d", len(long), MaxNameBytes)) {
		t.Errorf("error = %v, want the name's length refused", err)
	}
}

// SetDefaultLimits changes what zero Options fields take, and so what
// Walk, Read and ReadStats enforce.
func TestSetDefaultLimits(t *testing.T) {
	member, total := DefaultLimits()
	if member != DefaultMaxBytes || total != DefaultMaxBytes {
		t.Fatalf("DefaultLimits = %d, %d, want %d each", member, total, DefaultMaxBytes)
	}
	t.Cleanup(func() { SetDefaultLimits(member, total) })
	data := buildTar(t, synthetic()) // its largest member, pages-1.img, has 8192 bytes
	SetDefaultLimits(8191, 0)
	if m, tot := DefaultLimits(); m != 8191 || tot != total {
		t.Errorf("DefaultLimits = %d, %d after SetDefaultLimits(8191, 0)", m, tot)
	}
	_, err := readBytes(data)
	tooLarge(t, err, "checkpoint/pages-1.img", 8192, 8191)
	if !strings.HasPrefix(err.Error(), "archive /x.tar: ") {
		t.Errorf("error %q does not name the archive", err)
	}
	SetDefaultLimits(member, 10000)
	_, err = readBytes(data)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Read with a total limit of 10000: %v", err)
	}
	if _, err := ReadStatsFrom(bytes.NewReader(data), "x", Options{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadStatsFrom with a total limit of 10000: %v", err)
	}
	// Explicit Options override the defaults.
	if _, err := ReadFromWith(bytes.NewReader(data), -1, "x", Options{MaxTotalBytes: 1 << 20}); err != nil {
		t.Errorf("ReadFromWith, limit 1 MiB: %v", err)
	}
}

// cancelReader cancels its context once it has delivered after bytes.
type cancelReader struct {
	r      io.Reader
	after  int64
	n      int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	if c.n >= c.after {
		c.cancel()
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// A cancelled context ends the walk with its error, naming where the walk
// stopped: between members, or inside one being read.
func TestWalkContextCancelled(t *testing.T) {
	data := buildTar(t, []member{file("a", "a"), file("big", strings.Repeat("b", 1<<20)), file("c", "c")})

	ctx, cancel := context.WithCancel(context.Background())
	var got []string
	err := WalkWith(bytes.NewReader(data), Options{Context: ctx}, func(m *Member) error {
		got = append(got, m.Name)
		if m.Name == "big" {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "after big") {
		t.Errorf("cancelled between members: %v, want context.Canceled after big", err)
	}
	if !slices.Equal(got, []string{"a", "big"}) {
		t.Errorf("delivered %q", got)
	}

	// Inside a member, reading it: the input cancels once it is 100 KiB
	// into big's data.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	cr := &cancelReader{r: bytes.NewReader(data), after: 100 << 10, cancel: cancel}
	err = WalkWith(struct{ io.Reader }{cr}, Options{Context: ctx}, func(m *Member) error {
		_, err := io.Copy(io.Discard, m)
		return err
	})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "reading big") {
		t.Errorf("cancelled inside big: %v, want context.Canceled naming big", err)
	}
	if cr.n > 200<<10 {
		t.Errorf("read %d bytes after cancelling at %d", cr.n, cr.after)
	}

	// Skipping the data: the discard reads through the same check.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	cr = &cancelReader{r: bytes.NewReader(data), after: 100 << 10, cancel: cancel}
	err = WalkWith(struct{ io.Reader }{cr}, Options{Context: ctx}, func(*Member) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while skipping big: %v", err)
	}

	// A context done before the start refuses to start.
	if _, err := NewWalker(bytes.NewReader(data), Options{Context: ctx}); !errors.Is(err, context.Canceled) {
		t.Errorf("NewWalker with a cancelled context: %v", err)
	}
	if _, err := ReadFromWith(bytes.NewReader(data), -1, "x.tar", Options{Context: ctx}); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadFromWith with a cancelled context: %v", err)
	}
}

// Limits as large as int64 allows do not overflow into refusals.
func TestWalkHugeLimits(t *testing.T) {
	data := buildTar(t, synthetic())
	opts := Options{MaxMemberBytes: math.MaxInt64, MaxTotalBytes: math.MaxInt64}
	if _, err := ReadFromWith(bytes.NewReader(data), -1, "x", opts); err != nil {
		t.Errorf("with limits of MaxInt64: %v", err)
	}
	hdr := headerOnly(t, "big", math.MaxInt64/2+1)
	err := WalkWith(bytes.NewReader(hdr), Options{MaxMemberBytes: math.MaxInt64, MaxTotalBytes: math.MaxInt64 / 2}, func(*Member) error { return nil })
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("member above a total of MaxInt64/2: %v", err)
	}
}
