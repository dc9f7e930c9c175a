package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

// rawHeader returns a 512-byte tar header block written by hand, for
// members that archive/tar cannot write (sparse files). gnu selects the
// GNU magic instead of the USTAR one; fill may set further fields before
// the checksum is computed.
func rawHeader(name string, typ byte, size int64, gnu bool, fill func(b []byte)) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typ
	if gnu {
		copy(b[257:265], "ustar  \x00")
	} else {
		copy(b[257:265], "ustar\x0000")
	}
	if fill != nil {
		fill(b)
	}
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// padded returns b padded with zeros to whole 512-byte blocks.
func padded(b []byte) []byte {
	return append(slices.Clone(b), make([]byte, (512-len(b)%512)%512)...)
}

// paxHeader returns a PAX extended header ('x') entry holding records.
func paxHeader(records ...[2]string) []byte {
	var data []byte
	for _, r := range records {
		rec := " " + r[0] + "=" + r[1] + "\n"
		n := len(rec) + 1 // the length counts its own digits
		for n != len(rec)+len(fmt.Sprint(n)) {
			n++
		}
		data = append(data, fmt.Sprintf("%d%s", n, rec)...)
	}
	return append(rawHeader("PaxHeaders/x", tar.TypeXHeader, int64(len(data)), false, nil), padded(data)...)
}

var endMarker = make([]byte, 1024)

// gnuSparseTar is an archive whose member big.bin is an old GNU sparse
// file (type 'S') of 8192 bytes with 5 bytes of data at offset 0.
func gnuSparseTar() []byte {
	h := rawHeader("big.bin", tar.TypeGNUSparse, 5, true, func(b []byte) {
		copy(b[386:398], "00000000000\x00") // sparse[0].offset
		copy(b[398:410], "00000000005\x00") // sparse[0].numbytes
		copy(b[483:495], "00000020000\x00") // realsize
	})
	return slices.Concat(h, padded([]byte("hello")), endMarker)
}

// paxSparseTar is an archive whose member big.bin is a GNU sparse file in
// PAX format 0.1 (GNU.sparse.map) or 1.0 (map at the start of the data).
func paxSparseTar(v1 bool) []byte {
	if v1 {
		pax := paxHeader([2]string{"GNU.sparse.major", "1"}, [2]string{"GNU.sparse.minor", "0"},
			[2]string{"GNU.sparse.name", "big.bin"}, [2]string{"GNU.sparse.realsize", "8192"})
		data := append(padded([]byte("1\n0\n5\n")), "hello"...)
		h := rawHeader("GNUSparseFile.0/big.bin", tar.TypeReg, int64(len(data)), false, nil)
		return slices.Concat(pax, h, padded(data), endMarker)
	}
	pax := paxHeader([2]string{"GNU.sparse.numblocks", "1"}, [2]string{"GNU.sparse.map", "0,5"},
		[2]string{"GNU.sparse.name", "big.bin"}, [2]string{"GNU.sparse.size", "8192"})
	h := rawHeader("GNUSparseFile.0/big.bin", tar.TypeReg, 5, false, nil)
	return slices.Concat(pax, h, padded([]byte("hello")), endMarker)
}

// walkAll walks b and returns the names of the members, "/"-suffixed for
// directories, and each regular file's data.
func walkAll(t *testing.T, r io.Reader) ([]string, map[string]string, error) {
	t.Helper()
	var names []string
	data := map[string]string{}
	err := Walk(r, func(m *Member) error {
		if m.Dir {
			names = append(names, m.Name+"/")
			return nil
		}
		names = append(names, m.Name)
		b, err := io.ReadAll(m)
		if err != nil {
			return err
		}
		if int64(len(b)) != m.Size {
			t.Errorf("%s: read %d bytes, Size %d", m.Name, len(b), m.Size)
		}
		data[m.Name] = string(b)
		return nil
	})
	return names, data, err
}

