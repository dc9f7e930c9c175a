// Command nodebed runs crfailoverd's real multi-node test bed on this
// machine: network-namespace nodes on a bridge, each with containerd, runc
// and CRIU from a cached Debian testing root file system and a kubelet
// checkpoint emulator, plus a loopback registry with the test images.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/testbed"
)

const usage = `Usage: nodebed COMMAND [ARGS]

Runs crfailoverd's multi-node test bed (as root).

Commands:
  prepare                build (or check) what the bed caches: the runtime root file system,
                         kubelet, CRI-O (plain and patched) and pinns
  up [-n N] [-kubelet] [-runtime containerd|crio]
                         create a bed of N nodes (default 3), replacing any earlier one;
                         -kubelet: each node runs a real kubelet (standalone, static pods)
  demo [-keep] [-kubelet] [-runtime containerd|crio]
                         the main story: a 3-node bed with crfailoverd clustered on every
                         node, the counter on n1 checkpointed every second and replicated,
                         n1 power-cut, the counter serving again from a peer with its state;
                         prints the figures and tears down (-keep leaves it up)
  soak [-nodes 5] [-duration 10m] [-seed S] [-kinds k,k] [-kubelet] [-out DIR] [-keep]
                         the nemesis soak: random power cuts, partitions, one-way links,
                         daemon kills and pauses, full disks and leader kills on a 5-node
                         bed with three workloads, judged from outside (double copies,
                         recovery, lost state); report.json and timeline.png in DIR
                         (default soak-SEED/); exit 1 on any problem (soak -h for more)
  restore-demo [-keep]   the manual path underneath: a 2-node bed, the counter on n1
                         checkpointed through n1's kubelet, restored on n2 through CRI
  down                   tear the bed down: processes, namespaces, links, cgroups, node files
  status                 list the nodes, their addresses and sockets
  leftovers              name anything a bed left on this machine (exit 1 if any)
  run-app NODE [-name POD] [-a KEY=VALUE ...]
                         run the counter test app as a pod on NODE (host network)
  counter NODE           print the counter of the test app on NODE
  kill NODE              power-cut NODE: kill every process of it, take its link down
  start NODE             boot a killed NODE again
  cut NODE | heal NODE   take NODE off the network / put it back

Environment:
  CRF_BED_CACHE          root file system cache (default /var/cache/crfailoverd-bed)
  CRF_BED_DIR            state of the running bed (default /var/lib/crfailoverd-bed)
  CRF_BED_SUBNET         bridge subnet, a /24 (default 10.77.0.0/24)
  CRF_BED_REGISTRY_PORT  registry port on every loopback (default 5000)
  CRF_BED_SUITE          Debian suite of the root file system (default forky)
  CRF_BED_RUNTIME        runtime of every node: containerd or crio (default containerd)
  CRF_BED_KUBELET        1: a real kubelet (standalone, static pods) on every node
                         instead of the kubelet checkpoint emulator (default 0)

Run it from the crfailoverd source tree: "up" builds the test images.
`

func main() {
	testbed.HelperMain()
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Print(usage)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "nodebed:", err)
		os.Exit(1)
	}
}

type annotations map[string]string

func (a annotations) String() string { return fmt.Sprint(map[string]string(a)) }
func (a annotations) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	a[k] = v
	return nil
}

