package store

import (
	"testing"

	raftstate "github.com/crfailoverd/crfailoverd/crfailoverd/internal/cluster/state"
)

// TestMaxSeqIsRaftsMaxNumber: the store accepts exactly the sequence
// numbers the replicated state can record.
func TestMaxSeqIsRaftsMaxNumber(t *testing.T) {
	if MaxSeq != raftstate.MaxNumber {
		t.Errorf("store.MaxSeq = %d, cluster/raftstate.MaxNumber = %d", uint64(MaxSeq), uint64(raftstate.MaxNumber))
	}
}
