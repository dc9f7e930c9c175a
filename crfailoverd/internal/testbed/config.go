// Package testbed runs crfailoverd's real multi-node test bed on one
// machine: every node is a network namespace on a bridge the bed creates,
// with its own containerd (from a cached Debian testing root file system
// holding CRIU, runc and containerd), and a kubelet checkpoint emulator. A
// registry on loopback serves the test application and pause images in
// every node. Nothing in it is mocked: checkpoints and restores go through
// containerd's CRI, runc and CRIU.
//
// Programs that start a bed (the nodebed command and test binaries) must
// call HelperMain first thing in main or TestMain: the bed re-executes the
// running binary for its long-lived helpers (registry, kubelet emulators).
package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// Environment variables that configure the bed, with their defaults.
const (
	EnvCache        = "CRF_BED_CACHE"         // root file system cache (default /var/cache/crfailoverd-bed)
	EnvDir          = "CRF_BED_DIR"           // state of the running bed (default /var/lib/crfailoverd-bed)
	EnvSubnet       = "CRF_BED_SUBNET"        // bridge subnet, a /24 (default 10.77.0.0/24)
	EnvRegistryPort = "CRF_BED_REGISTRY_PORT" // registry port on every loopback (default 5000)
	EnvSuite        = "CRF_BED_SUITE"         // Debian suite of the root file system (default forky)
	EnvRuntime      = "CRF_BED_RUNTIME"       // container runtime of every node: containerd or crio (default containerd)
	EnvKubelet      = "CRF_BED_KUBELET"       // 1: every node runs a real kubelet in standalone mode (default 0: the checkpoint emulator)
	EnvCRIOPatched  = "CRF_BED_CRIO_PATCHED"  // 1: CRI-O nodes run CRI-O built with 0001-customization.patch (default 0: as released)
)

// Runtimes a bed node can run.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "crio"
)

// Names the bed gives to what it creates on the host, so that leftovers of
// an earlier run can always be found.
const (
	netnsPrefix = "crfbed-"
	bridgeName  = "crfbed0"
	cgroupRoot  = "crfbed"
	// KubeletPort is the port of the kubelet checkpoint emulator.
	KubeletPort = 10250
	// AppPort is the port of the counter test application.
	AppPort = 8080
)

// Config says where the bed keeps its files and which addresses it uses.
type Config struct {
	CacheDir     string           // cached root file systems
	Dir          string           // state of the running bed: nodes, PKI, logs
	Subnet       netip.Prefix     // bridge subnet; .1 is the host, .11, .12, ... the nodes
	RegistryPort int              // registry port on the host's and every node's loopback
	Suite        string           // Debian suite to bootstrap
	ModuleDir    string           // root of the crfailoverd module, to build the images
	Runtime      string           // RuntimeContainerd or RuntimeCRIO
	Kubelet      bool             // a real kubelet on every node instead of the emulator
	CRIOPatched  bool             // CRI-O nodes run the build with 0001-customization.patch
	Containerd   ContainerdFlavor // built containerd versions, per bed or per node (containerd_versions.go)
	// DataTmpfs, when set ("1536m"), is the size of a tmpfs mounted on
	// each node's crfailoverd data directory before its runtime starts, so
	// that filling it fills that node only (the soak's disk-full fault).
	DataTmpfs string
}

// ConfigFromEnv reads the bed's configuration from the environment, with
// defaults, and finds the module root from the working directory.
func ConfigFromEnv() (Config, error) {
	c := Config{
		CacheDir:     envOr(EnvCache, "/var/cache/crfailoverd-bed"),
		Dir:          envOr(EnvDir, "/var/lib/crfailoverd-bed"),
		RegistryPort: 5000,
		Suite:        envOr(EnvSuite, "forky"),
		Runtime:      envOr(EnvRuntime, RuntimeContainerd),
	}
	if c.Runtime != RuntimeContainerd && c.Runtime != RuntimeCRIO {
		return c, fmt.Errorf("%s=%q: want %s or %s", EnvRuntime, c.Runtime, RuntimeContainerd, RuntimeCRIO)
	}
	switch v := os.Getenv(EnvKubelet); v {
	case "", "0":
	case "1":
		c.Kubelet = true
	default:
		return c, fmt.Errorf("%s=%q: want 1 or 0", EnvKubelet, v)
	}
	switch v := os.Getenv(EnvCRIOPatched); v {
	case "", "0":
	case "1":
		c.CRIOPatched = true
	default:
		return c, fmt.Errorf("%s=%q: want 1 or 0", EnvCRIOPatched, v)
	}
	var err error
	if c.Containerd, err = parseContainerdFlavor(os.Getenv); err != nil {
		return c, err
	}
	subnet := envOr(EnvSubnet, "10.77.0.0/24")
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() != 24 {
		return c, fmt.Errorf("%s=%q: want an IPv4 /24 such as 10.77.0.0/24", EnvSubnet, subnet)
	}
	c.Subnet = p.Masked()
	if v := os.Getenv(EnvRegistryPort); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return c, fmt.Errorf("%s=%q: want a port number", EnvRegistryPort, v)
		}
		c.RegistryPort = n
	}
	for _, d := range []struct{ key, v string }{{EnvCache, c.CacheDir}, {EnvDir, c.Dir}} {
		if !filepath.IsAbs(d.v) {
			return c, fmt.Errorf("%s=%q: want an absolute path", d.key, d.v)
		}
	}
	c.ModuleDir, err = findModuleRoot()
	if err != nil {
		return c, err
	}
	return c, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "test-app")); err == nil {
				return d, nil
			}
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("find module root: no go.mod with test-app/ above %s: run from the crfailoverd source tree", dir)
		}
	}
}

// HostAddr is the host's address on the bridge.
func (c Config) HostAddr() netip.Addr { return c.Subnet.Addr().Next() }

// NodeAddr is the address of node i (1-based).
func (c Config) NodeAddr(i int) netip.Addr {
	b := c.Subnet.Addr().As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

// RootfsDir is the cached root file system of the configured suite.
func (c Config) RootfsDir() string { return filepath.Join(c.CacheDir, "rootfs-"+c.Suite) }

// RegistryHost is the registry as containerd in every node names it.
func (c Config) RegistryHost() string { return "localhost:" + strconv.Itoa(c.RegistryPort) }
