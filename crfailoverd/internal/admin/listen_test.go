package admin

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func dial(t *testing.T, path string) {
	t.Helper()
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c.Close()
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestListenSocketMode: the directory is made 0700 and the socket 0600
// whatever the umask, and nothing else is left in the directory.
func TestListenSocketMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "run", "crfailoverd")
	path := filepath.Join(dir, "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %s, want a socket of mode 0600", st.Mode())
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v (%v), want 0700", st.Mode(), err)
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "admin.sock" {
		t.Errorf("directory holds %q, want only admin.sock", got)
	}
	if got := ln.Addr().String(); got != path {
		t.Errorf("Addr() = %q, want %q", got, path)
	}
	dial(t, path)
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

// TestListenRefusesWritableDir: a socket directory that group or others
// may write is refused, naming it, its mode and the fix; the others work.
func TestListenRefusesWritableDir(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, tc := range []struct {
		mode os.FileMode
		want string // "" to accept
	}{
		{0o700, ""},
		{0o750, ""},
		{0o755, ""},
		{0o711, ""},
		{0o770, "mode 0770"},
		{0o720, "mode 0720"},
		{0o702, "mode 0702"},
		{0o757, "mode 0757"},
		{0o777, "mode 0777"},
		{0o777 | os.ModeSticky, "mode 0777"},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "admin.sock")
			ln, err := Listen(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Listen in a %s directory: %v", tc.mode, err)
				}
				dial(t, path)
				ln.Close()
				return
			}
			if err == nil {
				ln.Close()
				t.Fatalf("Listen in a %s directory succeeded, want an error", tc.mode)
			}
			for _, w := range []string{"directory " + dir + " ", tc.want, "group or others may write it", "fix: chmod go-w " + dir} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Listen: %q, want it to contain %q", err, w)
				}
			}
			if got := entries(t, dir); len(got) != 0 {
				t.Errorf("refused Listen left %q in the directory", got)
			}
		})
	}
}

func TestListenReplacesStaleFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	// A socket nobody listens on any more, as a killed daemon leaves it.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	// And the private directory of a daemon killed inside Listen.
	if err := os.MkdirAll(filepath.Join(dir, socketTempPrefix+"123", "s"), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	dial(t, path)
	if got := entries(t, dir); len(got) != 1 || got[0] != "admin.sock" {
		t.Errorf("directory holds %q, want only admin.sock", got)
	}
	ln.Close()

	// A regular file in the way is replaced too.
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	defer ln.Close()
	if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("socket %v (%v), want a socket of mode 0600", st.Mode(), err)
	}
}

func TestListenRefusesLiveDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if ln2, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another crfailoverd is listening there") {
		if err == nil {
			ln2.Close()
		}
		t.Fatalf("second Listen: %v, want another crfailoverd is listening there", err)
	}
	dial(t, path) // the first one still serves
}

// TestCloseKeepsAReplacement: a listener being closed leaves alone a
// socket that has replaced its own at the path.
func TestCloseKeepsAReplacement(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed the replacement: %v", err)
	}
}

func TestListenPathTooLong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	path := filepath.Join(dir, "admin.sock")
	_, err := Listen(path)
	if err == nil || !strings.Contains(err.Error(), "path too long") {
		t.Fatalf("Listen(%s): %v, want path too long", path, err)
	}
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("refused Listen left %q in the directory", got)
	}
}
