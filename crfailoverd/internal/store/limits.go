package store

import (
	"errors"
	"fmt"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// MaxSeq is the largest sequence number the store accepts or assigns: the
// largest integer a float64 (JSON in other tools, the Raft state's numbers)
// holds exactly. It equals cluster/state.MaxNumber.
const MaxSeq = 1 << 53

// Options configure a store opened with OpenWith.
type Options struct {
	Retention int       // entries kept per workload, at least 1
	Key       *seal.Key // nil: archives are kept in plaintext
	Limits    Limits
	// Node is this node's name: entries whose Source is another node (or
	// whose Method is "replica") are replicas, which the quotas and
	// min_free bound.
	Node string
}

// Limits bound what the store takes. 0 means no limit.
type Limits struct {
	MaxArchiveBytes int64 // one archive (plaintext), local or replica
	WorkloadQuota   int64 // all replicas of one workload
	NodeQuota       int64 // all replicas in the store
	MinFree         int64 // bytes an import must leave free on the store's file system
}

// ErrQuota is returned (wrapped, as a *QuotaError) when the store refuses
// an archive for its size: larger than max_archive_bytes, over a replica
// quota, or leaving less than min_free on the file system.
var ErrQuota = errors.New("store limit exceeded")

// ErrSeq is returned (wrapped) when a sequence number is above MaxSeq, or
// the workload's next number would be.
var ErrSeq = errors.New("sequence number out of range")

// QuotaError names what was refused and by which limit.
type QuotaError struct {
	Workload Workload
	Seq      uint64 // 0: not yet assigned
	Limit    string // "max_archive_bytes", "workload_quota", "node_quota", "min_free"
	Size     int64  // the archive's size (announced, or read so far)
	Used     int64  // what the limit already counts (replicas held and reserved; for min_free: bytes free)
	Max      int64  // the limit's value
}

func (e *QuotaError) Error() string {
	what := fmt.Sprintf("archive of %s", e.Workload)
	if e.Seq != 0 {
		what = fmt.Sprintf("archive of %s seq %d", e.Workload, e.Seq)
	}
	switch e.Limit {
	case "max_archive_bytes":
		return fmt.Sprintf("%s refused: %d bytes is more than store.max_archive_bytes %d", what, e.Size, e.Max)
	case "min_free":
		return fmt.Sprintf("%s refused: %d bytes would leave less than store.min_free %d free (%d free)", what, e.Size, e.Max, e.Used)
	default:
		return fmt.Sprintf("%s refused: %d bytes with the %d already held or reserved is more than store.%s %d", what, e.Size, e.Used, e.Limit, e.Max)
	}
}

// Unwrap makes errors.Is(err, ErrQuota) hold.
func (e *QuotaError) Unwrap() error { return ErrQuota }
