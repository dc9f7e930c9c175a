package ownership

import (
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

var wid = store.Workload{Namespace: "ns", Pod: "web", Container: "app"}

func TestAdmit(t *testing.T) {
	known := func(owner string, epoch uint64, status string) map[string]Entry {
		return map[string]Entry{wid.String(): {Owner: owner, Epoch: epoch, Status: status}}
	}
	cases := []struct {
		name      string
		v         View
		copyEpoch uint64 // the pod's label
		adopted   uint64
		want      Admission
		wantKnown bool
	}{
		{"fenced: stop, whatever the state", View{Connected: true, Fenced: true, Workloads: known("n1", 1, "running")}, 0, 0, Stop, true},
		{"not connected yet: wait", View{Workloads: known("n1", 1, "running")}, 0, 0, Wait, true},
		{"unknown: wait and report", View{Connected: true}, 0, 0, Wait, false},
		{"given up: wait and report (re-register)", View{Connected: true, Workloads: known("", 2, "failed")}, 0, 0, Wait, false},
		{"owned here at the copy's epoch: run", View{Connected: true, Workloads: known("n1", 1, "running")}, 0, 0, Run, true},
		{"owned elsewhere: stop", View{Connected: true, Workloads: known("n2", 2, "running")}, 0, 0, Stop, true},
		{"owned here at a later epoch: stop the old copy", View{Connected: true, Workloads: known("n1", 3, "running")}, 2, 0, Stop, true},
		{"the copy is newer than the state: wait", View{Connected: true, Workloads: known("n1", 2, "running")}, 3, 0, Wait, true},
		{"an adopted original copy at its new epoch: run", View{Connected: true, Workloads: known("n1", 2, "running")}, 0, 2, Run, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.v.Node = "n1"
			w := discovery.Workload{ID: wid, SandboxID: "sb1", Epoch: tc.copyEpoch, Interval: time.Second}
			if tc.adopted > 0 {
				tc.v.Adopted = map[string]uint64{"sb1": tc.adopted}
			}
			got, known := tc.v.Admit(w)
			if got != tc.want || known != tc.wantKnown {
				t.Fatalf("Admit = %s, known=%t; want %s, known=%t", got, known, tc.want, tc.wantKnown)
			}
		})
	}
}

func TestRestoreHere(t *testing.T) {
	w := discovery.Workload{ID: wid}
	v := View{Node: "n1", Connected: true, LocalRestore: true, Workloads: map[string]Entry{wid.String(): {Owner: "n1", Epoch: 1, Status: "running"}}}
	if !v.RestoreHere(w) {
		t.Fatal("policy local, owned here: restore here")
	}
	v.Fenced = true
	if v.RestoreHere(w) {
		t.Fatal("fenced: never restore here")
	}
	v.Fenced, v.LocalRestore = false, false
	if v.RestoreHere(w) {
		t.Fatal("policy peer: hand over")
	}
}

func TestBoardWakesOnlyOnChange(t *testing.T) {
	b := NewBoard("n1")
	ch := b.Changed()
	b.Publish(&View{Node: "n1"})
	select {
	case <-ch:
		t.Fatal("woken by a View equal to the previous one")
	default:
	}
	b.Publish(&View{Node: "n1", Connected: true})
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a change")
	}
	if !b.View().Connected {
		t.Fatal("the newest View is not the one published")
	}
	c := b.View().Clone()
	c.Workloads["x"] = Entry{Owner: "n2"}
	if _, ok := b.View().Workloads["x"]; ok {
		t.Fatal("a clone shares the published View's map")
	}
}

func TestBoardQuorumContact(t *testing.T) {
	b := NewBoard("n1")
	if !b.QuorumContact().IsZero() {
		t.Fatal("a new board has quorum contact")
	}
	changed := b.Changed()
	t1 := time.Unix(100, 0)
	b.SetQuorumContact(t1)
	b.SetQuorumContact(t1.Add(-time.Second)) // older: ignored
	if got := b.QuorumContact(); !got.Equal(t1) {
		t.Fatalf("QuorumContact %v, want %v", got, t1)
	}
	select {
	case <-changed:
		t.Fatal("quorum contact woke the view's readers")
	default:
	}
}
