package testbed

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Environment variables of the containerd flavors: containerd nodes that
// run a containerd built from the Go module proxy (scripts/build-containerd.sh)
// instead of the Debian root file system's.
const (
	// EnvContainerd is the containerd version every containerd node runs:
	// one of ContainerdVersions, or empty for the root file system's
	// (Debian's 2.1.9).
	EnvContainerd = "CRF_BED_CONTAINERD"
	// EnvContainerdRestore: 1 turns restore through CreateContainer on
	// (enable_experimental_restore_via_create) on nodes whose built
	// containerd has the option but leaves it off (2.2, 2.3).
	EnvContainerdRestore = "CRF_BED_CONTAINERD_RESTORE"
	// EnvNodeRuntimes gives nodes their own runtime, as a comma-separated
	// list of NODE=RUNTIME, RUNTIME being containerd (Debian's),
	// containerd-VERSION (a built one), containerd-VERSION+restore (a
	// built 2.2/2.3 with restore through CreateContainer turned on for
	// that node alone, as EnvContainerdRestore does for every node) or
	// crio, e.g. "n1=containerd,n2=containerd-2.3.7+restore,n3=crio,
	// n4=containerd-2.3.7". Nodes not named run the bed's runtime
	// (CRF_BED_RUNTIME, CRF_BED_CONTAINERD).
	EnvNodeRuntimes = "CRF_BED_NODE_RUNTIMES"
)

// restoreSuffix asks, in EnvNodeRuntimes, for restore through
// CreateContainer on one node's built containerd.
const restoreSuffix = "+restore"

// ContainerdVersions are the containerd releases the bed can build as node
// flavors: the newest 2.3 and 2.4 the Go module proxy serves.
var ContainerdVersions = []string{"2.3.7", "2.4.2"}

// NodeRuntime is the runtime of one node: RuntimeContainerd (with the
// version of a built containerd, "" for the root file system's) or
// RuntimeCRIO. Restore turns restore through CreateContainer on for this
// node's built containerd (EnvNodeRuntimes' "+restore"), whatever
// EnvContainerdRestore says for the bed.
type NodeRuntime struct {
	Runtime    string `json:"runtime"`
	Containerd string `json:"containerd,omitempty"`
	Restore    bool   `json:"restore,omitempty"`
}

func (r NodeRuntime) String() string {
	if r.Runtime == RuntimeContainerd && r.Containerd != "" {
		s := RuntimeContainerd + "-" + r.Containerd
		if r.Restore {
			s += restoreSuffix
		}
		return s
	}
	return r.Runtime
}

// ContainerdFlavor is the bed's choice of containerd builds.
type ContainerdFlavor struct {
	Version string                 // EnvContainerd: "" for the root file system's containerd
	Restore bool                   // EnvContainerdRestore
	Nodes   map[string]NodeRuntime // EnvNodeRuntimes, by node name
}

// parseContainerdFlavor reads the containerd flavor from getenv.
func parseContainerdFlavor(getenv func(string) string) (ContainerdFlavor, error) {
	var f ContainerdFlavor
	f.Version = strings.TrimPrefix(getenv(EnvContainerd), "v")
	if f.Version != "" && !slices.Contains(ContainerdVersions, f.Version) {
		return f, fmt.Errorf("%s=%q: want one of %s (or empty for the root file system's containerd)", EnvContainerd, getenv(EnvContainerd), strings.Join(ContainerdVersions, ", "))
	}
	switch v := getenv(EnvContainerdRestore); v {
	case "", "0":
	case "1":
		f.Restore = true
	default:
		return f, fmt.Errorf("%s=%q: want 1 or 0", EnvContainerdRestore, v)
	}
	nodes, err := ParseNodeRuntimes(getenv(EnvNodeRuntimes))
	if err != nil {
		return f, err
	}
	f.Nodes = nodes
	return f, nil
}

