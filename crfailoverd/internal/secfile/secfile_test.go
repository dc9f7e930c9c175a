package secfile

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivate(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is cut by the umask
			t.Fatal(err)
		}
		return p
	}
	link := func(name, target string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		path string
		want []string // parts of the error; nil: no error
	}{
		{"0600", file("k600", 0o600), nil},
		{"0400", file("k400", 0o400), nil},
		{"0700 (owner execute is the owner's business)", file("k700", 0o700), nil},
		{"0000", file("k000", 0o000), nil},
		{"0640 group read", file("k640", 0o640), []string{"k640 has mode 0640", "chmod 600 " + filepath.Join(dir, "k640")}},
		{"0620 group write", file("k620", 0o620), []string{"mode 0620", "chmod 600"}},
		{"0610 group execute", file("k610", 0o610), []string{"mode 0610", "chmod 600"}},
		{"0604 others read", file("k604", 0o604), []string{"mode 0604", "chmod 600"}},
		{"0602 others write", file("k602", 0o602), []string{"mode 0602", "chmod 600"}},
		{"0644", file("k644", 0o644), []string{"mode 0644", "group or others", "chmod 600"}},
		{"0666", file("k666", 0o666), []string{"mode 0666"}},
		{"0777", file("k777", 0o777), []string{"mode 0777"}},
		{"link to a 0600 file", link("l600", filepath.Join(dir, "k600")), nil},
		{"link to a 0644 file", link("l644", filepath.Join(dir, "k644")), []string{"l644 has mode 0644", "chmod 600 " + filepath.Join(dir, "l644")}},
		{"directory", sub, []string{sub, "is not a regular file", "drwx------"}},
		{"socket", sock, []string{sock, "is not a regular file"}},
		{"device", "/dev/null", []string{"/dev/null", "is not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPrivate(tc.path)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckPrivate(%s) = %v, want nil", tc.path, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckPrivate(%s) = nil, want an error with %q", tc.path, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("CheckPrivate(%s) = %q, want it to contain %q", tc.path, err, w)
				}
			}
		})
	}
}

func TestCheckPrivateMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none")
	err := CheckPrivate(p)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Errorf("CheckPrivate of a missing file = %v, want fs.ErrNotExist naming %s", err, p)
	}
	// A dangling link is missing too.
	l := filepath.Join(t.TempDir(), "dangling")
	if err := os.Symlink(p, l); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(l); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckPrivate of a dangling link = %v, want fs.ErrNotExist", err)
	}
}

func TestCheckPrivateRefusesAnotherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	p := filepath.Join(t.TempDir(), "node.key")
	if err := os.WriteFile(p, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(p); err != nil {
		t.Fatalf("own key: %v", err)
	}
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(p); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("CheckPrivate of a key owned by nobody: %v; want a refusal naming the owner", err)
	}
}
