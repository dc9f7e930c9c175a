package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"
	"google.golang.org/protobuf/encoding/protowire"
)

const fixture = "testdata/counter-checkpoint.tar.gz"

// fixtureStats is the stats-dump member of the fixture.
var fixtureStats = []byte{
	0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x25, 0x00, 0x00, 0x00,
	0x0a, 0x23, 0x08, 0xd9, 0x04, 0x10, 0x92, 0xfa, 0x02, 0x18, 0xbf, 0x0a,
	0x20, 0x94, 0x05, 0x28, 0xbf, 0x02, 0x30, 0x00, 0x38, 0xf5, 0x01, 0x40,
	0x00, 0x48, 0x00, 0x50, 0x04, 0x58, 0x04, 0x60, 0x00, 0x68, 0x00, 0x70,
	0x00,
}

// fixtureTar returns the fixture decompressed to a plain tar file.
func fixtureTar(t testing.TB) (string, []byte) {
	t.Helper()
	f, err := os.Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "counter-checkpoint.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, buf.Bytes()
}

func TestReadFixture(t *testing.T) {
	tarPath, _ := fixtureTar(t)
	for _, p := range []string{fixture, tarPath} {
		t.Run(filepath.Base(p), func(t *testing.T) {
			info, err := Read(p)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(p)
			checkFixture(t, info, st.Size())
		})
	}
}

