package agent

import (
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// TestImagePending: the image endpoint serves a checkpoint only while a
// restore from exactly it is handed to kubelet, for at most handoffWait.
func TestImagePending(t *testing.T) {
	w := store.Workload{Namespace: "default", Pod: "counter", Container: "counter"}
	other := store.Workload{Namespace: "default", Pod: "db", Container: "db"}
	t0 := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	now := t0
	a := &Agent{now: func() time.Time { return now }, handoffs: map[store.Workload]handoff{
		w: {checkpoint: "default/counter/counter:7", epoch: 3, at: t0},
	}}
	for _, tc := range []struct {
		w     store.Workload
		seq   uint64
		after time.Duration
		want  bool
	}{
		{w, 7, 0, true},
		{w, 7, handoffWait - time.Second, true},
		{w, 7, handoffWait, false},
		{w, 6, 0, false},
		{w, 70, 0, false},
		{other, 7, 0, false},
	} {
		now = t0.Add(tc.after)
		if got := a.ImagePending(tc.w, tc.seq); got != tc.want {
			t.Errorf("ImagePending(%s, %d) %v after the hand-over = %t, want %t", tc.w, tc.seq, tc.after, got, tc.want)
		}
	}
}
