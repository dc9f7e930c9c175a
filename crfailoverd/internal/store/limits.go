package store

import (
	"errors"
	"fmt"
	"io"
	"math"
	"syscall"

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

// statfs is the file system's free space for the store's root; tests
// replace it.
var statfs = func(path string) (free int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// freeCheckEvery is how many bytes an import writes between two checks of
// min_free against the file system (others, such as local checkpoints, may
// be filling it meanwhile).
const freeCheckEvery = 16 << 20

// reservation is the space an import in progress holds: its announced size
// from the start (so two imports cannot both pass a limit that only one
// fits), or, without an announced size, what it has read so far.
type reservation struct {
	s        *Store
	w        Workload
	seq      uint64
	reserved int64 // bytes counted against the limits
	written  int64 // bytes read so far
	checked  int64 // written at the last min_free check
}

// isReplica reports whether e counts against the replica quotas: it came
// from another node (or says it is a replica).
func (s *Store) isReplica(e Entry) bool {
	return e.Method == "replica" || e.Source != s.node
}

// recount refreshes the bytes the workload's committed replicas take. The
// caller holds the workload's lock. On a read error the old figure stays.
func (s *Store) recount(w Workload) {
	es, err := s.entries(w)
	if err != nil {
		return
	}
	var n int64
	for _, e := range es {
		if s.isReplica(e) {
			n = satAdd(n, e.Size)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == 0 {
		delete(s.replicas, w.dirName())
	} else {
		s.replicas[w.dirName()] = n
	}
}

// reserve checks that an import of w announced as size bytes (0: not
// announced) fits every limit, and holds the space until release.
func (s *Store) reserve(w Workload, seq uint64, size int64) (*reservation, error) {
	r := &reservation{s: s, w: w, seq: seq}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admit(r, size, true); err != nil {
		return nil, err
	}
	s.pending[r] = true
	return r, nil
}

// grow raises r's reservation to cover n bytes read, and every
// freeCheckEvery bytes checks min_free again.
func (r *reservation) grow(n int64) error {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r.written = n
	freeAgain := n-r.checked >= freeCheckEvery
	if n <= r.reserved && !freeAgain {
		return nil
	}
	if err := s.admit(r, max(n, r.reserved), freeAgain || n > r.reserved); err != nil {
		return err
	}
	if freeAgain {
		r.checked = n
	}
	return nil
}

// release gives the reservation's space back.
func (r *reservation) release() {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	delete(r.s.pending, r)
}

// admit checks that r may hold size bytes, and if so sets r.reserved. The
// caller holds s.mu. checkFree asks the file system too.
func (s *Store) admit(r *reservation, size int64, checkFree bool) error {
	l := s.limits
	refuse := func(limit string, used, limitMax int64) error {
		return &QuotaError{Workload: r.w, Seq: r.seq, Limit: limit, Size: size, Used: used, Max: limitMax}
	}
	if l.MaxArchiveBytes > 0 && size > l.MaxArchiveBytes {
		return refuse("max_archive_bytes", 0, l.MaxArchiveBytes)
	}
	dir := r.w.dirName()
	wUsed, nUsed := s.replicas[dir], int64(0)
	for _, n := range s.replicas {
		nUsed = satAdd(nUsed, n)
	}
	var pendingUnwritten int64 // space other imports will still write
	for o := range s.pending {
		if o == r {
			continue
		}
		if o.w == r.w {
			wUsed = satAdd(wUsed, o.reserved)
		}
		nUsed = satAdd(nUsed, o.reserved)
		pendingUnwritten = satAdd(pendingUnwritten, max(o.reserved-o.written, 0))
	}
	if l.WorkloadQuota > 0 && satAdd(wUsed, size) > l.WorkloadQuota {
		return refuse("workload_quota", wUsed, l.WorkloadQuota)
	}
	if l.NodeQuota > 0 && satAdd(nUsed, size) > l.NodeQuota {
		return refuse("node_quota", nUsed, l.NodeQuota)
	}
	if l.MinFree > 0 && checkFree {
		free, err := statfs(s.root)
		if err != nil {
			return fmt.Errorf("check store.min_free: %w", err)
		}
		// What this import has written is already out of free; what it and
		// the others will still write is not yet.
		need := satAdd(satAdd(pendingUnwritten, max(size-r.written, 0)), l.MinFree)
		if free < need {
			return refuse("min_free", free, l.MinFree)
		}
	}
	r.reserved = size
	return nil
}

// limitReader feeds an import: it counts the bytes, refuses a stream longer
// than announced, and grows the reservation (checking the limits) as it
// goes.
type limitReader struct {
	r         io.Reader
	res       *reservation
	announced int64 // 0: not announced
	n         int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.announced > 0 && int64(len(p)) > l.announced-l.n+1 {
		p = p[:l.announced-l.n+1] // read at most one byte past the announced end
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.announced > 0 && l.n > l.announced {
		return n, fmt.Errorf("the stream is longer than the %d bytes announced: cut", l.announced)
	}
	if n > 0 {
		if gerr := l.res.grow(l.n); gerr != nil {
			return n, fmt.Errorf("cut after %d bytes: %w", l.n, gerr)
		}
	}
	return n, err
}

// satAdd adds two non-negative sizes, saturating instead of overflowing.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