// ParseNodeRuntimes parses EnvNodeRuntimes ("n1=containerd,n2=containerd-2.4.2,n3=crio").
func ParseNodeRuntimes(s string) (map[string]NodeRuntime, error) {
	out := map[string]NodeRuntime{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		node, rt, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || !validNodeName(node) {
			return nil, fmt.Errorf("%s: %q: want NODE=RUNTIME, NODE being n1, n2 or another nN", EnvNodeRuntimes, item)
		}
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("%s: node %s named twice", EnvNodeRuntimes, node)
		}
		var r NodeRuntime
		switch {
		case rt == RuntimeContainerd || rt == RuntimeCRIO:
			r.Runtime = rt
		case strings.HasPrefix(rt, RuntimeContainerd+"-"):
			version, restore := strings.CutSuffix(strings.TrimPrefix(rt, RuntimeContainerd+"-"), restoreSuffix)
			r.Runtime, r.Containerd, r.Restore = RuntimeContainerd, strings.TrimPrefix(version, "v"), restore
			if !slices.Contains(ContainerdVersions, r.Containerd) {
				return nil, fmt.Errorf("%s: node %s: containerd version %q: want one of %s", EnvNodeRuntimes, node, r.Containerd, strings.Join(ContainerdVersions, ", "))
			}
			if restore && !containerdRestoreViaCreate(r.Containerd, true, true) {
				return nil, fmt.Errorf("%s: node %s: %q: containerd %s has no enable_experimental_restore_via_create to turn on (2.2 and 2.3 have it; drop %s)", EnvNodeRuntimes, node, rt, r.Containerd, restoreSuffix)
			}
		default:
			return nil, fmt.Errorf("%s: node %s: runtime %q: want %s, %s-VERSION[%s] (VERSION one of %s) or %s", EnvNodeRuntimes, node, rt, RuntimeContainerd, RuntimeContainerd, restoreSuffix, strings.Join(ContainerdVersions, ", "), RuntimeCRIO)
		}
		out[node] = r
	}
	return out, nil
}