func run(ctx context.Context, cmd string, args []string) error {
	cfg, err := testbed.ConfigFromEnv()
	if err != nil {
		return err
	}
	if cmd == "soak" {
		// A soak waits for the bed's lock (tests queue on it too).
		return soakCmd(ctx, cfg, args)
	}
	if cmd != "leftovers" && cmd != "status" && cmd != "counter" && !isHelp(args) {
		unlock, err := testbed.LockBed(cfg, false)
		if err != nil {
			return err
		}
		defer unlock()
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	n := fs.Int("n", 3, "number of nodes (up)")
	podName := fs.String("name", "counter", "pod name (run-app)")
	keep := fs.Bool("keep", false, "leave the bed up after the demo (demo)")
	kubeletNodes := fs.Bool("kubelet", cfg.Kubelet, "every node runs a real kubelet (up, demo; as "+testbed.EnvKubelet+"=1)")
	runtime := fs.String("runtime", cfg.Runtime, "runtime of every node: containerd or crio (up, demo; as "+testbed.EnvRuntime+")")
	ann := annotations{}
	fs.Var(ann, "a", "pod annotation KEY=VALUE (run-app, repeatable)")
	// Flags may follow the node argument.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *runtime != testbed.RuntimeContainerd && *runtime != testbed.RuntimeCRIO {
		return fmt.Errorf("-runtime %q: want %s or %s", *runtime, testbed.RuntimeContainerd, testbed.RuntimeCRIO)
	}
	cfg.Kubelet, cfg.Runtime = *kubeletNodes, *runtime
	nodeArg := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("%s: want one NODE argument (n1, n2, ...)", cmd)
		}
		return pos[0], nil
	}
	switch cmd {
	case "up":
		_, err := testbed.Up(ctx, cfg, *n, os.Stdout)
		return err
	case "down":
		return testbed.Down(ctx, cfg, os.Stdout)
	case "prepare":
		if err := testbed.CheckHost(cfg); err != nil {
			return err
		}
		dir, v, err := testbed.EnsureRootfs(ctx, cfg, os.Stdout)
		if err != nil {
			return err
		}
		fmt.Printf("root file system %s: %s\n", dir, v)
		if err := testbed.EnsureKubelet(ctx, cfg, os.Stdout); err != nil {
			return err
		}
		if err := testbed.EnsureCRIO(ctx, cfg, os.Stdout); err != nil {
			return err
		}
		// containerd 2.3 and 2.4 node flavors (the tests use both).
		for _, v := range testbed.ContainerdVersions {
			if _, err := testbed.EnsureContainerd(ctx, cfg, v, os.Stdout); err != nil {
				return err
			}
		}
		return nil
	case "demo":
		return clusterDemo(ctx, cfg, *keep)
	case "restore-demo":
		return demo(ctx, cfg, *keep)
	case "leftovers":
		if left := testbed.Leftovers(cfg); len(left) > 0 {
			return fmt.Errorf("leftovers: %s", strings.Join(left, "; "))
		}
		fmt.Println("clean")
		return nil
	case "status":
		b, err := testbed.Open(cfg)
		if err != nil {
			return err
		}
		return printStatus(os.Stdout, b)
	}
	node, err := nodeArg()
	if err != nil {
		return err
	}
	b, err := testbed.Open(cfg)
	if err != nil {
		return err
	}
	switch cmd {
	case "run-app":
		if b.Config().Kubelet {
			if err := b.RunStaticCounter(ctx, node, *podName, ann); err != nil {
				return err
			}
			nd, _ := b.Node(node)
			fmt.Printf("static pod %s on %s: manifest %s/%s.yaml, app at %s\n", *podName, node, nd.StaticPodDir(), *podName, nd.AppURL())
			return nil
		}
		pod, err := b.RunTestApp(ctx, node, testbed.PodSpec{Name: *podName, Annotations: ann})
		if err != nil {
			return err
		}
		nd, _ := b.Node(node)
		fmt.Printf("pod %s/%s on %s: sandbox %s container %s, app at %s\n", pod.Spec.Namespace, pod.Spec.Name, node, pod.SandboxID[:12], pod.ContainerID[:12], nd.AppURL())
	case "counter":
		c, err := b.Counter(ctx, node)
		if err != nil {
			return err
		}
		fmt.Println(c)
	case "kill":
		return b.KillNode(ctx, node)
	case "start":
		return b.StartNode(ctx, node)
	case "cut":
		return b.CutNode(ctx, node)
	case "heal":
		return b.HealNode(ctx, node)
	default:
		return fmt.Errorf("unknown command %q (see nodebed --help)", cmd)
	}
	return nil
}

func printStatus(w io.Writer, b *testbed.Bed) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tADDRESS\tRUNTIME\tCRI SOCKET\tKUBELET\n")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, n := range b.Nodes() {
		st := "down"
		if n.RuntimePID != 0 {
			st = "not answering"
			if err := testbed.PingCRI(ctx, n.Socket); err == nil {
				st = "up"
				if _, err := b.Counter(ctx, n.Name); err == nil {
					st = "up, app running"
				}
			}
		}
		kind := "emulator"
		if b.Config().Kubelet {
			kind = "kubelet " + testbed.KubeletVersion
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s (%s)\n", n.Name, n.Addr, n.Runtime, st, n.Socket, n.KubeletURL(), kind)
	}
	fmt.Fprintf(tw, "\n%s; PKI in %s\n", b.Versions(), b.PKI.Dir)
	return tw.Flush()
}

func demo(ctx context.Context, cfg testbed.Config, keep bool) (err error) {
	b, err := testbed.Up(ctx, cfg, 2, os.Stdout)
	if err != nil {
		return err
	}
	if !keep {
		defer func() {
			if derr := testbed.Down(context.Background(), cfg, os.Stdout); derr != nil && err == nil {
				err = derr
			}
		}()
	}
	r, err := b.RunRestoreScenario(ctx, "n1", "n2", 20, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("\nrestore: %s\n", r)
	if r.CounterAfterRestore < r.CounterAtCheckpoint || r.CounterLater <= r.CounterAfterRestore {
		return fmt.Errorf("the restored counter did not go on from %d (%d, then %d): state was lost", r.CounterAtCheckpoint, r.CounterAfterRestore, r.CounterLater)
	}
	fmt.Printf("the counter went on from %d on n2 after n1 lost power\n", r.CounterAtCheckpoint)
	if keep {
		fmt.Println("the bed stays up: nodebed status, nodebed counter n2, nodebed down")
	}
	return nil
}

func isHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			return true
		}
	}
	return false
}
