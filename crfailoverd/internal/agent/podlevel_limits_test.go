package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
)

// writePodTar packs files (name to content) as tarDir does, into a new
// archive, and returns its path.
func writePodTar(t *testing.T, files map[string]string) string {
	t.Helper()
	src := t.TempDir()
	for name, body := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "pod.tar")
	if err := tarDir(src, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// The pod-level untar reads under the archive limits and the caller's
// context, and unpacks nothing outside its directory.
func TestUntarLimits(t *testing.T) {
	files := map[string]string{"ctr/checkpoint/pages-1.img": strings.Repeat("p", 8000), "ctr/config.dump": "{}"}
	tarPath := writePodTar(t, files)

	out := t.TempDir()
	if err := untar(context.Background(), tarPath, out); err != nil {
		t.Fatalf("untar: %v", err)
	}
	for name, body := range files {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != body {
			t.Errorf("%s: %d bytes, %v", name, len(b), err)
		}
	}

	member, total := archive.DefaultLimits()
	t.Cleanup(func() { archive.SetDefaultLimits(member, total) })
	archive.SetDefaultLimits(4096, 0)
	out = t.TempDir()
	err := untar(context.Background(), tarPath, out)
	var me *archive.MemberError
	if !errors.As(err, &me) || !errors.Is(err, archive.ErrTooLarge) || me.Name != "ctr/checkpoint/pages-1.img" || me.Size != 8000 || me.Limit != 4096 {
		t.Errorf("untar above max_member_bytes: %v, want pages-1.img refused (8000 bytes, limit 4096)", err)
	}
	if _, err := os.Stat(filepath.Join(out, "ctr/checkpoint/pages-1.img")); err == nil {
		t.Error("the refused member was unpacked")
	}
	archive.SetDefaultLimits(member, total)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := untar(ctx, tarPath, t.TempDir()); !errors.Is(err, context.Canceled) {
		t.Errorf("untar with a cancelled context: %v", err)
	}

	// A hostile pod archive: a symlink out of the directory, then a file
	// through it.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	outside := t.TempDir()
	tw.WriteHeader(&tar.Header{Name: "ctr/", Typeflag: tar.TypeDir, Mode: 0o700})
	tw.WriteHeader(&tar.Header{Name: "ctr/link", Typeflag: tar.TypeSymlink, Linkname: outside})
	tw.WriteHeader(&tar.Header{Name: "ctr/link/x", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	hostile := filepath.Join(t.TempDir(), "hostile.tar")
	if err := os.WriteFile(hostile, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out = t.TempDir()
	if err := untar(context.Background(), hostile, out); !errors.Is(err, archive.ErrMemberType) || !strings.Contains(err.Error(), `"ctr/link"`) {
		t.Errorf("untar of a symlink: %v, want ctr/link refused", err)
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Errorf("untar wrote outside its directory: %v", des)
	}
}
