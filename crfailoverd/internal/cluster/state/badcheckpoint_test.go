package state

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The commands of the release before bad checkpoints apply as they did:
// an AppFailed, however soon after a restore and of whatever kind, marks
// nothing (an older node applying the same log would not), a Place from
// that checkpoint is accepted, and a Place of a failed workload keeps its
// Tried list. Only MarkCheckpointBad marks, and a Place from a checkpoint
// it marked is refused.
func TestOnlyMarkCheckpointBadMarks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kind  FailKind
		after time.Duration // AppFailed this long after the restore report
	}{
		{"exits at once", FailExited, 900 * time.Millisecond},
		{"probe fails at once", FailProbe, time.Second},
		{"lost copy", FailLost, 6 * time.Second},
		{"reporter cannot tell", "", time.Second},
		{"ran for a minute", FailExited, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fixture()
			restored := t0.Add(time.Minute)
			mustApply(t, s, &RestoreDone{At: restored, ID: wRest, Node: "n2", Epoch: 5, Seq: 7, OK: true})
			mustApply(t, s, &AppFailed{At: restored.Add(tc.after), ID: wRest, Node: "n2", Epoch: 5, Reason: "container exited", Kind: tc.kind})
			w := s.Workloads[wRest]
			if bad := w.Checkpoint(7).Bad; bad != "" {
				t.Fatalf("AppFailed marked #7 bad (%q): an older node would not", bad)
			}
			if w.Status != StatusAppFailed || w.FailKind != tc.kind || w.RestoredFrom != 7 || !w.RestoredAt.Equal(restored) {
				t.Errorf("after AppFailed: %s, kind %q, restored from #%d at %s", w.Status, w.FailKind, w.RestoredFrom, w.RestoredAt)
			}
			place := &Place{At: restored.Add(time.Minute), ID: wRest, Owner: "n1", Epoch: 6, Seq: 7}
			if err := s.Clone().Apply(place); err != nil {
				t.Fatalf("place from #7 before any mark: %v", err)
			}
			mustApply(t, s, &MarkCheckpointBad{At: restored.Add(tc.after), ID: wRest, Seq: 7, SHA256: "sha-7", Why: "failed at once"})
			if bad := s.Workloads[wRest].Checkpoint(7).Bad; bad != "failed at once" {
				t.Fatalf("after MarkCheckpointBad: bad %q", bad)
			}
			// A second mark keeps the first reason.
			mustApply(t, s, &MarkCheckpointBad{At: restored, ID: wRest, Seq: 7, SHA256: "sha-7", Why: "again"})
			err := s.Apply(place)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "marked bad (failed at once)") {
				t.Errorf("place from a bad #7: %v, want a refusal naming the mark", err)
			}
			// A retried commit of the same checkpoint keeps the mark.
			s.Workloads[wRest].Status = StatusRunning
			mustApply(t, s, &CommitCheckpoint{At: restored, ID: wRest, Node: "n2", Epoch: 5,
				Checkpoint: Checkpoint{Seq: 7, SHA256: "sha-7", Size: 700}})
			if s.Workloads[wRest].Checkpoint(7).Bad == "" {
				t.Error("a retried commit of #7 cleared its bad mark")
			}
			if err := s.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// A retrying workload has no owner: every registration of a copy of it is
// refused as stale (the node stops the copy), reports of the old epoch
// too; the Place at the next epoch takes it, and so does a GiveUp.
func TestRetryingWorkload(t *testing.T) {
	retrying := func(t *testing.T) *State {
		s := fixture()
		mustApply(t, s, &RetryWorkload{At: t0, ID: wFailed, Epoch: 5, Reason: "retry after giving up 1m0s ago"})
		return s
	}
	for _, tc := range []struct {
		name    string
		cmd     Command
		wantErr error
		status  Status
	}{
		{"a copy started by hand registers", &RegisterWorkload{At: t0, ID: wFailed, Node: "n2"}, ErrStale, StatusRetrying},
		{"a copy of the new epoch registers", &RegisterWorkload{At: t0, ID: wFailed, Node: "n2", CopyEpoch: 5}, ErrStale, StatusRetrying},
		{"an app failure at the new epoch", &AppFailed{At: t0, ID: wFailed, Node: "n3", Epoch: 5, Kind: FailExited}, ErrStale, StatusRetrying},
		{"a commit at the new epoch", &CommitCheckpoint{At: t0, ID: wFailed, Node: "n3", Epoch: 5, Checkpoint: cp(10)}, ErrStale, StatusRetrying},
		{"retried twice", &RetryWorkload{At: t0, ID: wFailed, Epoch: 6}, ErrStatus, StatusRetrying},
		{"placed", &Place{At: t0, ID: wFailed, Owner: "n3", Epoch: 6, Seq: 9, Reason: "retry"}, nil, StatusRestoring},
		{"placed at its own epoch", &Place{At: t0, ID: wFailed, Owner: "n3", Epoch: 5, Seq: 9}, ErrStale, StatusRetrying},
		{"given up again", &GiveUp{At: t0, ID: wFailed, Epoch: 5, Reason: "no candidate"}, nil, StatusFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := retrying(t)
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			err := s.Apply(tc.cmd)
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("Apply %T: %v, want %v", tc.cmd, err, tc.wantErr)
			}
			w := s.Workloads[wFailed]
			if w.Status != tc.status {
				t.Errorf("status %s, want %s", w.Status, tc.status)
			}
			if tc.status == StatusRestoring && (len(w.Tried) != 0 || w.LastError != "") {
				t.Errorf("the retry's placement kept tried %v, last error %q", w.Tried, w.LastError)
			}
			if err := s.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// The new fields and the retrying status survive a snapshot.
func TestBadCheckpointInSnapshot(t *testing.T) {
	s := fixture()
	s.Workloads[wRun].Checkpoints[0].Bad = "failed at once"
	s.Workloads[wRun].RestoredFrom, s.Workloads[wRun].RestoredAt = 4, t0
	mustApply(t, s, &AppFailed{At: t0.Add(time.Second), ID: wRun, Node: "n1", Epoch: 2, Reason: "probe", Kind: FailProbe})
	mustApply(t, s, &RetryWorkload{At: t0, ID: wFailed, Epoch: 5, Reason: "retry"})
	var b strings.Builder
	if err := s.WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	w := got.Workloads[wRun]
	if w.Checkpoints[0].Bad != "failed at once" || w.RestoredFrom != 4 || !w.RestoredAt.Equal(t0) || w.FailKind != FailProbe {
		t.Errorf("after a snapshot: bad %q, restored from #%d at %s, kind %q", w.Checkpoints[0].Bad, w.RestoredFrom, w.RestoredAt, w.FailKind)
	}
	if r := got.Workloads[wFailed]; r.Status != StatusRetrying || r.Owner != "" || r.Epoch != 5 {
		t.Errorf("after a snapshot: %s owned by %q at epoch %d, want retrying, no owner, epoch 5", r.Status, r.Owner, r.Epoch)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("the snapshot changed the state:\n got %s\nwant %s", dump(got), dump(s))
	}
}

// Only an application's own failures can condemn a checkpoint.
func TestFailKindOwn(t *testing.T) {
	for k, want := range map[FailKind]bool{FailExited: true, FailProbe: true, FailLost: false, FailFenced: false,
		FailMigration: false, "": false, "something new": false} {
		if k.Own() != want {
			t.Errorf("FailKind(%q).Own() = %v, want %v", k, !want, want)
		}
	}
}

func mustApply(t *testing.T, s *State, cmd Command) {
	t.Helper()
	if err := s.Apply(cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
}
