package fenceguard

import (
	"math/rand"
	"strings"
	"testing"
	"time"
)

func cp(id string, pid int, start uint64) Copy {
	return Copy{ContainerID: id, PID: pid, StartTime: start, Cgroup: "0::/c/" + id}
}

func allAlive(Copy) bool { return true }

func TestApplyAndDue(t *testing.T) {
	a, b := cp("a", 100, 7), cp("b", 200, 9)
	tests := []struct {
		name         string
		start        State
		renewals     []Renewal
		alive        func(Copy) bool
		now          int64
		wantDeadline int64
		wantDue      []string
	}{
		{name: "never armed: nothing is due, however late",
			renewals: []Renewal{{Copies: []Copy{a}}}, now: 1 << 60, wantDeadline: 0},
		{name: "deadline not passed",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a}}}, now: 999, wantDeadline: 1000},
		{name: "deadline passed: every copy is due",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a, b}}}, now: 1000, wantDeadline: 1000, wantDue: []string{"a", "b"}},
		{name: "renewal with contact moves the deadline",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a}}, {Contact: true, Deadline: 3000}}, now: 2000, wantDeadline: 3000},
		{name: "renewal without contact never extends",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a}}, {Deadline: 5000}, {Deadline: 9000, Copies: []Copy{b}}}, now: 1500, wantDeadline: 1000, wantDue: []string{"a", "b"}},
		{name: "a restarted daemon's copies join the old deadline",
			start:    State{Deadline: 1000},
			renewals: []Renewal{{Copies: []Copy{b}}}, now: 1001, wantDeadline: 1000, wantDue: []string{"b"}},
		{name: "copies are kept when a renewal omits them",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a}}, {Contact: true, Deadline: 1000}}, now: 1000, wantDeadline: 1000, wantDue: []string{"a"}},
		{name: "copies whose process is gone are forgotten",
			renewals: []Renewal{{Contact: true, Deadline: 1000, Copies: []Copy{a, b}}},
			alive:    func(c Copy) bool { return c.ContainerID != "a" }, now: 1000, wantDeadline: 1000, wantDue: []string{"b"}},
		{name: "the same process listed twice is one copy",
			renewals: []Renewal{{Contact: true, Deadline: 10, Copies: []Copy{a, a}}, {Copies: []Copy{a}}}, now: 10, wantDeadline: 10, wantDue: []string{"a"}},
		{name: "contact without a deadline does not arm",
			renewals: []Renewal{{Contact: true, Copies: []Copy{a}}}, now: 1 << 60, wantDeadline: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.start
			alive := tt.alive
			if alive == nil {
				alive = allAlive
			}
			for _, r := range tt.renewals {
				s.Apply(r, alive)
			}
			if s.Deadline != tt.wantDeadline {
				t.Errorf("deadline %d, want %d", s.Deadline, tt.wantDeadline)
			}
			var got []string
			for _, c := range s.Due(tt.now) {
				got = append(got, c.ContainerID)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantDue, ",") {
				t.Errorf("due %v, want %v", got, tt.wantDue)
			}
		})
	}
}

func TestDueOncePerCopy(t *testing.T) {
	var s State
	s.Apply(Renewal{Contact: true, Deadline: 10, Copies: []Copy{cp("a", 1, 1), cp("b", 2, 2)}}, allAlive)
	for _, c := range s.Due(20) {
		s.Handled(c)
	}
	if d := s.Due(30); len(d) != 0 {
		t.Fatalf("handled copies due again: %v", d)
	}
	// A copy listed after the expiry is due at once.
	s.Apply(Renewal{Copies: []Copy{cp("c", 3, 3)}}, allAlive)
	if d := s.Due(30); len(d) != 1 || d[0].ContainerID != "c" {
		t.Fatalf("due %v, want c", d)
	}
}

// TestNoContactNeverExtends: whatever mix of renewals arrives, the
// deadline is the last one given with contact.
func TestNoContactNeverExtends(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for run := 0; run < 1000; run++ {
		var s State
		var want int64
		for i := 0; i < 50; i++ {
			r := Renewal{Contact: rng.Intn(2) == 0, Deadline: rng.Int63n(1e12)}
			if rng.Intn(3) == 0 {
				r.Copies = []Copy{cp("x", rng.Intn(5)+2, uint64(rng.Intn(3)))}
			}
			s.Apply(r, allAlive)
			if r.Contact && r.Deadline > 0 {
				want = r.Deadline
			}
			if s.Deadline != want {
				t.Fatalf("run %d step %d: deadline %d, want %d (renewal %+v)", run, i, s.Deadline, want, r)
			}
		}
	}
}

