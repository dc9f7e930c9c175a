package state

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A copy restored from checkpoint C that fails within QuickFailWindow of
// its restore marks C bad; later, or for a copy that was not restored,
// nothing is marked; a placement from a bad checkpoint is refused; a
// retried commit of C keeps the mark.
func TestAppFailedSoonAfterRestoreMarksTheCheckpointBad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restore bool          // the copy was restored (RestoreDone OK) from #7, not registered
		after   time.Duration // AppFailed this long after the restore report
		bad     bool
	}{
		{"dies at once", true, 900 * time.Millisecond, true},
		{"lost copy reported after the grace", true, 6 * time.Second, true},
		{"just inside the window", true, QuickFailWindow - time.Millisecond, true},
		{"at the window", true, QuickFailWindow, false},
		{"ran for a minute", true, time.Minute, false},
		{"registered copy, not restored", false, time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			restored := t0.Add(time.Minute)
			if tc.restore {
				mustApply(t, s, &RestoreDone{At: restored, ID: wRest, Node: "n2", Epoch: 5, Seq: 7, OK: true})
			} else {
				mustApply(t, s, &RegisterWorkload{At: restored, ID: wRest, Node: "n2", CopyEpoch: 5})
				w := s.Workloads[wRest]
				w.RestoredFrom, w.RestoredAt = 0, time.Time{} // as an original pod's registration leaves it
			}
			mustApply(t, s, &AppFailed{At: restored.Add(tc.after), ID: wRest, Node: "n2", Epoch: 5, Reason: "container exited (code 0)"})
			w := s.Workloads[wRest]
			bad := w.Checkpoint(7).Bad
			if (bad != "") != tc.bad {
				t.Fatalf("checkpoint #7 bad = %q, want bad %v", bad, tc.bad)
			}
			if tc.bad && (!strings.Contains(bad, "n2") || !strings.Contains(bad, "container exited")) {
				t.Errorf("the mark %q does not say where and why", bad)
			}
			if w.RestoredFrom != 0 || !w.RestoredAt.IsZero() {
				t.Errorf("restored from #%d at %s after the failure: want cleared", w.RestoredFrom, w.RestoredAt)
			}
			err := s.Apply(&Place{At: restored.Add(time.Minute), ID: wRest, Owner: "n1", Epoch: 6, Seq: 7})
			if tc.bad != errors.Is(err, ErrInvalid) {
				t.Errorf("place from #7: %v (bad %v)", err, tc.bad)
			}
			if tc.bad {
				if err == nil || !strings.Contains(err.Error(), "marked bad") {
					t.Errorf("the refusal %v does not say the checkpoint is bad", err)
				}
				// A retried commit of the same checkpoint keeps the mark.
				s.Workloads[wRest].Status = StatusRunning
				mustApply(t, s, &CommitCheckpoint{At: restored, ID: wRest, Node: "n2", Epoch: 5,
					Checkpoint: Checkpoint{Seq: 7, SHA256: "sha-7", Size: 700}})
				if s.Workloads[wRest].Checkpoint(7).Bad == "" {
					t.Error("a retried commit of #7 cleared its bad mark")
				}
			}
			if err := s.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// The mark survives a snapshot.
func TestBadCheckpointInSnapshot(t *testing.T) {
	s := fixture()
	s.Workloads[wRun].Checkpoints[0].Bad = "failed at once"
	s.Workloads[wRun].RestoredFrom, s.Workloads[wRun].RestoredAt = 4, t0
	var b strings.Builder
	if err := s.WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	w := got.Workloads[wRun]
	if w.Checkpoints[0].Bad != "failed at once" || w.RestoredFrom != 4 || !w.RestoredAt.Equal(t0) {
		t.Errorf("after a snapshot: bad %q, restored from #%d at %s", w.Checkpoints[0].Bad, w.RestoredFrom, w.RestoredAt)
	}
}

func mustApply(t *testing.T, s *State, cmd Command) {
	t.Helper()
	if err := s.Apply(cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
}
