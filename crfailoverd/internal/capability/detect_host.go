package capability

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// SystemHost asks the machine it runs on.
type SystemHost struct {
	// CRIU is the criu binary to ask its version (a path, or a name
	// looked up on PATH); "" skips CRIU (the version is then unknown, as
	// on the bed, where CRIU lives inside the node's root file system).
	CRIU string
	// CPUInfoPath is /proc/cpuinfo unless set (for tests).
	CPUInfoPath string
}

// KernelRelease returns uname's release.
func (h SystemHost) KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// CPUInfo reads /proc/cpuinfo.
func (h SystemHost) CPUInfo() ([]byte, error) {
	p := h.CPUInfoPath
	if p == "" {
		p = "/proc/cpuinfo"
	}
	return os.ReadFile(p)
}

// criuTimeout bounds `criu --version`.
const criuTimeout = 5 * time.Second

// CRIUVersion runs `CRIU --version`; "" without error when CRIU is "".
func (h SystemHost) CRIUVersion(ctx context.Context) (string, error) {
	if h.CRIU == "" {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, criuTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, h.CRIU, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", h.CRIU, err)
	}
	v := ParseCRIUVersion(out)
	if v == "" {
		return "", fmt.Errorf("%s --version: no version in %q", h.CRIU, strings.TrimSpace(string(out)))
	}
	return v, nil
}

// FindCRIU returns the criu binary on PATH or in /usr/sbin, "" when there
// is none.
func FindCRIU() string {
	if p, err := exec.LookPath("criu"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/criu", "/usr/local/sbin/criu"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// ParseCRIUVersion reads the version from `criu --version`
// ("Version: 4.2.1", then maybe "GitID: ..."); "" when there is none.
func ParseCRIUVersion(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// ParseCPUFlags returns the CPU flags every processor of /proc/cpuinfo
// has (the intersection of its "flags" lines), sorted, without
// duplicates; nil when there is no flags line (as on arm64, whose lines
// are "Features").
func ParseCPUFlags(cpuinfo []byte) []string {
	var common map[string]bool
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		this := map[string]bool{}
		for _, f := range strings.Fields(val) {
			this[f] = true
		}
		if common == nil {
			common = this
			continue
		}
		for f := range common {
			if !this[f] {
				delete(common, f)
			}
		}
	}
	if len(common) == 0 {
		return nil
	}
	out := make([]string, 0, len(common))
	for f := range common {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}