func TestDone(t *testing.T) {
	a := cp("a", 100, 7)
	tests := []struct {
		name string
		rs   []Renewal
		now  int64
		kill bool
		want bool
	}{
		{"not asked to stop", []Renewal{{Contact: true, Deadline: 10}}, 100, false, false},
		{"never armed: exits at once", []Renewal{{Copies: []Copy{a}}, {Stop: true}}, 0, false, true},
		{"no copy: exits at once", []Renewal{{Contact: true, Deadline: 10}, {Stop: true}}, 0, false, true},
		{"copies before the deadline: waits", []Renewal{{Contact: true, Deadline: 10, Copies: []Copy{a}}, {Stop: true}}, 5, false, false},
		{"after the deadline, copies killed: exits", []Renewal{{Contact: true, Deadline: 10, Copies: []Copy{a}}, {Stop: true}}, 10, true, true},
		{"a renewal with contact cancels the stop", []Renewal{{Contact: true, Deadline: 10, Copies: []Copy{a}}, {Stop: true}, {Contact: true, Deadline: 20}}, 30, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s State
			for _, r := range tt.rs {
				s.Apply(r, allAlive)
			}
			if tt.kill {
				for _, c := range s.Due(tt.now) {
					s.Handled(c)
				}
			}
			if got := s.Done(tt.now); got != tt.want {
				t.Errorf("Done = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	c := cp("a", 100, 7)
	tests := []struct {
		name    string
		c       Copy
		o       Observed
		wantErr string
	}{
		{"same process", c, Observed{StartTime: 7, Cgroup: c.Cgroup}, ""},
		{"start time differs: PID reused", c, Observed{StartTime: 8, Cgroup: c.Cgroup}, "refused to kill container a (pid 100): the process has start time 8, the daemon listed 7 (the PID was reused)"},
		{"cgroup differs", c, Observed{StartTime: 7, Cgroup: "0::/other"}, `refused to kill container a (pid 100): the process is in cgroup "0::/other"`},
		{"pid 1", cp("a", 1, 7), Observed{StartTime: 7, Cgroup: c.Cgroup}, "refused to kill container a (pid 1): pid 1 is no container's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.c, tt.o)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestStartTime(t *testing.T) {
	tests := []struct {
		stat string
		want uint64
		ok   bool
	}{
		{"1234 (sleep) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 8192000 200 18446744073709551615", 987654, true},
		{"1234 (a b) c)) R 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 42 8192000", 42, true},
		{"1234 (short) S 1 2 3", 0, false},
		{"no parenthesis", 0, false},
	}
	for _, tt := range tests {
		got, err := StartTime([]byte(tt.stat))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("StartTime(%q) = %d, %v; want %d ok=%v", tt.stat, got, err, tt.want, tt.ok)
		}
	}
}

func TestDeadlineFrom(t *testing.T) {
	now := time.Now()
	const mono = int64(100 * time.Second)
	tests := []struct {
		name       string
		lastQuorum time.Time
		lease      time.Duration
		want       int64
		ok         bool
	}{
		{"no contact: no deadline", time.Time{}, 3 * time.Second, 0, false},
		{"contact now, default lease: 2.5 s", now, 3 * time.Second, mono + int64(2500*time.Millisecond), true},
		{"contact 1 s ago", now.Add(-time.Second), 3 * time.Second, mono + int64(1500*time.Millisecond), true},
		{"contact 4 s ago: in the past", now.Add(-4 * time.Second), 3 * time.Second, mono - int64(1500*time.Millisecond), true},
	}
	for _, tt := range tests {
		got, ok := DeadlineFrom(tt.lastQuorum, now, mono, tt.lease)
		if ok != tt.ok || got != tt.want {
			t.Errorf("%s: %d %v, want %d %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestApplyManifestAndParkDir(t *testing.T) {
	var s State
	a := cp("a", 100, 7)
	s.Apply(Renewal{Contact: true, Deadline: 10, Copies: []Copy{a}, ParkDir: "/d/parked"}, allAlive)
	withManifest := a
	withManifest.Manifest = "/etc/kubernetes/manifests/crf-a.yaml"
	s.Apply(Renewal{Copies: []Copy{withManifest}}, allAlive)
	if len(s.Copies) != 1 || s.Copies[0].Manifest != withManifest.Manifest {
		t.Fatalf("copies %+v, want one with the manifest", s.Copies)
	}
	s.Apply(Renewal{Copies: []Copy{a}}, allAlive) // a listing without it keeps it
	if s.Copies[0].Manifest != withManifest.Manifest || s.ParkDir != "/d/parked" {
		t.Fatalf("manifest %q park dir %q after a listing without them", s.Copies[0].Manifest, s.ParkDir)
	}
}
