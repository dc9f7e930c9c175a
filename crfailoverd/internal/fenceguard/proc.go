package fenceguard

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MonoNow reads CLOCK_MONOTONIC in nanoseconds (not wall time: a clock
// step must not move the deadline).
func MonoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err)) // cannot fail on Linux
	}
	return ts.Nano()
}

// Proc reads /proc (Root "" means /proc).
type Proc struct{ Root string }

func (p Proc) path(pid int, f string) string {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(root, strconv.Itoa(pid), f)
}

// Observe reads a PID's start time and cgroup.
func (p Proc) Observe(pid int) (Observed, error) {
	stat, err := os.ReadFile(p.path(pid, "stat"))
	if err != nil {
		return Observed{}, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	st, err := StartTime(stat)
	if err != nil {
		return Observed{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	cg, err := os.ReadFile(p.path(pid, "cgroup"))
	if err != nil {
		return Observed{}, fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	return Observed{StartTime: st, Cgroup: strings.TrimSpace(string(cg))}, nil
}

// Describe makes the Copy for a container's init PID.
func (p Proc) Describe(containerID string, pid int) (Copy, error) {
	o, err := p.Observe(pid)
	if err != nil {
		return Copy{}, fmt.Errorf("describe container %s: %w", containerID, err)
	}
	return Copy{ContainerID: containerID, PID: pid, StartTime: o.StartTime, Cgroup: o.Cgroup}, nil
}

// Alive reports whether c's process still exists (same PID, same start
// time).
func (p Proc) Alive(c Copy) bool {
	o, err := p.Observe(c.PID)
	return err == nil && o.StartTime == c.StartTime
}

// StartTime reads field 22 of a /proc/PID/stat line. The command name
// (field 2) may hold spaces and parentheses: fields are counted after the
// last ')'.
func StartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after the command", len(f))
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat start time %q: %w", f[19], err)
	}
	return v, nil
}

// Killer kills copies: open a pidfd, verify, SIGKILL through the pidfd,
// thaw a frozen cgroup.
type Killer struct {
	Proc Proc
	// Mounts are the cgroup mount points (zero: found in
	// /proc/self/mountinfo).
	Mounts CgroupMounts
}

// Kill kills c. thawed names the cgroup files it wrote to thaw the copy.
// A copy whose process is already gone is not an error (gone is true).
func (k Killer) Kill(c Copy) (gone bool, thawed []string, err error) {
	fd, err := unix.PidfdOpen(c.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return true, nil, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("kill %s: pidfd_open: %w", c, err)
	}
	defer unix.Close(fd)
	// The pidfd pins the process it was opened for: checked after it is
	// open, the start time proves it is the listed one, and a process that
	// dies now makes the signal fail rather than reach a newcomer.
	o, err := k.Proc.Observe(c.PID)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return true, nil, nil
		}
		return false, nil, fmt.Errorf("kill %s: %w", c, err)
	}
	if err := Verify(c, o); err != nil {
		return false, nil, err
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return true, nil, nil
		}
		return false, nil, fmt.Errorf("kill %s: pidfd_send_signal SIGKILL: %w", c, err)
	}
	// Killed first, thawed second: a frozen copy dies as it thaws and
	// never runs again.
	thawed, err = k.Mounts.orFind().Thaw(o.Cgroup)
	if err != nil {
		return false, thawed, fmt.Errorf("kill %s: SIGKILL sent, but %w", c, err)
	}
	return false, thawed, nil
}

// CgroupMounts are where the cgroup v2 hierarchy and the v1 freezer are
// mounted ("" when absent).
type CgroupMounts struct {
	V2       string
	Freezer  string
	resolved bool
}

func (m CgroupMounts) orFind() CgroupMounts {
	if m.resolved || m.V2 != "" || m.Freezer != "" {
		return m
	}
	f, err := FindCgroupMounts("/proc/self/mountinfo")
	if err != nil {
		return CgroupMounts{resolved: true}
	}
	return f
}

// FindCgroupMounts reads a mountinfo file.
func FindCgroupMounts(mountinfo string) (CgroupMounts, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return CgroupMounts{}, fmt.Errorf("find cgroup mounts: %w", err)
	}
	defer f.Close()
	m := CgroupMounts{resolved: true}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch {
		case qf[0] == "cgroup2" && m.V2 == "":
			m.V2 = pf[4]
		case qf[0] == "cgroup" && m.Freezer == "" && hasOpt(qf[2], "freezer"):
			m.Freezer = pf[4]
		}
	}
	return m, sc.Err()
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// Thaw thaws the cgroups a /proc/PID/cgroup text names, where frozen: v2
// cgroup.freeze 1 -> 0, v1 freezer.state FROZEN/FREEZING -> THAWED. It
// returns the files it wrote.
func (m CgroupMounts) Thaw(procCgroup string) ([]string, error) {
	var wrote []string
	var errs []error
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 || !filepath.IsAbs(parts[2]) {
			continue
		}
		var file, frozen, thaw string
		switch {
		case parts[0] == "0" && parts[1] == "" && m.V2 != "":
			file, thaw = filepath.Join(m.V2, parts[2], "cgroup.freeze"), "0"
			frozen = "1"
		case hasOpt(parts[1], "freezer") && m.Freezer != "":
			file, thaw = filepath.Join(m.Freezer, parts[2], "freezer.state"), "THAWED"
		default:
			continue
		}
		if strings.Contains(parts[2], "..") {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("read %s: %w", file, err))
			}
			continue
		}
		st := strings.TrimSpace(string(b))
		if (frozen != "" && st != frozen) || (frozen == "" && st == "THAWED") {
			continue
		}
		if err := os.WriteFile(file, []byte(thaw), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", file, err))
			continue
		}
		wrote = append(wrote, file)
	}
	return wrote, errors.Join(errs...)
}

// Park moves a static pod manifest into dir (same base name), so that
// kubelet stops the pod and does not start it again; the daemon's agent
// puts it back or deletes it once the cluster says who owns the workload.
// A manifest that is gone already is not an error (parked is "").
func Park(manifest, dir string) (parked string, err error) {
	if manifest == "" {
		return "", nil
	}
	if !filepath.IsAbs(manifest) || !filepath.IsAbs(dir) {
		return "", fmt.Errorf("refused to park %q in %q: not absolute paths", manifest, dir)
	}
	b, err := os.ReadFile(manifest)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	dest := filepath.Join(dir, filepath.Base(manifest))
	if err := os.Rename(manifest, dest); err == nil {
		return dest, nil
	}
	// Another file system: write the copy, then remove the original.
	tmp, err := os.CreateTemp(dir, ".park-*")
	if err != nil {
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return "", fmt.Errorf("park the static pod manifest %s: %w", manifest, err)
	}
	if err := os.Remove(manifest); err != nil && !errors.Is(err, os.ErrNotExist) {
		return dest, fmt.Errorf("park the static pod manifest %s: copied to %s, but: %w", manifest, dest, err)
	}
	return dest, nil
}
