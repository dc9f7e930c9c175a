// Command crfailoverd keeps stateful containers alive through application
// and node failures by checkpoint/restore: it runs on every node next to the
// container runtime and CRIU, checkpoints annotated containers, and
// restores them from their newest checkpoint when they fail.
//
// The same binary is the daemon (crfailoverd run) and its CLI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}

const usage = `Usage: crfailoverd COMMAND [FLAGS] [ARGS]

Keeps stateful containers alive by checkpoint/restore, on the nodes themselves.

Commands:
  run                   run the daemon (systemd starts it: systemctl status crfailoverd)
  status                the node, its workloads, last checkpoint age, size, duration, next due, failures
  checkpoints [WORKLOAD]
                        stored checkpoints, newest first (WORKLOAD is namespace/pod/container)
  inspect ARCHIVE       what is inside a checkpoint archive, with CRIU's dump statistics
  events [--follow]     the recent events of the local daemon
  members               the cluster's members: gossip status, Raft role, leader
  raft peers            the Raft configuration as this node sees it
  workloads             the cluster's workloads: owner, epoch, status, newest checkpoint, holders
  migrate WORKLOAD --to NODE
                        move a workload to NODE with its state
  tls ca | tls cert     make the cluster's CA and node certificates
  keygen                make a gossip encryption key
  config check FILE     validate a configuration file without running
  version               print the version

Run "crfailoverd COMMAND --help" for a command's flags.
The configuration is read from ` + config.DefaultPath + ` unless --config says otherwise.
`

// errUsage marks errors that are the caller's: exit status 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "run":
		stop() // run handles its own signals
		err = cmdRun(rest, stderr)
	case "fence-guard": // started by the daemon; not in the usage text
		stop() // the guard handles its own signals
		err = cmdFenceGuard(rest, stderr)
	case "status":
		err = cmdStatus(ctx, rest, stdout, stderr)
	case "checkpoints":
		err = cmdCheckpoints(ctx, rest, stdout, stderr)
	case "inspect":
		err = cmdInspect(rest, stdout, stderr)
	case "events":
		err = cmdEvents(ctx, rest, stdout, stderr)
	case "members":
		err = cmdMembers(ctx, rest, stdout, stderr)
	case "raft":
		err = cmdRaft(ctx, rest, stdout, stderr)
	case "workloads":
		err = cmdWorkloads(ctx, rest, stdout, stderr)
	case "migrate":
		err = cmdMigrate(ctx, rest, stdout, stderr)
	case "config":
		err = cmdConfig(rest, stdout, stderr)
	case "tls":
		err = cmdTLS(rest, stdout, stderr)
	case "keygen":
		err = cmdKeygen(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "crfailoverd", versionString())
	default:
		fmt.Fprintf(stderr, "crfailoverd: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "crfailoverd:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "crfailoverd:", err)
		return 1
	}
}

// newFlags makes a command's flag set with a usage text.
func newFlags(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: crfailoverd %s\n\n%s\n", synopsis, about)
		var n int
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(stderr, "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}
