package testbed

import (
	"strings"
	"testing"
	"time"
)

func TestReadCheckpointTimes(t *testing.T) {
	logs := []string{
		`time=2026-12-02T16:50:36.732Z level=DEBUG msg=checkpointed workload=default/bigstate/counter seq=1 method=cri bytes=106606592 duration_ms=1067`,
		`time=2026-12-02T16:50:39.165Z level=DEBUG msg=checkpointed workload=default/bigstate/counter seq=2 method=cri bytes=106605056 duration_ms=1607`,
		`time=2026-12-02T16:50:39.789Z level=DEBUG msg="replicated checkpoint" component=replication peer=n1 workload=default/bigstate/counter seq=1 took=3.034781644s bytes=106606592`,
		`time=2026-12-02T16:50:40.008Z level=DEBUG msg="replicated checkpoint" component=replication peer=n4 workload=default/bigstate/counter seq=1 took=3.260937414s bytes=106606592`,
		`time=2026-12-02T16:50:41.008Z level=DEBUG msg="replicated checkpoint" component=replication peer=n4 workload=default/bigstate/counter seq=2 took=2.5s bytes=106606592`,
		`time=2026-12-02T16:50:41.418Z level=DEBUG msg=checkpointed workload=default/counter-a/counter seq=3 method=cri bytes=1000 duration_ms=120`,
		`time=2026-12-02T16:50:41.418Z level=INFO msg="something else" workload=default/counter-a/counter duration_ms=99999`,
	}
	times := map[string]*checkpointTimes{}
	if err := readCheckpointTimes(strings.NewReader(strings.Join(logs, "\n")), times); err != nil {
		t.Fatal(err)
	}
	big := times["default/bigstate/counter"]
	if big == nil || big.Dump != 1607*time.Millisecond || big.Replicate != 3034781644*time.Nanosecond {
		t.Fatalf("bigstate times %+v, want dump 1.607s and replicate 3.034781644s (seq 1's quickest peer)", big)
	}
	a := times["default/counter-a/counter"]
	if a == nil || a.Dump != 120*time.Millisecond || a.Replicate != 0 {
		t.Fatalf("counter-a times %+v, want dump 120ms, nothing replicated", a)
	}
	// 1 s + 2 x 1.607 s + 3.035 s + 0.5 s = 7.749 s: 78 ticks.
	if got := regressionBound(time.Second, *big, 60); got != 78 {
		t.Fatalf("bound %d ticks, want 78", got)
	}
	if got := regressionBound(time.Second, *a, 60); got != 60 {
		t.Fatalf("bound %d ticks, want the floor 60", got)
	}
}

func TestLogFields(t *testing.T) {
	f := logFields(`time=X level=DEBUG msg="replicated checkpoint" peer=n1 why="a \"quoted\" word" took=3s`)
	want := map[string]string{"time": "X", "level": "DEBUG", "msg": "replicated checkpoint", "peer": "n1", "why": `a \"quoted\" word`, "took": "3s"}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("field %s = %q, want %q", k, f[k], v)
		}
	}
}
