package testbed

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Versions of the runtime stack found in the root file system. CRIO is set
// on beds of CRI-O nodes only.
type Versions struct {
	CRIU, Runc, Containerd string
	CRIO                   string `json:",omitempty"`
}

func (v Versions) String() string {
	s := fmt.Sprintf("criu=%s runc=%s containerd=%s", v.CRIU, v.Runc, v.Containerd)
	if v.CRIO != "" {
		s += " crio=" + v.CRIO
	}
	return s
}

// Minimum versions: older CRIU cannot dump TCP sockets on this kernel, older
// containerd has no CRI checkpoint/restore.
var minVersions = Versions{CRIU: "4.2.0", Runc: "1.3.0", Containerd: "2.1.0"}

const rootfsStamp = ".crfbed-ready"

// rootfsPackages are installed into the root file system.
var rootfsPackages = []string{"criu", "runc", "containerd", "iproute2", "ca-certificates"}

// criuRuncConf is /etc/criu/runc.conf: runc hands it to CRIU on every dump
// and restore. Established TCP connections (a probe's, a client's) would
// otherwise make the dump fail; restored connections come back closed.
const criuRuncConf = "tcp-close\nskip-in-flight\n"

// EnsureRootfs returns the cached root file system, creating it with
// debootstrap when missing, and checks the versions of CRIU, runc and
// containerd in it. Progress goes to log.
func EnsureRootfs(ctx context.Context, c Config, log io.Writer) (string, Versions, error) {
	dir := c.RootfsDir()
	if _, err := os.Stat(filepath.Join(dir, rootfsStamp)); err == nil {
		v, err := readVersions(ctx, dir)
		if err != nil {
			return "", v, err
		}
		return dir, v, checkVersions(v, dir)
	}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		if err := bootstrap(ctx, c, dir, log); err != nil {
			return "", Versions{}, err
		}
	}
	if err := configureRootfs(dir); err != nil {
		return "", Versions{}, err
	}
	v, err := readVersions(ctx, dir)
	if err != nil {
		return "", v, err
	}
	if err := checkVersions(v, dir); err != nil {
		return "", v, err
	}
	if err := os.WriteFile(filepath.Join(dir, rootfsStamp), []byte(v.String()+"\n"), 0o644); err != nil {
		return "", v, fmt.Errorf("mark root file system %s ready: %w", dir, err)
	}
	return dir, v, nil
}

func bootstrap(ctx context.Context, c Config, dir string, log io.Writer) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debootstrap is not installed: run scripts/setup-host.sh (or apt-get install debootstrap)")
	}
	mirror, err := AptMirror()
	if err != nil {
		return err
	}
	// The host's debootstrap may not know the newest suites; testing and
	// unstable share sid's script.
	script := "/usr/share/debootstrap/scripts/sid"
	partial := dir + ".partial"
	if err := os.RemoveAll(partial); err != nil {
		return fmt.Errorf("remove unfinished root file system %s: %w", partial, err)
	}
	if err := os.MkdirAll(c.CacheDir, 0o755); err != nil {
		return fmt.Errorf("create cache directory %s: %w", c.CacheDir, err)
	}
	fmt.Fprintf(log, "testbed: bootstrapping Debian %s into %s from %s (about a minute, cached afterwards)\n", c.Suite, dir, mirror)
	args := []string{"--variant=minbase", "--include=" + strings.Join(rootfsPackages, ","), c.Suite, partial, mirror, script}
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	out, err := os.Create(filepath.Join(c.CacheDir, "debootstrap.log"))
	if err != nil {
		return fmt.Errorf("create debootstrap log: %w", err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		tail, _ := tailFile(out.Name(), 15)
		return fmt.Errorf("debootstrap %s from %s failed: %w (log %s):\n%s", c.Suite, mirror, err, out.Name(), tail)
	}
	if err := os.Rename(partial, dir); err != nil {
		return fmt.Errorf("move root file system into place: %w", err)
	}
	return nil
}

// AptMirror returns the first Debian mirror in the machine's apt
// configuration (deb822 sources or the one-line format).
func AptMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if u := scanFile(f, func(line string) string {
			if rest, ok := strings.CutPrefix(line, "URIs:"); ok {
				for _, u := range strings.Fields(rest) {
					if !strings.Contains(u, "security") {
						return u
					}
				}
			}
			return ""
		}); u != "" {
			return u, nil
		}
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		if u := scanFile(f, func(line string) string {
			fs := strings.Fields(line)
			if len(fs) >= 3 && fs[0] == "deb" {
				for _, x := range fs[1:] {
					if strings.Contains(x, "://") && !strings.Contains(x, "security") {
						return x
					}
				}
			}
			return ""
		}); u != "" {
			return u, nil
		}
	}
	return "", fmt.Errorf("no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d: configure apt first")
}

func scanFile(path string, match func(string) string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v := match(strings.TrimSpace(sc.Text())); v != "" {
			return v
		}
	}
	return ""
}

// configureRootfs writes what the runtime needs inside the root file system.
// It is idempotent.
func configureRootfs(dir string) error {
	files := map[string]string{
		"etc/hosts":          "127.0.0.1 localhost\n::1 localhost\n",
		"etc/criu/runc.conf": criuRuncConf,
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/resolv.conf")); err != nil {
		files["etc/resolv.conf"] = "# crfailoverd test bed: no name service\n"
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("configure root file system: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("configure root file system: %w", err)
		}
	}
	return nil
}

var versionRE = regexp.MustCompile(`(\d+\.\d+(?:\.\d+)?)`)

func readVersions(ctx context.Context, dir string) (Versions, error) {
	var v Versions
	for _, x := range []struct {
		dst  *string
		args []string
	}{
		{&v.CRIU, []string{"criu", "--version"}},
		{&v.Runc, []string{"runc", "--version"}},
		{&v.Containerd, []string{"containerd", "--version"}},
	} {
		out, err := exec.CommandContext(ctx, "chroot", append([]string{dir}, x.args...)...).CombinedOutput()
		if err != nil {
			return v, fmt.Errorf("run %s in %s: %w: %s (remove %s to bootstrap it again)", x.args[0], dir, err, strings.TrimSpace(string(out)), dir)
		}
		// containerd prints its module path first; the version follows it.
		line := strings.SplitN(string(out), "\n", 2)[0]
		fields := strings.Fields(line)
		for _, f := range fields {
			if m := versionRE.FindString(f); m != "" && (strings.HasPrefix(f, m) || strings.HasPrefix(f, "v"+m)) {
				*x.dst = m
				break
			}
		}
		if *x.dst == "" {
			return v, fmt.Errorf("cannot read the version of %s from %q", x.args[0], line)
		}
	}
	return v, nil
}

func checkVersions(v Versions, dir string) error {
	for _, x := range []struct{ name, have, min string }{
		{"criu", v.CRIU, minVersions.CRIU},
		{"runc", v.Runc, minVersions.Runc},
		{"containerd", v.Containerd, minVersions.Containerd},
	} {
		if CompareVersions(x.have, x.min) < 0 {
			return fmt.Errorf("%s %s in %s is older than %s, the oldest that works on this kernel: remove %s and set %s to a newer Debian suite", x.name, x.have, dir, x.min, dir, EnvSuite)
		}
	}
	return nil
}

// CompareVersions compares dotted numeric versions ("2.1.9" < "2.10.0"):
// -1, 0 or 1.
func CompareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

func tailFile(path string, n int) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), nil
}
