package testbed

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/soak/timeline"
)

// SoakConfig is one nemesis soak run (issue 15).
type SoakConfig struct {
	Seed     int64
	Duration time.Duration // faults are drawn in it; recovery is waited for after it
	Kinds    []soak.Kind   // fault kinds to draw from; empty: all
	Kubelet  bool          // the bed's nodes run kubelet (must match the bed)
	Out      string        // directory for report.json, timeline.png and logs/
	Bin      string        // the crfailoverd binary
}

// Soak figures.
const (
	// SoakDataTmpfs is the tmpfs each node's daemon data directory gets
	// (Config.DataTmpfs), so disk-full fills one node only.
	SoakDataTmpfs = "1536m"
	// soakMinFree is the daemons' store.min_free on that tmpfs.
	soakMinFree = "64MiB"
	// soakInterval is the workloads' checkpoint interval in seconds.
	soakInterval = 1
	// soakRegressionFloor is the least a counter may go back across a
	// restore, in 100 ms ticks (the interval plus 2 s); each workload's
	// own bound is measured in the run from its checkpoints' dump and
	// replication times (measureRegressionBounds), as the issue defines
	// it: a checkpoint interval plus the checkpoint time.
	soakRegressionFloor = (soakInterval + 2) * 10
	// soakRecoveryBound: an outage longer than this is a problem.
	soakRecoveryBound = 60 * time.Second
	// soakServeWait bounds the wait, after the last fault, for every
	// workload to serve.
	soakServeWait = 60 * time.Second
)

// Soak runs the nemesis soak on the bed: crfailoverd clustered on every
// node with replication factor 2, three workloads (counter-a on the first
// node, counter-b on the second, the 100 MB big-state app on the third),
// faults drawn from the seed and run on schedule, an observer sampling the
// copies every 100 ms, then the checker. The bed's nodes need a data
// tmpfs (Config.DataTmpfs = SoakDataTmpfs) for disk-full. It writes
// report.json, timeline.png and the daemons' logs under c.Out and
// progress to log; the error is for a soak that could not run (the
// report's problems are not errors).
func (b *Bed) Soak(ctx context.Context, c SoakConfig, log io.Writer) (soak.Report, soak.Input, error) {
	r, in, err := b.soak(ctx, c, log)
	if err != nil && c.Out != "" {
		// The bed is torn down after: keep what its nodes logged.
		if os.MkdirAll(filepath.Join(c.Out, "logs"), 0o755) == nil {
			for _, n := range b.Nodes() {
				copyLogs(n, filepath.Join(c.Out, "logs"))
			}
			fmt.Fprintf(log, "soak: the nodes' logs are in %s\n", filepath.Join(c.Out, "logs"))
		}
	}
	return r, in, err
}