func validNodeName(s string) bool {
	if len(s) < 2 || s[0] != 'n' || s[1] == '0' {
		return false
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// nodeRuntime is the runtime node name runs on a bed with configuration c.
func (c Config) nodeRuntime(name string) NodeRuntime {
	if r, ok := c.Containerd.Nodes[name]; ok {
		return r
	}
	r := NodeRuntime{Runtime: c.Runtime}
	if r.Runtime == RuntimeContainerd {
		r.Containerd = c.Containerd.Version
	}
	return r
}

// containerdRestore reports whether the bed asks for restore through
// CreateContainer on node's built containerd: for every node
// (EnvContainerdRestore) or for this one (EnvNodeRuntimes' "+restore").
// containerdRestoreViaCreate decides whether its version has the option.
func (c Config) containerdRestore(node string) bool {
	return c.Containerd.Restore || c.Containerd.Nodes[node].Restore
}

// nodeRuntimes are the runtimes nodes n1 to nN run, sorted by node.
func (c Config) nodeRuntimes(n int) []NodeRuntime {
	out := make([]NodeRuntime, n)
	for i := range out {
		out[i] = c.nodeRuntime(fmt.Sprintf("n%d", i+1))
	}
	return out
}

// Where a containerd build and the node root file system with it are
// cached.
func containerdBuildDir(c Config, version string) string {
	return filepath.Join(c.CacheDir, "containerd-v"+version)
}
func containerdRootfsDir(c Config, version string) string {
	return c.RootfsDir() + "-containerd-v" + version
}

// The built binaries, over Debian's in the node root file system copy.
var containerdBinaries = map[string]string{
	"containerd":              "/usr/bin/containerd",
	"containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
}

// EnsureContainerd builds containerd version (one of ContainerdVersions)
// with scripts/build-containerd.sh once, cached, and prepares the node root
// file system that runs it: a copy of the node root file system with the
// built containerd and shim over Debian's. It returns that root file
// system's path. Progress goes to log.
func EnsureContainerd(ctx context.Context, c Config, version string, log io.Writer) (string, error) {
	if !slices.Contains(ContainerdVersions, version) {
		return "", fmt.Errorf("containerd %q: the bed builds %s", version, strings.Join(ContainerdVersions, ", "))
	}
	build := containerdBuildDir(c, version)
	script := filepath.Join(c.ModuleDir, "scripts", "build-containerd.sh")
	cmd := exec.CommandContext(ctx, "bash", script, version, build)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build containerd v%s with %s into %s: %w (its output is above)", version, script, build, err)
	}
	base, _, err := EnsureRootfs(ctx, c, log)
	if err != nil {
		return "", err
	}
	dir := containerdRootfsDir(c, version)
	if _, err := os.Stat(filepath.Join(dir, rootfsStamp)); err != nil {
		partial := dir + ".partial"
		if err := os.RemoveAll(partial); err != nil {
			return "", fmt.Errorf("remove unfinished containerd v%s root file system %s: %w", version, partial, err)
		}
		fmt.Fprintf(log, "testbed: preparing the containerd v%s root file system %s: a copy of %s\n", version, dir, base)
		if out, err := exec.CommandContext(ctx, "cp", "-a", base, partial).CombinedOutput(); err != nil {
			return "", fmt.Errorf("copy %s to %s: %w: %s", base, partial, err, strings.TrimSpace(string(out)))
		}
		if err := os.Remove(filepath.Join(partial, rootfsStamp)); err != nil && !os.IsNotExist(err) {
			return "", fmt.Errorf("unmark %s: %w", partial, err)
		}
		if err := os.Rename(partial, dir); err != nil {
			return "", fmt.Errorf("move containerd v%s root file system into place: %w", version, err)
		}
	}
	// Copied on every call, as CRI-O's: a rebuilt binary reaches the
	// cached root file system.
	for name, to := range containerdBinaries {
		if err := syncFile(filepath.Join(build, name), filepath.Join(dir, to)); err != nil {
			return "", fmt.Errorf("copy %s into the containerd v%s root file system %s: %w", name, version, dir, err)
		}
	}
	v, err := readVersions(ctx, dir)
	if err != nil {
		return "", err
	}
	if v.Containerd != version {
		return "", fmt.Errorf("the containerd v%s root file system %s runs containerd %s: remove %s to prepare it again", version, dir, v.Containerd, dir)
	}
	if err := os.WriteFile(filepath.Join(dir, rootfsStamp), []byte(v.String()+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("mark containerd v%s root file system %s ready: %w", version, dir, err)
	}
	fmt.Fprintf(log, "testbed: containerd v%s root file system %s: %s\n", version, dir, v)
	return dir, nil
}

// EnsureContainerdFlavors builds and prepares every containerd version the
// first n nodes of a bed with configuration c run (none for the root file
// system's containerd), and CRI-O when one of them runs it.
func EnsureContainerdFlavors(ctx context.Context, c Config, n int, log io.Writer) error {
	seen := map[string]bool{}
	var versions []string
	for _, r := range c.nodeRuntimes(n) {
		if r.Runtime == RuntimeContainerd && r.Containerd != "" && !seen[r.Containerd] {
			seen[r.Containerd] = true
			versions = append(versions, r.Containerd)
		}
	}
	sort.Strings(versions)
	for _, v := range versions {
		if _, err := EnsureContainerd(ctx, c, v, log); err != nil {
			return err
		}
	}
	return nil
}

// anyNodeRuns reports whether one of the first n nodes runs runtime.
func (c Config) anyNodeRuns(n int, runtime string) bool {
	return slices.ContainsFunc(c.nodeRuntimes(n), func(r NodeRuntime) bool { return r.Runtime == runtime })
}

// containerdRestoreViaCreate decides whether a node's containerd config
// sets enable_experimental_restore_via_create. A built containerd gets it
// when the bed asks (EnvContainerdRestore) and has the option: 2.2 and 2.3
// (off by default there; 2.4 removed restore through CreateContainer), so
// that a 2.3 node with restore left off can be had. The root file
// system's containerd gets it from 2.3 on, as before the flavors (a
// containerd without the option ignores it).
func containerdRestoreViaCreate(version string, built, restore bool) bool {
	if !built {
		return CompareVersions(version, "2.3.0") >= 0
	}
	return restore && CompareVersions(version, "2.2.0") >= 0 && CompareVersions(version, "2.4.0") < 0
}
