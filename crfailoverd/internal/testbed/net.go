package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const netnsDir = "/var/run/netns"

// ip runs the iproute2 command with args.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func netnsName(node string) string { return netnsPrefix + node }

// NetnsPath is the bind mount of a node's network namespace.
func NetnsPath(node string) string { return filepath.Join(netnsDir, netnsName(node)) }

// hostVeth is the host end of a node's veth pair, a port of the bridge.
func hostVeth(node string) string { return netnsPrefix + node + "h" }

func setupBridge(ctx context.Context, c Config) error {
	if err := ip(ctx, "link", "add", bridgeName, "type", "bridge"); err != nil {
		return fmt.Errorf("create bridge: %w", err)
	}
	addr := netip.PrefixFrom(c.HostAddr(), c.Subnet.Bits())
	if err := ip(ctx, "addr", "add", addr.String(), "dev", bridgeName); err != nil {
		return err
	}
	return ip(ctx, "link", "set", bridgeName, "up")
}

func setupNodeNetwork(ctx context.Context, c Config, node string, addr netip.Addr) error {
	ns, hv, peer := netnsName(node), hostVeth(node), netnsPrefix+node+"c"
	steps := [][]string{
		{"netns", "add", ns},
		{"link", "add", hv, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", ns},
		{"link", "set", hv, "master", bridgeName},
		{"link", "set", hv, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "set", peer, "name", "eth0"},
		{"-n", ns, "addr", "add", netip.PrefixFrom(addr, c.Subnet.Bits()).String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", c.HostAddr().String()},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return fmt.Errorf("network of node %s: %w", node, err)
		}
	}
	return nil
}

// bedNetns lists the network namespaces the bed created (by name).
func bedNetns() []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// bedLinks lists the host's links that the bed created.
func bedLinks() []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix) || e.Name() == bridgeName {
			out = append(out, e.Name())
		}
	}
	return out
}