func (b *Bed) soak(ctx context.Context, c SoakConfig, log io.Writer) (soak.Report, soak.Input, error) {
	in := soak.Input{Seed: c.Seed, RegressionBound: soakRegressionFloor, RecoveryBound: soakRecoveryBound}
	nodes := b.Nodes()
	if len(nodes) < 3 {
		return soak.Report{}, in, fmt.Errorf("refused soak on %d nodes: want at least 3 (5 for two faults at once)", len(nodes))
	}
	if c.Duration <= 0 || c.Bin == "" || c.Out == "" {
		return soak.Report{}, in, fmt.Errorf("refused soak: want a duration (%s), a daemon binary (%q) and an output directory (%q)", c.Duration, c.Bin, c.Out)
	}
	if c.Kubelet != b.cfg.Kubelet {
		return soak.Report{}, in, fmt.Errorf("refused soak with kubelet=%v on a bed with kubelet=%v", c.Kubelet, b.cfg.Kubelet)
	}
	for _, k := range c.Kinds {
		if !slices.Contains(soak.Kinds, k) {
			return soak.Report{}, in, fmt.Errorf("refused fault kind %q: want one of %v", k, soak.Kinds)
		}
	}
	if err := os.MkdirAll(filepath.Join(c.Out, "logs"), 0o755); err != nil {
		return soak.Report{}, in, fmt.Errorf("soak output: %w", err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	ws := soakWorkloads(names)
	for _, w := range ws {
		in.Workloads = append(in.Workloads, w.ID)
	}

	fmt.Fprintf(log, "soak: starting crfailoverd on %s (replication factor 2, min_free %s on a %s tmpfs)\n", strings.Join(names, ", "), soakMinFree, nodes[0].DataTmpfs)
	pids, configs, err := b.startCluster(ctx, c.Bin, func(cfg string) string {
		return strings.Replace(cfg, "\n[store]\n", fmt.Sprintf("\n[store]\nmin_free = %q\n", soakMinFree), 1)
	}, "replication_factor = 2")
	if err != nil {
		return soak.Report{}, in, fmt.Errorf("soak: start the cluster: %w", err)
	}
	for _, w := range ws {
		fmt.Fprintf(log, "soak: running %s on %s (port %d, %s)\n", w.ID, w.Node, w.Port, strings.Join(w.Args, " "))
		if err := b.runSoakWorkload(ctx, w); err != nil {
			return soak.Report{}, in, err
		}
	}

	in.Faults = soak.Schedule(soak.ScheduleConfig{Seed: c.Seed, Duration: c.Duration, Nodes: names, Kinds: c.Kinds})
	fmt.Fprintf(log, "soak: seed %d: %d faults in %s\n", c.Seed, len(in.Faults), c.Duration)
	start := time.Now()
	m := &nemesis{b: b, bin: c.Bin, start: start, log: log, ws: ws, configs: configs, pids: pids,
		down: map[string]bool{}, busy: map[string]int{}}
	obs, err := newObserver(b, ws, start)
	if err != nil {
		return soak.Report{}, in, err
	}
	defer obs.close()

	obsCtx, stopObs := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); obs.run(obsCtx) }()
	go func() { defer bg.Done(); m.watchCrashes(obsCtx) }()
	go func() { defer bg.Done(); statusLines(obsCtx, log, m, obs, in.Faults) }()
	stopped := false
	defer func() {
		if !stopped {
			stopObs()
			bg.Wait()
		}
	}()

	var faults sync.WaitGroup
	for i := range in.Faults {
		faults.Add(1)
		go func() { defer faults.Done(); m.run(ctx, &in.Faults[i]) }()
	}
	faults.Wait()
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(start.Add(c.Duration))):
	}
	fmt.Fprintf(log, "soak: t=%5.1fs every fault undone; waiting up to %s for every workload to serve\n", time.Since(start).Seconds(), soakServeWait)
	_ = poll(context.WithoutCancel(ctx), soakServeWait, "every workload to serve", func() (bool, error) {
		for _, s := range obs.serving() {
			if len(s) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	// Two more seconds of samples: a second copy starting late shows.
	time.Sleep(2 * time.Second)
	in.Duration = time.Since(start)
	// Where each workload serves, read before the observer stops: its
	// observations go stale after that.
	serving := obs.serving()
	stopObs()
	bg.Wait()
	stopped = true
	in.Samples = obs.takeSamples()
	in.Final = obs.final(context.WithoutCancel(ctx), serving)
	for _, err := range obs.finalErr {
		fmt.Fprintf(log, "soak: final check: %v\n", err)
	}

	m.mu.Lock()
	in.Crashes = slices.Clone(m.crashes)
	m.mu.Unlock()
	if ask, err := m.liveNode(); err == nil {
		if a, err := b.Admin(ask); err == nil {
			if cws, err := a.Workloads(context.WithoutCancel(ctx)); err == nil {
				for _, w := range cws {
					if w.Status == "failed" {
						in.GivenUp = append(in.GivenUp, w.ID)
					}
				}
			} else {
				fmt.Fprintf(log, "soak: the cluster's workloads on %s: %v\n", ask, err)
			}
		}
	}
	for _, n := range b.Nodes() {
		crashes, errLines, err := scanDaemonLog(n.DaemonLog(), n.Name, start)
		if err != nil {
			fmt.Fprintf(log, "soak: %v\n", err)
		}
		in.Crashes = append(in.Crashes, crashes...)
		in.ErrorLines = append(in.ErrorLines, errLines...)
		copyLogs(n, filepath.Join(c.Out, "logs"))
	}

	var logs []string
	for _, n := range b.Nodes() {
		logs = append(logs, n.DaemonLog())
	}
	bounds, lines := measureRegressionBounds(logs, in.Workloads, soakInterval*time.Second, soakRegressionFloor)
	in.RegressionBounds = bounds
	for _, l := range lines {
		fmt.Fprintf(log, "soak: regression bound: %s\n", l)
	}

	r := soak.Check(in)
	if err := writeSoakReport(filepath.Join(c.Out, "report.json"), r, in); err != nil {
		return r, in, err
	}
	if err := timeline.Draw(filepath.Join(c.Out, "timeline.png"), in, r); err != nil {
		fmt.Fprintf(log, "soak: timeline: %v\n", err)
	}
	fmt.Fprintf(log, "soak: recovery per fault kind:\n%s", r.KindTable())
	for _, p := range r.Problems() {
		fmt.Fprintf(log, "soak: PROBLEM: %s\n", p)
	}
	fmt.Fprintf(log, "soak: report %s, timeline %s\n", filepath.Join(c.Out, "report.json"), filepath.Join(c.Out, "timeline.png"))
	return r, in, nil
}

// runSoakWorkload starts w on its node, annotated for a checkpoint every
// second and an HTTP probe on its port, and waits until the cluster owns
// it with a checkpoint held by two nodes.
func (b *Bed) runSoakWorkload(ctx context.Context, w soakWorkload) error {
	ann := map[string]string{
		"hitachienergy.com/cr_mode":       "cr",
		"hitachienergy.com/cr_interval":   fmt.Sprint(soakInterval),
		"hitachienergy.com/cr_probe_port": fmt.Sprint(w.Port),
	}
	var err error
	if b.cfg.Kubelet {
		err = b.RunStaticApp(ctx, w.Node, w.Pod, ann, w.Args, w.Port)
	} else {
		_, err = b.RunTestApp(ctx, w.Node, PodSpec{Name: w.Pod, Annotations: ann, Args: w.Args, Port: w.Port})
	}
	if err != nil {
		return fmt.Errorf("soak: run %s on %s: %w", w.ID, w.Node, err)
	}
	return poll(ctx, 120*time.Second, w.ID+" registered and replicated", func() (bool, error) {
		cw, err := b.ClusterWorkload(ctx, w.Node, w.ID)
		if err != nil {
			return false, err
		}
		return cw.Owner == w.Node && cw.Status == "running" && cw.Newest != nil && len(cw.Newest.Holders) >= 2 && b.TakenOverPod(w.Node, w.Pod), nil
	})
}

// statusLines prints where each workload serves every 10 s.
func statusLines(ctx context.Context, log io.Writer, m *nemesis, o *observer, faults []soak.Fault) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := 0
		for _, f := range faults {
			if m.start.Add(f.At).Before(time.Now()) {
				started++
			}
		}
		var parts []string
		for i, nodes := range o.serving() {
			where := "nowhere"
			if len(nodes) > 0 {
				where = fmt.Sprintf("%s (%d)", strings.Join(nodes, "+"), o.latestCounter(nodes[0], i))
			}
			parts = append(parts, o.ws[i].Pod+"@"+where)
		}
		m.logf("status: faults %d/%d; %s", started, len(faults), strings.Join(parts, " "))
	}
}

