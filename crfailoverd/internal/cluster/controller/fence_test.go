package controller

import (
	"testing"
	"time"
)

func TestFenceClock(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step struct {
		s                 quorumSample
		connected, fenced bool
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"never connected is neither connected nor fenced", []step{
			{quorumSample{now: at(0), voters: 3, votersUp: 1}, false, false},
			{quorumSample{now: at(5000), voters: 3, votersUp: 1}, false, false},
		}},
		{"leader is connected", []step{
			{quorumSample{now: at(0), leader: true, leaderKnown: true, voters: 3, votersUp: 3}, true, false},
		}},
		{"follower with fresh contact is connected", []step{
			{quorumSample{now: at(500), leaderKnown: true, lastContact: at(0), voters: 3, votersUp: 3}, true, false},
		}},
		{"follower with stale contact: not connected, fenced after half the lease", []step{
			{quorumSample{now: at(0), leaderKnown: true, lastContact: at(0), voters: 3, votersUp: 3}, true, false},
			{quorumSample{now: at(1200), leaderKnown: true, lastContact: at(0), voters: 3, votersUp: 3}, false, false},
			{quorumSample{now: at(1600), leaderKnown: false, voters: 3, votersUp: 3}, false, true},
		}},
		{"minority of voters fences at once, and a quorum unfences", []step{
			{quorumSample{now: at(0), leader: true, leaderKnown: true, voters: 3, votersUp: 3}, true, false},
			{quorumSample{now: at(100), leaderKnown: true, lastContact: at(100), voters: 3, votersUp: 1}, true, true},
			{quorumSample{now: at(200), leaderKnown: true, lastContact: at(200), voters: 3, votersUp: 2}, true, false},
		}},
		{"a leader election shorter than half the lease fences nobody", []step{
			{quorumSample{now: at(0), leaderKnown: true, lastContact: at(0), voters: 3, votersUp: 3}, true, false},
			{quorumSample{now: at(1000), leaderKnown: false, voters: 3, votersUp: 3}, false, false},
			{quorumSample{now: at(1400), leaderKnown: true, lastContact: at(1400), voters: 3, votersUp: 3}, true, false},
		}},
		{"unknown configuration counts as no minority", []step{
			{quorumSample{now: at(0), leader: true, voters: 0}, true, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fenceClock{lease: 3 * time.Second}
			for i, st := range c.steps {
				v := f.observe(st.s)
				if v.connected != st.connected || v.fenced != st.fenced {
					t.Fatalf("step %d: connected=%t fenced=%t (why %q), want connected=%t fenced=%t", i, v.connected, v.fenced, v.why, st.connected, st.fenced)
				}
				if v.fenced && v.why == "" {
					t.Fatalf("step %d: fenced without a reason", i)
				}
			}
		})
	}
}

// TestFenceClockLastQuorum: the fence guard's deadline comes from
// lastQuorum, which only real contact moves, and never backwards.
func TestFenceClockLastQuorum(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	cases := []struct {
		name    string
		samples []quorumSample
		want    time.Time
	}{
		{"no contact since start: zero", []quorumSample{
			{now: at(0), voters: 3, votersUp: 3},
			{now: at(900), leaderKnown: true, voters: 3, votersUp: 3}, // a leader known, but never heard
		}, time.Time{}},
		{"leader: its own look", []quorumSample{{now: at(700), leader: true, leaderKnown: true, voters: 3, votersUp: 3}}, at(700)},
		{"follower: the leader's last contact, not the look", []quorumSample{{now: at(900), leaderKnown: true, lastContact: at(400), voters: 3, votersUp: 3}}, at(400)},
		{"looks without contact do not move it", []quorumSample{
			{now: at(0), leaderKnown: true, lastContact: at(0), voters: 3, votersUp: 3},
			{now: at(2000), voters: 3, votersUp: 1},
			{now: at(4000), voters: 3, votersUp: 3},
		}, at(0)},
		{"an older contact does not move it back", []quorumSample{
			{now: at(1000), leader: true, leaderKnown: true, voters: 3, votersUp: 3},
			{now: at(1100), leaderKnown: true, lastContact: at(500), voters: 3, votersUp: 3},
		}, at(1000)},
	}
	for _, tc := range cases {
		f := fenceClock{lease: 3 * time.Second}
		for _, s := range tc.samples {
			f.observe(s)
		}
		if !f.lastQuorum.Equal(tc.want) {
			t.Errorf("%s: lastQuorum %v, want %v", tc.name, f.lastQuorum, tc.want)
		}
	}
}
