package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
)

func cmdMembers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("members", "members [--json] [--socket PATH]",
		"Lists the cluster's members as this node sees them: gossip status, Raft role, leader, runtime capabilities.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ms, err := adminClient(*socket, *cfgPath).Members(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, ms)
	}
	return writeMembers(stdout, ms, time.Now())
}

// writeMembers prints the members table: one row per member, with how
// long ago a dead or left one was seen so (as of now) and the runtime
// capabilities it gossips ("-" when none: not detected yet, or an older
// daemon).
func writeMembers(w io.Writer, ms []api.Member, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tGOSSIP ADDRESS\tRPC ADDRESS\tRAFT\tLEADER\tCAPABILITIES")
	for _, m := range ms {
		status := m.Status
		if !m.DeadSince.IsZero() && m.Status != "alive" {
			status += fmt.Sprintf(" (%s ago)", now.Sub(m.DeadSince).Round(time.Second))
		}
		leader := "-"
		if m.Leader {
			leader = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, status, m.Addr, m.RPCAddr, orDash(m.Raft), leader, orDash(m.Capabilities))
	}
	return tw.Flush()
}

// orDash is s, or "-" for an empty cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdRaft(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "peers" {
		fmt.Fprint(stderr, "Usage: crfailoverd raft peers [--json] [--socket PATH]\n\nShows the Raft configuration: servers, voters, leader, this node's state.\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return fmt.Errorf("%w: want \"raft peers\"", errUsage)
	}
	fs := newFlags("raft peers", "raft peers [--json] [--socket PATH]",
		"Shows the Raft configuration: servers, voters, leader, this node's state.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	r, err := adminClient(*socket, *cfgPath).RaftPeers(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, r)
	}
	fenced := ""
	if r.Fenced {
		fenced = "  FENCED: no contact with the quorum; local copies are stopped"
		if r.FenceReason != "" {
			fenced += " (" + r.FenceReason + ")"
		}
	}
	fmt.Fprintf(stdout, "This node: %s (%s), applied %d of %d, leader %s%s\n\n", r.Node, r.State, r.AppliedIndex, r.LastIndex, r.Leader, fenced)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tVOTER")
	for _, p := range r.Peers {
		st := "follower"
		if p.Leader {
			st = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\n", p.ID, p.Address, st, p.Voter)
	}
	return tw.Flush()
}

func cmdWorkloads(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("workloads", "workloads [--json] [--socket PATH]",
		"Lists the cluster's workloads: owner, epoch, status, newest checkpoint and the nodes holding it.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ws, err := adminClient(*socket, *cfgPath).Workloads(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, ws)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tOWNER\tEPOCH\tSTATUS\tNEWEST\tAGE\tSIZE\tHOLDERS\tREASON")
	for _, w := range ws {
		newest, age, size, holders := "-", "-", "-", "-"
		if w.Newest != nil {
			newest = fmt.Sprintf("#%d", w.Newest.Seq)
			age = time.Since(w.Newest.Created).Round(100 * time.Millisecond).String()
			size = humanBytes(w.Newest.Size)
			holders = strings.Join(w.Newest.Holders, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", w.ID, w.Owner, w.Epoch, w.Status, newest, age, size, holders, w.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range ws {
		for _, t := range w.Tried {
			fmt.Fprintf(stdout, "%s: failed attempt %s\n", w.ID, t)
		}
		switch {
		case w.LastError != "" && w.Status == "failed":
			fmt.Fprintf(stdout, "%s: GAVE UP: %s\n", w.ID, w.LastError)
		case strings.Contains(w.LastError, "no node can restore it"):
			fmt.Fprintf(stdout, "%s: CANNOT MOVE: %s\n", w.ID, w.LastError)
		}
		if w.AtRisk != "" {
			fmt.Fprintf(stdout, "%s: %s\n", w.ID, w.AtRisk)
		}
	}
	return nil
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", "migrate WORKLOAD --to NODE [--socket PATH]",
		"Moves a workload to NODE with its state: checkpoint now, send the archive, stop the source,\nrestore on the target. Waits until it runs there and prints the downtime.", stderr)
	to := fs.String("to", "", "target node (required)")
	socket, cfgPath := socketFlags(fs)
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
	if len(pos) != 1 || *to == "" {
		return fmt.Errorf("%w: want migrate WORKLOAD --to NODE", errUsage)
	}
	r, err := adminClient(*socket, *cfgPath).Migrate(ctx, pos[0], *to)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s now runs on %s from checkpoint #%d; downtime %s\n", pos[0], *to, r.Seq, r.Downtime.Round(time.Millisecond))
	return nil
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("events", "events [--follow] [--json] [--socket PATH]",
		"Prints the recent events of the local daemon (checkpoints, transfers, restores, failovers), oldest\nfirst; --follow keeps printing new ones until interrupted.", stderr)
	follow := fs.Bool("follow", false, "keep printing new events")
	asJSON := fs.Bool("json", false, "print one JSON object per event")
	socket, cfgPath := socketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cl := adminClient(*socket, *cfgPath)
	var after uint64
	for first := true; ; first = false {
		// The first call returns what there is; later ones wait for more.
		evs, err := cl.Events(ctx, after, *follow && !first)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, e := range evs {
			if *asJSON {
				b, _ := json.Marshal(e)
				fmt.Fprintln(stdout, string(b))
			} else {
				fmt.Fprintf(stdout, "%s  %-16s %s\n", e.Time.Local().Format("2006-01-02T15:04:05.000"), e.Kind, e.Message)
			}
			after = e.Seq
		}
		if !*follow {
			return nil
		}
	}
}
