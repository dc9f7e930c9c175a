package controller

import (
	"fmt"
	"time"
)

// quorumSample is what the controller reads of Raft and gossip at one
// moment.
type quorumSample struct {
	now         time.Time
	leader      bool      // this node leads
	leaderKnown bool      // a leader is known
	lastContact time.Time // last contact with the leader (zero: none)
	voters      int       // Raft voters (0: configuration unknown)
	votersUp    int       // voters gossip shows alive, this node included
}

// fenceClock decides, from samples, whether this node is in contact with a
// working quorum and whether it is fenced. It does no I/O.
//
//   - connected: it leads (Raft steps a leader down within its lease of
//     losing the quorum), or it heard from a leader within a second;
//   - fenced: it was connected once, and now sees fewer than a quorum of
//     the voters alive (gossip notices in well under a second) or has had
//     no quorum contact for longer than half the lease. Half the lease, so
//     that its copies stop (at the next discovery, a second later at most)
//     within the lease, while a leader election (about a second) fences
//     nobody. A node that never had contact (still forming the cluster) is
//     not fenced, only not admitted.
type fenceClock struct {
	lease         time.Duration
	everConnected bool
	minoritySince time.Time
	lastQuorum    time.Time
}

// fenceVerdict is the clock's answer for one sample.
type fenceVerdict struct {
	connected bool
	fenced    bool
	why       string
	// transitions to log
	firstContact   bool // connected for the first time
	minorityEnded  bool // sees a quorum again
	votersUp, nVot int
}

// contactFresh is how recent the last contact with a leader must be for a
// follower to count as connected.
const contactFresh = time.Second

func (f *fenceClock) observe(s quorumSample) fenceVerdict {
	v := fenceVerdict{votersUp: s.votersUp, nVot: s.voters}
	switch {
	case s.voters == 0 || s.votersUp > s.voters/2:
		v.minorityEnded = !f.minoritySince.IsZero()
		f.minoritySince = time.Time{}
	case f.minoritySince.IsZero():
		f.minoritySince = s.now
	}
	switch {
	case s.leader:
		f.contact(s.now, &v)
		v.connected = true
	case s.leaderKnown && !s.lastContact.IsZero():
		f.contact(s.lastContact, &v)
		v.connected = s.now.Sub(s.lastContact) < contactFresh
	}
	if !f.everConnected {
		return v
	}
	switch {
	case !f.minoritySince.IsZero():
		v.fenced, v.why = true, fmt.Sprintf("%d of %d raft voters answer gossip (no quorum) since %s", s.votersUp, s.voters, f.minoritySince.UTC().Format(time.RFC3339Nano))
	case s.now.Sub(f.lastQuorum) > f.lease/2:
		// Stable while it lasts (no elapsed time), so that the published
		// view does not change, and wake its readers, at every look.
		v.fenced, v.why = true, fmt.Sprintf("no contact with a quorum since %s (more than half the %s lease)", f.lastQuorum.UTC().Format(time.RFC3339Nano), f.lease)
	}
	return v
}

func (f *fenceClock) contact(at time.Time, v *fenceVerdict) {
	if at.After(f.lastQuorum) {
		f.lastQuorum = at
	}
	if !f.everConnected {
		f.everConnected = true
		v.firstContact = true
	}
}
