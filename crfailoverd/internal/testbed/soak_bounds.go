package testbed

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// checkpointTimes is what the daemons' logs say one workload's
// checkpoints took in a soak: the longest dump, and the longest time
// until the first peer held a checkpoint.
type checkpointTimes struct {
	Dump, Replicate time.Duration
	firstHeld       map[uint64]time.Duration // per seq, the quickest peer's time
}

// readCheckpointTimes adds the checkpoint lines of one daemon log to
// times (by workload ID). It reads slog's text lines:
//
//	msg=checkpointed workload=W seq=N ... duration_ms=D
//	msg="replicated checkpoint" ... workload=W seq=N took=1.5s ...
func readCheckpointTimes(r io.Reader, times map[string]*checkpointTimes) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var dump, repl bool
		switch {
		case strings.Contains(line, " msg=checkpointed "):
			dump = true
		case strings.Contains(line, ` msg="replicated checkpoint" `):
			repl = true
		default:
			continue
		}
		f := logFields(line)
		w := f["workload"]
		if w == "" {
			continue
		}
		t := times[w]
		if t == nil {
			t = &checkpointTimes{firstHeld: map[uint64]time.Duration{}}
			times[w] = t
		}
		switch {
		case dump:
			if ms, err := strconv.ParseInt(f["duration_ms"], 10, 64); err == nil {
				t.Dump = max(t.Dump, time.Duration(ms)*time.Millisecond)
			}
		case repl:
			seq, err1 := strconv.ParseUint(f["seq"], 10, 64)
			took, err2 := time.ParseDuration(f["took"])
			if err1 != nil || err2 != nil {
				continue
			}
			if old, ok := t.firstHeld[seq]; !ok || took < old {
				t.firstHeld[seq] = took
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read checkpoint times: %w", err)
	}
	for _, t := range times {
		t.Replicate = 0
		for _, d := range t.firstHeld {
			t.Replicate = max(t.Replicate, d)
		}
	}
	return nil
}

// logFields splits an slog text line into its key=value fields (quoted
// values unquoted; a value with escaped quotes is kept as it is).
func logFields(line string) map[string]string {
	out := map[string]string{}
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			for end < len(rest) && (rest[end] != '"' || rest[end-1] == '\\') {
				end++
			}
			val, line = rest[1:min(end, len(rest))], rest[min(end+1, len(rest)):]
		} else {
			sp := strings.IndexByte(rest, ' ')
			if sp < 0 {
				sp = len(rest)
			}
			val, line = rest[:sp], rest[sp:]
		}
		out[key] = val
	}
	return out
}

// regressionBound is how far a workload's counter may go back across a
// restore, in 100 ms ticks: a checkpoint period (the interval after a
// dump, plus the dump) and the checkpoint's own time until a peer holds
// it (its dump and its replication), as measured in the run, plus half a
// second for the observer's sampling. Never less than floor.
func regressionBound(interval time.Duration, t checkpointTimes, floor int64) int64 {
	worst := interval + 2*t.Dump + t.Replicate + 500*time.Millisecond
	return max(floor, int64((worst+99*time.Millisecond)/(100*time.Millisecond)))
}

// measureRegressionBounds reads every node's daemon log for its
// checkpoint times and returns each workload's bound and a line saying
// what it was measured from.
func measureRegressionBounds(logs []string, workloads []string, interval time.Duration, floor int64) (map[string]int64, []string) {
	times := map[string]*checkpointTimes{}
	for _, p := range logs {
		f, err := os.Open(p)
		if err != nil {
			continue // a node that never logged has no checkpoints to count
		}
		_ = readCheckpointTimes(f, times)
		f.Close()
	}
	bounds := map[string]int64{}
	var lines []string
	for _, w := range workloads {
		t := checkpointTimes{}
		if m := times[w]; m != nil {
			t = *m
		}
		bounds[w] = regressionBound(interval, t, floor)
		lines = append(lines, fmt.Sprintf("%s: longest dump %s, longest until a peer held it %s: may go back %d ticks (%.1fs)",
			w, t.Dump, t.Replicate.Round(time.Millisecond), bounds[w], float64(bounds[w])/10))
	}
	return bounds, lines
}