func checkFixture(t *testing.T, info *Info, archiveSize int64) {
	t.Helper()
	str := func(field, got, want string) {
		if got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	str("Container", info.Container, "counter_counter_default_57d8ebed-e1a0-63a2-2b21-e98fccfce407_0")
	str("ID", info.ID, "bee101e2ba3b9337db9f608e2dbf2bed842508c22111d9fbe50c781fe39de4eb")
	str("Image", info.Image, "localhost:5000/counter:latest")
	str("ImageRef", info.ImageRef, "localhost:5000/counter@sha256:fa509f245781c717d4b5aeb864259638d9a7000fc8404d6791bf6ca2b557de03")
	str("Runtime", info.Runtime, "io.containerd.runc.v2")

	created := time.Date(2026, 11, 24, 23, 28, 2, 44394556, time.UTC)
	checkpointed := time.Date(2026, 11, 24, 23, 28, 5, 265235885, time.UTC)
	if !info.Created.Equal(created) || !info.Checkpointed.Equal(checkpointed) {
		t.Errorf("Created, Checkpointed = %v, %v; want %v, %v", info.Created, info.Checkpointed, created, checkpointed)
	}

	if s := info.Spec; s == nil {
		t.Error("Spec is nil")
	} else {
		if !slices.Equal(s.Process.Args, []string{"/counter"}) || s.Process.Cwd != "/" {
			t.Errorf("Spec.Process = %+v", s.Process)
		}
		if !slices.Contains(s.Process.Env, "PATH=/") {
			t.Errorf("Spec.Process.Env = %q, want PATH=/", s.Process.Env)
		}
		if !slices.Contains(s.Linux.Namespaces, Namespace{Type: "network", Path: "/proc/26478/ns/net"}) ||
			!slices.Contains(s.Linux.Namespaces, Namespace{Type: "mount"}) {
			t.Errorf("Spec.Linux.Namespaces = %+v", s.Linux.Namespaces)
		}
		if !slices.Contains(s.Mounts, Mount{Destination: "/proc", Type: "proc", Source: "proc"}) {
			t.Errorf("Spec.Mounts lacks /proc: %+v", s.Mounts)
		}
		if s.Annotations["io.kubernetes.cri.container-name"] != "counter" {
			t.Errorf("Spec.Annotations = %v", s.Annotations)
		}
	}

	num := func(field string, got, want int64) {
		if got != want {
			t.Errorf("%s = %d, want %d", field, got, want)
		}
	}
	num("ArchiveSize", info.ArchiveSize, archiveSize)
	num("CheckpointSize", info.CheckpointSize, 1021627)
	num("PagesSize", info.PagesSize, 1003520)
	num("RootfsDiffSize", info.RootfsDiffSize, 197)
	num("Files", int64(info.Files), 29)

	want := DumpStats{
		FreezingTime: 601 * time.Microsecond,
		FrozenTime:   48402 * time.Microsecond,
		MemdumpTime:  1343 * time.Microsecond,
		MemwriteTime: 660 * time.Microsecond,
		PagesScanned: 319,
		PagesWritten: 245,
		PagePipes:    4,
		PagePipeBufs: 4,
	}
	if info.Stats == nil {
		t.Fatal("Stats is nil")
	}
	s := *info.Stats
	if s != want {
		t.Errorf("Stats = %+v\nwant    %+v", s, want)
	}
	// CRIU writes pages inside the memory dump phase, inside the frozen period.
	if s.FrozenTime < s.MemdumpTime || s.MemdumpTime < s.MemwriteTime {
		t.Errorf("implausible times: frozen %v, memdump %v, memwrite %v", s.FrozenTime, s.MemdumpTime, s.MemwriteTime)
	}
	if s.PagesWritten > s.PagesScanned {
		t.Errorf("pages written %d > scanned %d", s.PagesWritten, s.PagesScanned)
	}
	// Every written page lands in pages-*.img (4 KiB pages on the capture host).
	if int64(s.PagesWritten)*4096 != info.PagesSize {
		t.Errorf("pages written %d * 4096 != PagesSize %d", s.PagesWritten, info.PagesSize)
	}
}

func TestReadFromUnknownSize(t *testing.T) {
	_, data := fixtureTar(t)
	info, err := ReadFrom(bytes.NewReader(data), -1, "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if info.ArchiveSize != -1 {
		t.Errorf("ArchiveSize = %d, want -1", info.ArchiveSize)
	}
	var out bytes.Buffer
	if err := info.Write(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Archive size:") || !strings.Contains(out.String(), "unknown") {
		t.Errorf("report does not say the archive size is unknown:\n%s", out.String())
	}
}

func TestTruncated(t *testing.T) {
	_, plain := fixtureTar(t)
	gz, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	pages := bytes.Index(plain, []byte("checkpoint/pages-1.img\x00"))
	if pages < 0 || pages%512 != 0 {
		t.Fatalf("pages-1.img header not found")
	}
	cuts := map[string]struct {
		data []byte
		at   int
	}{
		"tar/mid-first-header":   {plain, 100},
		"tar/mid-second-header":  {plain, 512 + 300},
		"tar/mid-pages-header":   {plain, pages + 200},
		"tar/mid-pages":          {plain, pages + 512 + 500000},
		"tar/before-marker":      {plain, len(plain) - 1024},
		"tar/half-marker":        {plain, len(plain) - 512},
		"tar/before-end":         {plain, len(plain) - 1},
		"tar/mid-last-member":    {plain, len(plain) - 1024 - 100},
		"gzip/mid-gzip-header":   {gz, 5},
		"gzip/after-gzip-header": {gz, 10},
		"gzip/middle":            {gz, len(gz) / 2},
		"gzip/mid-trailer":       {gz, len(gz) - 4},
		"gzip/before-end":        {gz, len(gz) - 1},
	}
	for name, c := range cuts {
		t.Run(name, func(t *testing.T) {
			_, err := ReadFrom(bytes.NewReader(c.data[:c.at]), int64(c.at), "/x.tar")
			if err == nil {
				t.Fatal("truncated archive accepted")
			}
			if !strings.Contains(err.Error(), "truncated") || !strings.HasPrefix(err.Error(), "archive /x.tar: ") {
				t.Errorf("error %q does not report truncation", err)
			}
			t.Log(err)
		})
	}

	_, err = ReadFrom(bytes.NewReader(plain[:pages+512+500000]), -1, "/x.tar")
	if want := "archive /x.tar: truncated inside checkpoint/pages-1.img: unexpected EOF"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}

func TestCorruptGzip(t *testing.T) {
	gz, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(gz)
	bad[len(bad)-6] ^= 0xff // CRC-32 in the trailer
	if _, err := ReadFrom(bytes.NewReader(bad), -1, "x"); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("corrupt gzip checksum: error = %v", err)
	}
}

