package agent

import (
	"fmt"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
)

func TestNoteCopies(t *testing.T) {
	w := func(id string, st cri.ContainerState) discovery.Workload {
		return discovery.Workload{ID: wl, SandboxID: "sb-" + id, ContainerID: id, State: st}
	}
	tests := []struct {
		name  string
		found []discovery.Workload
		want  string
	}{
		{"none", nil, "[]"},
		{"running and unknown are copies, exited is not", []discovery.Workload{w("a", cri.StateRunning), w("b", cri.StateExited), w("c", cri.StateUnknown)}, "[a c]"},
		{"a workload without a container is none", []discovery.Workload{w("", cri.StateRunning)}, "[]"},
	}
	for _, tt := range tests {
		a := &Agent{}
		a.noteCopies([]discovery.Workload{w("stale", cri.StateRunning)})
		a.noteCopies(tt.found)
		got, known := a.LocalCopies()
		var ids []string
		for _, c := range got {
			ids = append(ids, c.ContainerID)
		}
		if s := fmt.Sprint(ids); s != tt.want && !(tt.want == "[]" && len(ids) == 0) || !known {
			t.Errorf("%s: copies %v known %v, want %s", tt.name, ids, known, tt.want)
		}
	}
}

func TestLocalCopiesAfterDiscovery(t *testing.T) {
	a := New(Options{Log: startAgentLog()})
	if _, known := a.LocalCopies(); known {
		t.Fatal("copies known before any discovery")
	}
	rt := newFake()
	a, _ = startAgent(t, rt, 3)
	<-a.Ready()
	eventually(t, "the copy to be listed", func() bool {
		cs, known := a.LocalCopies()
		return known && len(cs) == 1 && cs[0].ContainerID == "ctr-0" && cs[0].SandboxID == "sb-0" && cs[0].Workload == wl
	})
}
