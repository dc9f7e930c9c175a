package event

import "testing"

func TestRingKeepsTheLastAndPassesOn(t *testing.T) {
	var passed []Event
	r := &Ring{Size: 3, Next: func(e Event) { passed = append(passed, e) }}
	for i := range 5 {
		r.Emit(Event{Kind: Placed, Seq: uint64(i)})
	}
	got := r.Recent()
	if len(got) != 3 || got[0].Seq != 2 || got[2].Seq != 4 {
		t.Fatalf("recent = %+v, want seqs 2..4", got)
	}
	if len(passed) != 5 {
		t.Fatalf("passed on %d events, want 5", len(passed))
	}
	if got[0].At.IsZero() {
		t.Fatal("event not stamped")
	}
}
