package nativerestore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

type member struct {
	name string
	typ  byte
	data string
}

func writeTar(t *testing.T, ms []member) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o644, Size: int64(len(m.data))}
		if m.typ == tar.TypeDir {
			h.Mode, h.Size = 0o755, 0
		}
		if m.typ == tar.TypeSymlink {
			h.Linkname, h.Size = "/etc/shadow", 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(m.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "a.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const specDump = `{"mounts":[{"destination":"/proc","type":"proc","source":"proc"},
{"destination":"/etc/hosts","type":"bind","source":"/old/hosts","options":["rbind","rprivate","rw"]},
{"destination":"/dev/shm","type":"","source":"/old/shm","options":["rbind"]}]}`

func TestExtract(t *testing.T) {
	p := writeTar(t, []member{
		{name: "checkpoint", typ: tar.TypeDir},
		{name: "checkpoint/core-1.img", typ: tar.TypeReg, data: "core"},
		{name: "./checkpoint/pages-1.img", typ: tar.TypeReg, data: "pages"},
		{name: "rootfs-diff.tar", typ: tar.TypeReg, data: "diff"},
		{name: "spec.dump", typ: tar.TypeReg, data: specDump},
		{name: "config.dump", typ: tar.TypeReg, data: `{"rootfsImageRef":"sha256:abc"}`},
		{name: "stats-dump", typ: tar.TypeReg, data: "s"},
	})
	dir := filepath.Join(t.TempDir(), "x")
	d, err := extract(context.Background(), p, dir, archive.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.Binds, []string{"/etc/hosts", "/dev/shm"}) || d.ImageRef != "sha256:abc" || !d.RootfsDiff {
		t.Errorf("dumped %+v", d)
	}
	for name, want := range map[string]string{"checkpoint/core-1.img": "core", "checkpoint/pages-1.img": "pages", "rootfs-diff.tar": "diff"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v", name, b, err)
		}
		if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, st.Mode().Perm())
		}
	}
	for _, name := range []string{"spec.dump", "config.dump", "stats-dump"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s extracted: only CRIU's images and rootfs-diff.tar are", name)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("extraction directory: %v %v, want 0700", st, err)
	}
}

func TestExtractRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		ms   []member
		want string
		is   error
	}{
		{name: "no checkpoint", ms: []member{{name: "spec.dump", typ: tar.TypeReg, data: "{}"}}, want: "no checkpoint/"},
		{name: "symlink in checkpoint", ms: []member{{name: "checkpoint/x", typ: tar.TypeSymlink}}, is: archive.ErrMemberType},
		{name: "dot-dot", ms: []member{{name: "checkpoint/../../etc/passwd", typ: tar.TypeReg, data: "x"}}, is: archive.ErrUnsafeName},
		{name: "bad spec.dump", ms: []member{{name: "checkpoint/", typ: tar.TypeDir}, {name: "spec.dump", typ: tar.TypeReg, data: "{"}}, want: "spec.dump"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeTar(t, tc.ms)
			_, err := extract(context.Background(), p, filepath.Join(t.TempDir(), "x"), archive.Options{})
			if err == nil {
				t.Fatal("extracted")
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want one wrapping %v", err, tc.is)
			}
		})
	}
	// The directory must be new: an extraction never writes into an
	// existing one.
	p := writeTar(t, []member{{name: "checkpoint/", typ: tar.TypeDir}})
	if _, err := extract(context.Background(), p, t.TempDir(), archive.Options{}); err == nil {
		t.Error("extracted into an existing directory")
	}
}
