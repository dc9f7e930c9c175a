package testbed

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// envMarker is set in the environment of every process the bed starts, so
// that a teardown finds them even without the bed's state file.
const envMarker = "CRF_BED_OWNER"

func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pids lists the processes for which match is true.
func pids(match func(pid int) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if match(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// inNetns reports whether pid runs in the network namespace with inode ino.
func inNetns(pid int, ino uint64) bool {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return err == nil && l == fmt.Sprintf("net:[%d]", ino)
}

// hasMarker reports whether pid carries the bed's environment marker for dir.
func hasMarker(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("\x00"+envMarker+"="+dir+"\x00")) || bytes.HasPrefix(b, []byte(envMarker+"="+dir+"\x00"))
}

// inBedCgroup reports whether pid is in a cgroup below the bed's root.
func inBedCgroup(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	return err == nil && bytes.Contains(b, []byte(":/"+cgroupRoot+"/"))
}

// killAll sends SIGKILL to every process match selects, again and again
// until none is left (processes may fork while they die) or the deadline
// passes. It returns the processes still alive.
func killAll(match func(pid int) bool, within time.Duration) []int {
	deadline := time.Now().Add(within)
	for {
		left := pids(func(pid int) bool { return match(pid) && !isZombie(pid) })
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		for _, p := range left {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

func describePids(ps []int) string {
	var parts []string
	for _, p := range ps {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		c := strings.Join(strings.Fields(strings.ReplaceAll(string(cmd), "\x00", " ")), " ")
		if len(c) > 60 {
			c = c[:57] + "..."
		}
		parts = append(parts, fmt.Sprintf("%d (%s)", p, c))
	}
	return strings.Join(parts, ", ")
}

// removeBedCgroups removes the cgroups below the bed's root in every
// hierarchy, deepest first. Processes must be gone first.
func removeBedCgroups(within time.Duration) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupRoot)
	if _, err := os.Stat("/sys/fs/cgroup/" + cgroupRoot); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+cgroupRoot)
	}
	deadline := time.Now().Add(within)
	for _, root := range roots {
		for {
			var dirs []string
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			var lastErr error
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !os.IsNotExist(err) {
					lastErr = err
				}
			}
			if lastErr == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("remove cgroups below %s: %w", root, lastErr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// bedCgroups lists the bed's cgroup roots still present.
func bedCgroups() []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupRoot)
	if _, err := os.Stat("/sys/fs/cgroup/" + cgroupRoot); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+cgroupRoot)
	}
	return roots
}

// mountsUnder lists the host's mount points below any of dirs.
func mountsUnder(dirs ...string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		for _, d := range dirs {
			if mp == d || strings.HasPrefix(mp, d+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// thawBedCgroups thaws every frozen cgroup below the bed's root (below
// sub, when not empty): CRIU freezes a container while it dumps it, and a
// frozen process cannot die, so a power cut in the middle of a checkpoint
// would leave it behind.
// thawCgroupsOf thaws the freezer cgroups the given processes are in
// (cgroup v1 freezer and v2), whatever node's path they carry: a pod
// restored from another node's recorded configuration lives under that
// node's cgroup parent, so thawing by node name misses it.
func thawCgroupsOf(pids []int) {
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			// The processes are the bed's (found by its namespace or
			// marker), wherever their cgroup is: a container that CRI-O
			// restores may keep a cgroup path outside /crfbed.
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 || parts[2] == "/" {
				continue
			}
			switch {
			case parts[1] == "freezer":
				_ = os.WriteFile(filepath.Join("/sys/fs/cgroup/freezer", parts[2], "freezer.state"), []byte("THAWED"), 0o644)
			case parts[0] == "0" && parts[1] == "":
				for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
					_ = os.WriteFile(filepath.Join(root, parts[2], "cgroup.freeze"), []byte("0"), 0o644)
				}
			}
		}
	}
}

func thawBedCgroups(sub string) {
	roots := []string{filepath.Join("/sys/fs/cgroup/freezer", cgroupRoot, sub), filepath.Join("/sys/fs/cgroup/unified", cgroupRoot, sub), filepath.Join("/sys/fs/cgroup", cgroupRoot, sub)}
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if _, err := os.Stat(filepath.Join(p, "freezer.state")); err == nil {
				_ = os.WriteFile(filepath.Join(p, "freezer.state"), []byte("THAWED"), 0o644)
			}
			if _, err := os.Stat(filepath.Join(p, "cgroup.freeze")); err == nil {
				_ = os.WriteFile(filepath.Join(p, "cgroup.freeze"), []byte("0"), 0o644)
			}
			return nil
		})
	}
}
