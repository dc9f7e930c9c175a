package metrics

import "testing"

func TestCapabilityGauges(t *testing.T) {
	r := New(Options{})
	steps := []struct {
		checkpoint bool
		path       string
		want       map[string]float64 // restore_capable by path
		wantCkpt   float64
	}{
		{false, "", map[string]float64{"create": 0, "restore-pod": 0, "native": 0}, 0}, // before any detection
		{true, "create", map[string]float64{"create": 1, "restore-pod": 0, "native": 0}, 1},
		{true, "none", map[string]float64{"create": 0, "restore-pod": 0, "native": 0}, 1},
		{true, "native", map[string]float64{"create": 0, "restore-pod": 0, "native": 1}, 1},
		{false, "none", map[string]float64{"create": 0, "restore-pod": 0, "native": 0}, 0},
	}
	for i, st := range steps {
		if i > 0 {
			r.SetCapabilities(st.checkpoint, st.path)
		}
		fams := scrape(t, r)
		if got := value(t, fams, "crfailoverd_checkpoint_capable", nil); got != st.wantCkpt {
			t.Errorf("step %d: checkpoint_capable = %v, want %v", i, got, st.wantCkpt)
		}
		for p, want := range st.want {
			if got := value(t, fams, "crfailoverd_restore_capable", map[string]string{"path": p}); got != want {
				t.Errorf("step %d (%s): restore_capable{path=%q} = %v, want %v", i, st.path, p, got, want)
			}
		}
		if n := len(fams["crfailoverd_restore_capable"].GetMetric()); n != 3 {
			t.Errorf("step %d: %d restore_capable series, want 3", i, n)
		}
	}
	// A path this version does not know is exported while it is the
	// node's, and dropped after.
	r.SetCapabilities(true, "future")
	if got := value(t, scrape(t, r), "crfailoverd_restore_capable", map[string]string{"path": "future"}); got != 1 {
		t.Errorf("unknown path = %v", got)
	}
	r.SetCapabilities(true, "create")
	if n := len(scrape(t, r)["crfailoverd_restore_capable"].GetMetric()); n != 3 {
		t.Errorf("%d series after the unknown path went, want 3", n)
	}
	var nilRec *Recorder
	nilRec.SetCapabilities(true, "create") // no panic
}