// member is an entry of a synthetic archive.
type member struct {
	name string
	typ  byte
	body string
}

func file(name, body string) member { return member{name, tar.TypeReg, body} }

// buildTar writes members to a tar stream.
func buildTar(t testing.TB, members []member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o644, Size: int64(len(m.body))}
		switch m.typ {
		case tar.TypeDir:
			hdr.Mode, hdr.Size = 0o755, 0
		case tar.TypeSymlink, tar.TypeLink:
			hdr.Linkname, hdr.Size = m.body, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(m.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// statsDump encodes a stats-dump file with the given dump_stats_entry body.
func statsDump(dump []byte) []byte {
	msg := protowire.AppendTag(nil, 1, protowire.BytesType)
	msg = protowire.AppendBytes(msg, dump)
	b := binary.LittleEndian.AppendUint32(nil, stats.ImgServiceMagic)
	b = binary.LittleEndian.AppendUint32(b, stats.StatsMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(msg)))
	return append(b, msg...)
}

// dumpEntry encodes a dump_stats_entry with field n set to values[n].
func dumpEntry(values map[protowire.Number]uint64) []byte {
	var b []byte
	for n := protowire.Number(1); n <= 14; n++ {
		if v, ok := values[n]; ok {
			b = protowire.AppendTag(b, n, protowire.VarintType)
			b = protowire.AppendVarint(b, v)
		}
	}
	return b
}

func requiredDumpFields() map[protowire.Number]uint64 {
	return map[protowire.Number]uint64{1: 10, 2: 2000, 3: 500, 4: 200, 5: 100, 6: 0, 7: 2, 9: 0}
}

const (
	testConfig = `{"id":"abc123","name":"web","rootfsImage":"sha256:1111","rootfsImageRef":"docker.io/library/web@sha256:2222",` +
		`"rootfsImageName":"docker.io/library/web:1","runtime":"runc","createdTime":"2025-01-02T03:04:05Z","checkpointedTime":"2025-01-02T03:05:00Z"}`
	testSpec = `{"ociVersion":"1.2.0","hostname":"web-0","process":{"args":["/bin/web","-v"],"env":["A=1"],"cwd":"/srv"},` +
		`"mounts":[{"destination":"/data","type":"bind","source":"/var/data","options":["rbind"]}],` +
		`"annotations":{"k":"v"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]}}`
)

// synthetic returns the members of a small valid archive.
func synthetic() []member {
	return []member{
		{"checkpoint/", tar.TypeDir, ""},
		file("checkpoint/core-1.img", "core"),
		file("checkpoint/pages-1.img", strings.Repeat("p", 8192)),
		file("checkpoint/pagemap-1.img", "pagemap"),
		file("config.dump", testConfig),
		file("spec.dump", testSpec),
		file("stats-dump", string(statsDump(dumpEntry(requiredDumpFields())))),
		file("rootfs-diff.tar", strings.Repeat("r", 1536)),
		file("dump.log", "log"),
	}
}

func readBytes(b []byte) (*Info, error) {
	return ReadFrom(bytes.NewReader(b), int64(len(b)), "/x.tar")
}

func TestReadSynthetic(t *testing.T) {
	data := buildTar(t, synthetic())
	info, err := readBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	if info.Container != "web" || info.ID != "abc123" || info.Image != "docker.io/library/web:1" ||
		info.ImageRef != "docker.io/library/web@sha256:2222" || info.Runtime != "runc" {
		t.Errorf("metadata = %+v", info)
	}
	if info.CheckpointSize != 4+8192+7 || info.PagesSize != 8192 || info.RootfsDiffSize != 1536 || info.Files != 8 ||
		info.ArchiveSize != int64(len(data)) {
		t.Errorf("sizes = checkpoint %d, pages %d, rootfs diff %d, files %d, archive %d",
			info.CheckpointSize, info.PagesSize, info.RootfsDiffSize, info.Files, info.ArchiveSize)
	}
	if info.Spec.Hostname != "web-0" || info.Spec.Process.Cwd != "/srv" || len(info.Spec.Linux.Namespaces) != 2 ||
		info.Spec.Mounts[0] != (Mount{"/data", "bind", "/var/data"}) || info.Spec.Annotations["k"] != "v" {
		t.Errorf("Spec = %+v", info.Spec)
	}
	if info.Stats == nil || info.Stats.FrozenTime != 2*time.Millisecond || info.Stats.PagesWritten != 2 {
		t.Errorf("Stats = %+v", info.Stats)
	}

	// rootfsImage stands in for a missing rootfsImageName.
	m := synthetic()
	m[4].body = `{"name":"web","rootfsImage":"img:1"}`
	if info, err := readBytes(buildTar(t, m)); err != nil || info.Image != "img:1" {
		t.Errorf("Image = %v, %v; want img:1", info, err)
	}

	// Member names may start with "./", and a "./" entry may be present.
	m = slices.Insert(synthetic(), 0, member{"./", tar.TypeDir, ""})
	for i := range m[1:] {
		m[i+1].name = "./" + m[i+1].name
	}
	if _, err := readBytes(buildTar(t, m)); err != nil {
		t.Errorf("./-prefixed names: %v", err)
	}

	// The checkpoint/ directory entry is optional when files are inside it.
	if _, err := readBytes(buildTar(t, synthetic()[1:])); err != nil {
		t.Errorf("no checkpoint/ entry: %v", err)
	}

	// Zero padding to a full tar record is allowed.
	padded := append(slices.Clone(data), make([]byte, 10240-len(data)%10240)...)
	if _, err := readBytes(padded); err != nil {
		t.Errorf("record padding: %v", err)
	}

	// Without stats-dump there are no statistics and no statistics section.
	m = slices.DeleteFunc(synthetic(), func(m member) bool { return m.name == "stats-dump" })
	info, err = readBytes(buildTar(t, m))
	if err != nil || info.Stats != nil {
		t.Fatalf("without stats-dump: %+v, %v", info, err)
	}
	var out bytes.Buffer
	if err := info.Write(&out); err != nil || strings.Contains(out.String(), "CRIU") {
		t.Errorf("report without stats:\n%s", out.String())
	}

	// The same archive, gzip-compressed.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()
	if info, err := readBytes(gz.Bytes()); err != nil || info.Container != "web" || info.ArchiveSize != int64(gz.Len()) {
		t.Errorf("gzip: %+v, %v", info, err)
	}
}

func TestReadRejects(t *testing.T) {
	without := func(name string) []member {
		return slices.DeleteFunc(synthetic(), func(m member) bool { return m.name == name })
	}
	with := func(extra ...member) []member { return append(synthetic(), extra...) }
	replace := func(name, body string) []member {
		m := synthetic()
		for i := range m {
			if m[i].name == name {
				m[i].body = body
			}
		}
		return m
	}
	badMagic := statsDump(dumpEntry(requiredDumpFields()))
	binary.LittleEndian.PutUint32(badMagic, 0xdeadbeef)

	tests := []struct {
		name    string
		members []member
		want    string
	}{
		{"missing config.dump", without("config.dump"), "archive /x.tar: missing config.dump"},
		{"missing spec.dump", without("spec.dump"), "missing spec.dump"},
		{"missing checkpoint dir", slices.DeleteFunc(synthetic(), func(m member) bool {
			return strings.HasPrefix(m.name, "checkpoint/")
		}), "missing checkpoint/ directory"},
		{"checkpoint is a file", append(slices.DeleteFunc(synthetic(), func(m member) bool {
			return strings.HasPrefix(m.name, "checkpoint/")
		}), file("checkpoint", "x")), "missing checkpoint/ directory"},
		{"dotdot", with(file("../evil", "x")), `member "../evil": unsafe member name: contains ".."`},
		{"nested dotdot", with(file("checkpoint/../../evil", "x")), `member "checkpoint/../../evil": unsafe member name`},
		{"absolute", with(file("/etc/passwd", "x")), `member "/etc/passwd": unsafe member name: absolute name`},
		{"symlink", with(member{"checkpoint/link", tar.TypeSymlink, "/etc/shadow"}),
			`member "checkpoint/link": unsupported member type: symbolic link to "/etc/shadow"`},
		{"hardlink", with(member{"link", tar.TypeLink, "config.dump"}), `member "link": unsupported member type: hard link`},
		{"device", with(member{"dev", tar.TypeChar, ""}), `member "dev": unsupported member type: character device`},
		{"fifo", with(member{"fifo", tar.TypeFifo, ""}), `member "fifo": unsupported member type: FIFO`},
		{"duplicate", with(file("config.dump", testConfig)), `member "config.dump": duplicate member`},
		{"duplicate after cleaning", with(file("./spec.dump", testSpec)), `member "./spec.dump": duplicate member`},
		{"config JSON", replace("config.dump", `{"name":`), "config.dump: invalid JSON"},
		{"config time", replace("config.dump", `{"createdTime":"yesterday"}`), "config.dump: invalid JSON"},
		{"spec JSON", replace("spec.dump", `[`), "spec.dump: invalid JSON"},
		{"spec trailing", replace("spec.dump", testSpec+"}"), "spec.dump: invalid JSON"},
		{"stats magic", replace("stats-dump", string(badMagic)), "archive /x.tar: stats-dump: bad magic 0xdeadbeef"},
		{"stats short", replace("stats-dump", "abc"), "stats-dump: too short"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readBytes(buildTar(t, tc.members))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestReadRejectsStreams(t *testing.T) {
	data := buildTar(t, synthetic())

	// An oversized metadata member is refused before it is read.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "config.dump", Typeflag: tar.TypeReg, Size: MaxMetadataSize + 1, Mode: 0o644})
	huge := buf.Bytes() // header only

	junk := append(slices.Clone(data), "trailing junk"...)

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a tar archive"},
		{"text", []byte(strings.Repeat("this is not a tar archive\n", 40)), "not a tar archive"},
		{"oversized config.dump", huge, `member "config.dump": too large: 16777217 bytes, above the limit of 16777216`},
		{"trailing junk", junk, "unexpected data after the end of the tar archive"},
		{"odd padding", append(slices.Clone(data), 0, 0, 0), "truncated padding"},
		{"gzip junk", []byte{0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, "gzip: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readBytes(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}

	if _, err := Read(filepath.Join(t.TempDir(), "missing.tar")); err == nil || !strings.Contains(err.Error(), "missing.tar") {
		t.Errorf("Read of a missing file: %v", err)
	}
}

func TestParseStatsDump(t *testing.T) {
	s, err := ParseStatsDump(fixtureStats)
	if err != nil {
		t.Fatal(err)
	}
	if s.FrozenTime != 48402*time.Microsecond || s.PagesWritten != 245 {
		t.Errorf("stats = %+v", s)
	}

	// All fields, unknown fields and a restore entry.
	all := map[protowire.Number]uint64{}
	for n := protowire.Number(1); n <= 14; n++ {
		all[n] = uint64(n) * 1000
	}
	body := dumpEntry(all)
	body = protowire.AppendTag(body, 99, protowire.BytesType)
	body = protowire.AppendBytes(body, []byte("future"))
	b := statsDump(body)
	restore := protowire.AppendTag(nil, 2, protowire.BytesType)
	// A restore_stats_entry with its required fields 1 to 4.
	restore = protowire.AppendBytes(restore, dumpEntry(map[protowire.Number]uint64{1: 5, 2: 6, 3: 7, 4: 8}))
	b = append(b, restore...)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-12))
	s, err = ParseStatsDump(b)
	if err != nil {
		t.Fatal(err)
	}
	want := DumpStats{
		FreezingTime: 1 * time.Millisecond, FrozenTime: 2 * time.Millisecond,
		MemdumpTime: 3 * time.Millisecond, MemwriteTime: 4 * time.Millisecond,
		PagesScanned: 5000, PagesSkippedParent: 6000, PagesWritten: 7000,
		IrmapResolve: 8 * time.Millisecond,
		PagesLazy:    9000, PagePipes: 10000, PagePipeBufs: 11000,
		ShpagesScanned: 12000, ShpagesSkippedParent: 13000, ShpagesWritten: 14000,
	}
	if *s != want {
		t.Errorf("stats = %+v\nwant    %+v", *s, want)
	}

	withSize := func(b []byte, size uint32) []byte {
		b = slices.Clone(b)
		binary.LittleEndian.PutUint32(b[8:], size)
		return b
	}
	missing := requiredDumpFields()
	delete(missing, 7)
	wrongType := statsDump(append(dumpEntry(requiredDumpFields()), byte(protowire.EncodeTag(2, protowire.Fixed32Type)), 1, 2, 3, 4))
	bad := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "stats-dump: too short (0 bytes)"},
		{"service magic", append([]byte{1, 2, 3, 4}, fixtureStats[4:]...), "stats-dump: bad magic 0x04030201 (want 0x55105940)"},
		{"stats magic", append(slices.Clone(fixtureStats[:4]), append([]byte{0x19, 0x43, 0x56, 0x54}, fixtureStats[8:]...)...),
			"stats-dump: bad magic 0x54564319 (want 0x57093306)"},
		{"size too big", withSize(fixtureStats, 38), "stats-dump: bad size 38: 37 bytes follow the header"},
		{"size too small", withSize(fixtureStats, 36), "bad size 36"},
		{"size huge", withSize(fixtureStats, 0xffffffff), "bad size 4294967295"},
		{"truncated message", withSize(fixtureStats[:len(fixtureStats)-1], 36), "bad protobuf"},
		{"no dump", withSize(statsDump(nil)[:12], 0), "no dump statistics"},
		{"empty dump", statsDump(nil), "required field freezing_time not set"},
		{"restore only", withSize(append(slices.Clone(fixtureStats[:12]), restore...), uint32(len(restore))), "no dump statistics"},
		{"missing field", statsDump(dumpEntry(missing)), "required field pages_written not set"},
		{"wrong wire type", wrongType, "wrong wireType = 5 for field FrozenTime"},
		{"bad varint", statsDump([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}), "bad protobuf"},
		{"dump not bytes", withSize(append(slices.Clone(fixtureStats[:12]), 0x08, 0x01), 2), "wrong wireType = 0 for field Dump"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseStatsDump(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	info, err := Read(fixture)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := info.Write(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	lines := strings.Split(out.String(), "\n")
	for _, want := range [][2]string{
		{"Container:", "counter_counter_default_57d8ebed-e1a0-63a2-2b21-e98fccfce407_0"},
		{"Image:", "localhost:5000/counter:latest"},
		{"Image ref:", "localhost:5000/counter@sha256:fa509f245781c717d4b5aeb864259638d9a7000fc8404d6791bf6ca2b557de03"},
		{"ID:", "bee101e2ba3b9337db9f608e2dbf2bed842508c22111d9fbe50c781fe39de4eb"},
		{"Runtime:", "io.containerd.runc.v2"},
		{"Created:", "2026-11-24T23:28:02Z"},
		{"Checkpointed:", "2026-11-24T23:28:05Z"},
		{"Archive size:", "71.6 KiB (73313 bytes)"},
		{"Checkpoint size:", "997.7 KiB (1021627 bytes)"},
		{"  Memory pages:", "980.0 KiB (1003520 bytes)"},
		{"Rootfs diff size:", "197 B"},
		{"Files:", "29"},
		{"CRIU dump statistics", ""},
		{"Freezing time:", "601µs"},
		{"Frozen time:", "48.402ms"},
		{"Memdump time:", "1.343ms"},
		{"Memwrite time:", "660µs"},
		{"Pages scanned:", "319"},
		{"Pages written:", "245"},
		{"Pages skipped (parent):", "0"},
		{"Lazy pages:", "0"},
	} {
		ok := slices.ContainsFunc(lines, func(l string) bool {
			return strings.HasPrefix(l, want[0]) && strings.TrimSpace(strings.TrimPrefix(l, want[0])) == want[1]
		})
		if !ok {
			t.Errorf("report lacks line %q %q", want[0], want[1])
		}
	}
}

func TestJSON(t *testing.T) {
	info, err := Read(fixture)
	if err != nil {
		t.Fatal(err)
	}
	b, err := info.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Container      string `json:"container"`
		ImageRef       string `json:"image_ref"`
		Checkpointed   string `json:"checkpointed"`
		PagesSize      int64  `json:"pages_size"`
		RootfsDiffSize int64  `json:"rootfs_diff_size"`
		Stats          struct {
			FrozenTimeUS int64  `json:"frozen_time_us"`
			PagesWritten uint64 `json:"pages_written"`
		} `json:"stats"`
		Spec struct {
			Process struct {
				Args []string `json:"args"`
			} `json:"process"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Container != info.Container || got.ImageRef != info.ImageRef || got.Checkpointed != "2026-11-24T23:28:05.265235885Z" ||
		got.PagesSize != 1003520 || got.RootfsDiffSize != 197 || got.Stats.FrozenTimeUS != 48402 ||
		got.Stats.PagesWritten != 245 || !slices.Equal(got.Spec.Process.Args, []string{"/counter"}) {
		t.Errorf("JSON:\n%s", b)
	}
	if !bytes.Contains(b, []byte("\n  \"archive_size\": 73313,\n")) {
		t.Errorf("JSON is not indented with snake_case keys:\n%s", b)
	}

	info.Stats = nil
	b, _ = info.JSON()
	if !bytes.Contains(b, []byte(`"stats": null`)) {
		t.Errorf("JSON without stats:\n%s", b)
	}
}

func FuzzParseStatsDump(f *testing.F) {
	f.Add(fixtureStats)
	f.Add(statsDump(dumpEntry(requiredDumpFields())))
	f.Add(fixtureStats[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatsDump(b)
		if (s == nil) == (err == nil) {
			t.Fatalf("ParseStatsDump = %v, %v", s, err)
		}
	})
}

func FuzzReadFrom(f *testing.F) {
	small := buildTar(f, synthetic())
	f.Add(small)
	f.Add(small[:1000])
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(small)
	zw.Close()
	f.Add(gz.Bytes())
	f.Add(buildTar(f, []member{file("../x", "y")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		info, err := ReadFrom(bytes.NewReader(b), int64(len(b)), "fuzz")
		if (info == nil) == (err == nil) {
			t.Fatalf("ReadFrom = %v, %v", info, err)
		}
		if err == nil {
			if err := info.Write(new(bytes.Buffer)); err != nil {
				t.Fatal(err)
			}
			if _, err := info.JSON(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestReadStatsMatchesRead(t *testing.T) {
	plain := filepath.Join(t.TempDir(), "a.tar")
	f, err := os.Open("testdata/counter-checkpoint.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	out.Close()
	info, err := Read(plain)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ReadStats(plain)
	if err != nil || s == nil || *s != *info.Stats {
		t.Fatalf("ReadStats = %+v, %v; Read's stats %+v", s, err, info.Stats)
	}
}
