package agent

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/discovery"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// LocalCopy is a container of a protected workload that the last
// discovery pass found on this node, not exited: a copy the fence guard
// kills if the daemon stops renewing its lease.
type LocalCopy struct {
	Workload    store.Workload
	SandboxID   string
	ContainerID string
}

// LocalCopies returns the copies of the last successful discovery pass,
// whatever the cluster says of them (a copy being stopped is still a
// copy); known is false before the first one.
func (a *Agent) LocalCopies() (copies []LocalCopy, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]LocalCopy(nil), a.copies...), a.copiesKnown
}

// noteCopies records the copies among what discovery found; a.mu is held.
func (a *Agent) noteCopies(found []discovery.Workload) {
	a.copies = a.copies[:0]
	for _, w := range found {
		if w.ContainerID == "" || w.State == cri.StateExited {
			continue
		}
		a.copies = append(a.copies, LocalCopy{Workload: w.ID, SandboxID: w.SandboxID, ContainerID: w.ContainerID})
	}
	a.copiesKnown = true
}

// ParkedDir is where static pod manifests are held back until the cluster
// says whether this node still owns their workloads (the fence guard parks
// a killed copy's manifest there too).
func (a *Agent) ParkedDir() string { return a.parkedDir() }
