package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/admin"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// socketFlags adds --socket and --config to a client command; the socket
// is taken from the configuration when not given.
func socketFlags(fsFlags interface {
	String(name, value, usage string) *string
}) (socket, cfgPath *string) {
	socket = fsFlags.String("socket", "", "admin socket of the daemon (default: node.admin_socket of the configuration)")
	cfgPath = fsFlags.String("config", config.DefaultPath, "configuration file, to find the admin socket")
	return socket, cfgPath
}

func adminClient(socket, cfgPath string) *admin.Client {
	if socket == "" {
		socket = config.Default().Node.AdminSocket
		if c, err := config.Load(cfgPath); err == nil {
			socket = c.Node.AdminSocket
		}
	}
	return admin.NewClient(socket)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "status [--json] [--socket PATH]",
		"Shows the node, the runtime, and every workload: state, interval, last checkpoint (age, size,\nduration, method), next due time, checkpoint failures, restores.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: status takes no arguments", errUsage)
	}
	s, err := adminClient(*socket, *cfgPath).Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, s)
	}
	return writeStatus(stdout, s, time.Now())
}

func writeStatus(w io.Writer, s api.Status, now time.Time) error {
	rt := s.Runtime
	if s.RuntimeErr != "" {
		rt = "UNREACHABLE (" + s.RuntimeErr + ")"
	}
	fmt.Fprintf(w, "Node:     %s\nVersion:  %s\nRuntime:  %s\nMethod:   %s\nUp:       %s\nData dir: %s\n",
		s.Node, s.Version, rt, s.Method, now.Sub(s.Started).Round(time.Second), s.DataDir)
	if c := s.Capabilities; c != nil {
		fmt.Fprintf(w, "Capabilities: %s\n", c.Summary())
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "Skipped:  %s\n", p)
	}
	fmt.Fprintln(w)
	if len(s.Workloads) == 0 {
		fmt.Fprintln(w, "No workloads: no running pod is annotated hitachienergy.com/cr_mode: \"cr\".")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tSTATE\tINTERVAL\tLAST\tAGE\tSIZE\tDURATION\tMETHOD\tNEXT DUE\tCHECKPOINTS\tFAILURES\tRESTORES")
	for _, x := range s.Workloads {
		last, age, size, dur, method := "-", "-", "-", "-", "-"
		if x.Last != nil {
			last = fmt.Sprintf("#%d", x.Last.Seq)
			age = now.Sub(x.Last.Created).Round(100 * time.Millisecond).String()
			size = humanBytes(x.Last.Size)
			dur = x.Last.Duration.Round(time.Millisecond).String()
			method = x.Last.Method
		}
		next := "-"
		if !x.NextDue.IsZero() {
			next = "in " + max(x.NextDue.Sub(now), 0).Round(100*time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", x.ID, x.State, x.Interval, last, age, size, dur, method, next,
			x.Checkpoints, x.CheckpointFailures, x.Restores)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, x := range s.Workloads {
		if x.LastError != "" {
			fmt.Fprintf(w, "\n%s: last checkpoint error (%d in a row): %s", x.ID, x.ConsecutiveFailures, x.LastError)
		}
		if r := x.LastRestore; r != nil {
			res := "ok"
			if !r.OK {
				res = "FAILED: " + r.Error
			}
			fmt.Fprintf(w, "\n%s: last restore %s ago (%s) from #%d, %d attempt(s), %s: %s", x.ID, now.Sub(r.At).Round(time.Second), r.Reason, r.Seq, r.Attempts, r.Duration.Round(time.Millisecond), res)
		}
	}
	fmt.Fprintln(w)
	return nil
}

func cmdCheckpoints(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("checkpoints", "checkpoints [--json] [--socket PATH] [WORKLOAD]",
		"Lists the checkpoints in the node's store, newest first. WORKLOAD is namespace/pod/container.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: checkpoints takes at most one WORKLOAD", errUsage)
	}
	cs, err := adminClient(*socket, *cfgPath).Checkpoints(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	if *asJSON {
		if cs == nil {
			cs = []api.CheckpointInfo{}
		}
		return printJSON(stdout, cs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tSEQ\tCREATED\tSIZE\tDURATION\tMETHOD\tSOURCE\tSHA256\tPATH")
	for _, c := range cs {
		bad := ""
		if c.Bad {
			bad = " (bad)"
		}
		fmt.Fprintf(tw, "%s\t%d%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Workload, c.Seq, bad, c.Created.Local().Format(time.RFC3339), humanBytes(c.Size),
			c.Duration.Round(time.Millisecond), c.Method, c.Source, c.SHA256[:min(12, len(c.SHA256))], c.Path)
	}
	return tw.Flush()
}

func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "inspect [--json] [--data-key FILE | --config FILE] ARCHIVE",
		"Shows what a checkpoint archive holds (container, image, runtime, created and checkpointed times,\nsizes) and CRIU's dump statistics. Corrupt or truncated archives are rejected. An archive of the\nstore sealed with the data key is decrypted as it is read: the key is --data-key, else the\nconfiguration's store.data_key_file.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	keyPath := fs.String("data-key", "", "data key that sealed the archive (default: store.data_key_file of --config)")
	cfgPath := fs.String("config", config.DefaultPath, "configuration file, for store.data_key_file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: inspect takes one ARCHIVE", errUsage)
	}
	info, err := inspectArchive(fs.Arg(0), *keyPath, *cfgPath)
	if err != nil {
		return err
	}
	if *asJSON {
		b, err := info.JSON()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	return info.Write(stdout)
}

// inspectArchive reads the archive at path, decrypting it if it is sealed
// (with the key at keyPath, else the configuration's data key).
func inspectArchive(path, keyPath, cfgPath string) (*archive.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	prefix := make([]byte, seal.HeaderLen)
	n, _ := f.ReadAt(prefix, 0)
	if !seal.Encrypted(prefix[:n]) {
		return archive.ReadFrom(f, fi.Size(), path)
	}
	if keyPath == "" {
		c, err := config.Load(cfgPath)
		if err != nil {
			return nil, fmt.Errorf("archive %s is sealed with a data key: give --data-key FILE (the configuration %s, for store.data_key_file, cannot be read: %w)", path, cfgPath, err)
		}
		if c.Store.DataKeyFile == "" {
			return nil, fmt.Errorf("archive %s is sealed with a data key, and %s names none (store.data_key_file): give --data-key FILE", path, cfgPath)
		}
		keyPath = c.Store.DataKeyFile
	}
	k, err := seal.Load(keyPath)
	if err != nil {
		return nil, fmt.Errorf("archive %s is sealed: %w", path, err)
	}
	sr, err := k.DecryptAt(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("archive %s (sealed; data key %s): %w", path, keyPath, err)
	}
	return archive.ReadFrom(sr, sr.Size(), path)
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, "Usage: crfailoverd config check FILE\n\nValidates a configuration file without running: every unknown key, wrong type and bad value\nis reported with its key and line.\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return fmt.Errorf("%w: want \"config check FILE\"", errUsage)
	}
	fs := newFlags("config check", "config check FILE",
		"Validates a configuration file without running: every unknown key, wrong type and bad value\nis reported with its key and line.", stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: config check takes one FILE", errUsage)
	}
	if _, err := config.Load(fs.Arg(0)); err != nil {
		return fmt.Errorf("%s is not valid:\n%w", fs.Arg(0), err)
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