// scanDaemonLog reads a daemon's log for crashes (panics, fatal errors,
// data races) and error-level lines written since start.
func scanDaemonLog(path, node string, start time.Time) (crashes, errLines []soak.Event, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("scan the log of %s: %w", node, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var last time.Duration // a panic's lines carry no time: the last line's
	for sc.Scan() {
		line := sc.Text()
		ev, when, ok := classifyLogLine(line)
		if !when.IsZero() {
			last = when.Sub(start)
		}
		if !ok || (!when.IsZero() && when.Before(start)) {
			continue
		}
		e := soak.Event{At: max(last, 0), Node: node, What: strings.TrimSpace(line)}
		if ev == logCrash {
			crashes = append(crashes, e)
		} else {
			errLines = append(errLines, e)
		}
	}
	if err := sc.Err(); err != nil {
		return crashes, errLines, fmt.Errorf("scan the log of %s: %w", node, err)
	}
	return crashes, errLines, nil
}

type logKind int

const (
	logError logKind = iota
	logCrash
)

// classifyLogLine says whether a daemon log line is a crash or an
// error-level line, and its time when it has one (slog's text format:
// time=2006-01-02T15:04:05.000Z07:00 level=ERROR ...).
func classifyLogLine(line string) (logKind, time.Time, bool) {
	var when time.Time
	fields := line
	if rest, ok := strings.CutPrefix(line, "time="); ok {
		v, after, _ := strings.Cut(rest, " ")
		when, _ = time.Parse(time.RFC3339Nano, strings.Trim(v, `"`))
		fields = after
	}
	switch {
	case strings.HasPrefix(line, "panic: "), strings.HasPrefix(line, "fatal error: "), strings.Contains(line, "WARNING: DATA RACE"):
		return logCrash, when, true
	case strings.HasPrefix(fields, "level=ERROR "):
		return logError, when, true
	}
	return 0, when, false
}

// copyLogs copies the node's logs into dir as NODE-WHAT.log.
func copyLogs(n Node, dir string) {
	for _, what := range []string{"crfailoverd", "containerd", "crio", "kubelet", "kubelet-emulator"} {
		src, err := os.Open(n.logPath(what))
		if err != nil {
			continue
		}
		dst, err := os.Create(filepath.Join(dir, n.Name+"-"+what+".log"))
		if err == nil {
			_, _ = io.Copy(dst, src)
			dst.Close()
		}
		src.Close()
	}
}

// soakReportFile is report.json: the checker's report and the faults as
// run.
type soakReportFile struct {
	Line      string       `json:"line"`
	Problems  []string     `json:"problems"`
	Report    soak.Report  `json:"report"`
	Faults    []soak.Fault `json:"faults"`
	Workloads []string     `json:"workloads"`
	Samples   int          `json:"samples"`
}

func writeSoakReport(path string, r soak.Report, in soak.Input) error {
	j, err := json.MarshalIndent(soakReportFile{Line: r.Line(), Problems: r.Problems(), Report: r, Faults: in.Faults,
		Workloads: in.Workloads, Samples: len(in.Samples)}, "", "  ")
	if err != nil {
		return fmt.Errorf("soak report: %w", err)
	}
	if err := os.WriteFile(path, j, 0o644); err != nil {
		return fmt.Errorf("write the soak report: %w", err)
	}
	return nil
}

var errSoakProblems = errors.New("the soak found problems")

// SoakError is nil when r found no problem, else an error naming them.
func SoakError(r soak.Report) error {
	ps := r.Problems()
	if len(ps) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", errSoakProblems, strings.Join(ps, "; "))
}