func TestWalkRefuses(t *testing.T) {
	ok := []member{{"checkpoint/", tar.TypeDir, ""}, file("checkpoint/core-1.img", "core")}
	with := func(extra ...member) []byte { return buildTar(t, append(slices.Clone(ok), extra...)) }
	tests := []struct {
		name string
		tar  []byte
		kind error
		want string
	}{
		{"symlink", with(member{"checkpoint/link", tar.TypeSymlink, "/etc/shadow"}), ErrMemberType,
			`member "checkpoint/link": unsupported member type: symbolic link to "/etc/shadow"`},
		{"hardlink", with(member{"hard", tar.TypeLink, "checkpoint/core-1.img"}), ErrMemberType,
			`member "hard": unsupported member type: hard link to "checkpoint/core-1.img"`},
		{"char device", with(member{"null", tar.TypeChar, ""}), ErrMemberType, `member "null": unsupported member type: character device`},
		{"block device", with(member{"sda", tar.TypeBlock, ""}), ErrMemberType, `member "sda": unsupported member type: block device`},
		{"fifo", with(member{"pipe", tar.TypeFifo, ""}), ErrMemberType, `member "pipe": unsupported member type: FIFO`},
		{"contiguous", with(member{"cont", tar.TypeCont, "x"}), ErrMemberType, `member "cont": unsupported member type: contiguous file`},
		{"dotdot", with(file("../x", "y")), ErrUnsafeName, `member "../x": unsafe member name: contains ".."`},
		{"inner dotdot", with(file("checkpoint/../x", "y")), ErrUnsafeName, `member "checkpoint/../x": unsafe member name: contains ".."`},
		{"dotdot dir", with(member{"a/../../", tar.TypeDir, ""}), ErrUnsafeName, `member "a/../../": unsafe member name`},
		{"absolute", with(file("/abs", "y")), ErrUnsafeName, `member "/abs": unsafe member name: absolute name`},
		{"absolute dir", with(member{"/etc/", tar.TypeDir, ""}), ErrUnsafeName, `member "/etc/": unsafe member name: absolute name`},
		{"file at root", slices.Concat(rawHeader(".", tar.TypeReg, 1, false, nil), padded([]byte("y")), endMarker),
			ErrUnsafeName, `member ".": unsafe member name: a regular file cannot be the archive's root`},
		{"old GNU sparse", gnuSparseTar(), ErrSparse, `member "big.bin": sparse file: old GNU sparse file (type 'S')`},
		{"PAX sparse 0.1", paxSparseTar(false), ErrSparse, `member "big.bin": sparse file: GNU sparse file (PAX record GNU.sparse.`},
		{"PAX sparse 1.0", paxSparseTar(true), ErrSparse, `member "big.bin": sparse file: GNU sparse file (PAX record GNU.sparse.`},
		{"duplicate file", with(file("checkpoint/core-1.img", "again")), ErrDuplicate,
			`member "checkpoint/core-1.img": duplicate member: checkpoint/core-1.img appears twice`},
		{"duplicate after cleaning", with(file("./checkpoint//core-1.img", "again")), ErrDuplicate,
			`member "./checkpoint//core-1.img": duplicate member`},
		{"duplicate directory", with(member{"checkpoint", tar.TypeDir, ""}), ErrDuplicate,
			`member "checkpoint": duplicate member: checkpoint appears twice`},
		{"file over a directory", with(file("checkpoint", "x")), ErrDuplicate, `member "checkpoint": duplicate member`},
		{"directory over a file", with(member{"checkpoint/core-1.img/", tar.TypeDir, ""}), ErrDuplicate,
			`member "checkpoint/core-1.img/": duplicate member`},
		{"inside a file", with(file("checkpoint/core-1.img/x", "y")), ErrDuplicate,
			`member "checkpoint/core-1.img/x": duplicate member: checkpoint/core-1.img is a regular file, not a directory`},
		{"file over an implied directory", buildTar(t, []member{file("a/b/c", "x"), file("a/b", "y")}), ErrDuplicate,
			`member "a/b": duplicate member: a regular file, but earlier members are inside a/b/`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, src := range []struct {
				name string
				r    io.Reader
			}{
				{"seekable", bytes.NewReader(tc.tar)},
				{"stream", struct{ io.Reader }{bytes.NewReader(tc.tar)}},
				{"gzip", bytes.NewReader(gzipped(tc.tar))},
			} {
				_, _, err := walkAll(t, src.r)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: error = %v, want it to contain %q", src.name, err, tc.want)
				}
				var me *MemberError
				if !errors.Is(err, tc.kind) || !errors.As(err, &me) {
					t.Errorf("%s: error %v is not a *MemberError of kind %v", src.name, err, tc.kind)
				}
			}
		})
	}
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func TestWalkAccepts(t *testing.T) {
	// A PAX global header and the root entry are skipped, names are
	// cleaned, a directory implied by an earlier member may follow it.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "x"}},
		{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "./a/b/c", Mode: 0o600, Size: 3},
		{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o700},
		{Typeflag: tar.TypeDir, Name: "a/b/", Mode: 0o700},
		{Typeflag: tar.TypeReg, Name: "a//d", Mode: 0o4755, Size: 0},
		{Typeflag: tar.TypeReg, Name: "e", Mode: 0o644, Size: 5000, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "./a/b/c":
			tw.Write([]byte("abc"))
		case "e":
			tw.Write(bytes.Repeat([]byte("e"), 5000))
		}
	}
	tw.Close()
	plain := buf.Bytes()

	for _, src := range []struct {
		name string
		r    io.Reader
	}{
		{"seekable", bytes.NewReader(plain)},
		{"stream", struct{ io.Reader }{bytes.NewReader(plain)}},
		{"gzip", bytes.NewReader(gzipped(plain))},
	} {
		names, data, err := walkAll(t, src.r)
		if err != nil {
			t.Fatalf("%s: %v", src.name, err)
		}
		if want := []string{"a/b/c", "a/", "a/b/", "a/d", "e"}; !slices.Equal(names, want) {
			t.Errorf("%s: members %q, want %q", src.name, names, want)
		}
		if data["a/b/c"] != "abc" || data["e"] != strings.Repeat("e", 5000) || data["a/d"] != "" {
			t.Errorf("%s: data %q", src.name, data)
		}
	}

	// Offsets, sizes and modes; members whose data is not read are skipped.
	w, err := NewWalker(bytes.NewReader(plain), Options{})
	if err != nil || w.Compressed() {
		t.Fatalf("NewWalker = %v, compressed %v", err, w.Compressed())
	}
	var got []string
	if err := w.Walk(func(m *Member) error {
		got = append(got, fmt.Sprintf("%s dir=%v mode=%o size=%d data=%q", m.Name, m.Dir, m.Mode, m.Size,
			plain[m.Offset:m.Offset+m.Size]))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`a/b/c dir=false mode=600 size=3 data="abc"`,
		`a dir=true mode=700 size=0 data=""`,
		`a/b dir=true mode=700 size=0 data=""`,
		`a/d dir=false mode=4755 size=0 data=""`,
		`e dir=false mode=644 size=5000 data="` + strings.Repeat("e", 5000) + `"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("members:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := w.Next(); err != io.EOF {
		t.Errorf("Next after the end = %v, want io.EOF", err)
	}

	w, _ = NewWalker(bytes.NewReader(gzipped(plain)), Options{})
	if !w.Compressed() {
		t.Error("gzip stream not reported as compressed")
	}
}

func TestWalkStream(t *testing.T) {
	data := buildTar(t, []member{file("a", strings.Repeat("a", 3000)), file("b", strings.Repeat("b", 3000))})
	inA := 512 + 1000 // inside a's data
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a tar archive: empty input"},
		{"not tar", []byte(strings.Repeat("x", 2000)), "not a tar archive"},
		{"inside a", data[:inA], "truncated inside a: unexpected EOF"},
		{"a's padding", data[:512+3000+10], "truncated after a: missing end-of-archive marker"},
		{"b's header", data[:512+3072+100], "truncated after a: unexpected EOF"},
		{"no marker", data[:len(data)-1024], "truncated after b: missing end-of-archive marker"},
		{"half marker", data[:len(data)-512], "truncated after b: missing end-of-archive marker"},
		{"trailing junk", append(slices.Clone(data), "junk"...), "unexpected data after the end of the tar archive"},
		{"odd padding", append(slices.Clone(data), 0, 0), "truncated padding after the end-of-archive marker"},
		{"gzip junk", []byte{0x1f, 0x8b, 1, 2, 3}, "truncated gzip header"},
		{"gzip cut", gzipped(data)[:40], "unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, src := range []struct {
				name string
				r    io.Reader
			}{
				{"seekable", bytes.NewReader(tc.data)},
				{"stream", struct{ io.Reader }{bytes.NewReader(tc.data)}},
			} {
				// Skipping the data (by seeking where possible) and reading it
				// report the same errors.
				for _, read := range []bool{false, true} {
					err := Walk(src.r, func(m *Member) error {
						if read {
							_, err := io.Copy(io.Discard, m)
							return err
						}
						return nil
					})
					if err == nil || !strings.Contains(err.Error(), tc.want) {
						t.Errorf("%s, read %v: error = %v, want it to contain %q", src.name, read, err, tc.want)
					}
					src.r = bytes.NewReader(tc.data)
					if src.name == "stream" {
						src.r = struct{ io.Reader }{src.r}
					}
				}
			}
		})
	}

	// A member cannot be read once the walk has moved on; errors stick.
	w, _ := NewWalker(bytes.NewReader(data), Options{})
	a, err := w.Next()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Read(make([]byte, 10)); err == nil || !strings.Contains(err.Error(), "moved past") {
		t.Errorf("stale read: %v", err)
	}
	w, _ = NewWalker(bytes.NewReader(data[:inA]), Options{})
	if _, err := w.Next(); err != nil {
		t.Fatal(err)
	}
	_, err1 := w.Next()
	_, err2 := w.Next()
	if err1 == nil || err1 != err2 {
		t.Errorf("errors %v, then %v", err1, err2)
	}

	// fn's error is returned as is.
	stop := errors.New("stop")
	if err := Walk(bytes.NewReader(data), func(*Member) error { return stop }); err != stop {
		t.Errorf("Walk = %v, want fn's error", err)
	}
}

// TestWalkInsecurePathSetting checks that GODEBUG=tarinsecurepath=0, with
// which archive/tar reports ErrInsecurePath, changes nothing.
func TestWalkInsecurePathSetting(t *testing.T) {
	t.Setenv("GODEBUG", "tarinsecurepath=0")
	_, _, err := walkAll(t, bytes.NewReader(buildTar(t, []member{file("../x", "y")})))
	if !errors.Is(err, ErrUnsafeName) {
		t.Errorf("error = %v, want ErrUnsafeName", err)
	}
	names, _, err := walkAll(t, bytes.NewReader(buildTar(t, []member{file("./a", "y")})))
	if err != nil || !slices.Equal(names, []string{"a"}) {
		t.Errorf("Walk = %q, %v", names, err)
	}
}

func FuzzWalk(f *testing.F) {
	f.Add(buildTar(f, synthetic()))
	f.Add(gnuSparseTar())
	f.Add(paxSparseTar(false))
	f.Add(paxSparseTar(true))
	f.Add(buildTar(f, []member{file("a/b", "x"), file("a", "y")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		seen := map[string]bool{}
		err := Walk(bytes.NewReader(b), func(m *Member) error {
			if m.Name == "" || m.Name == "." || strings.HasPrefix(m.Name, "/") ||
				slices.Contains(strings.Split(m.Name, "/"), "..") || seen[m.Name] {
				t.Fatalf("member %q delivered", m.Name)
			}
			seen[m.Name] = true
			if t := m.Header.Typeflag; t != tar.TypeReg && t != tar.TypeDir {
				return fmt.Errorf("type %q delivered", t)
			}
			_, err := io.Copy(io.Discard, m)
			return err
		})
		if err != nil && strings.Contains(err.Error(), "delivered") {
			t.Fatal(err)
		}
	})
}
