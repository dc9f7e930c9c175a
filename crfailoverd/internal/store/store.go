// Package store keeps a node's container checkpoints: archives written by
// the container runtime (or streamed in from a peer), with their sha256,
// under the daemon's data directory, keeping the last K per workload.
//
// # On-disk layout
//
//	<root>/<namespace>_<pod>_<container>/   one directory per workload (0700)
//	    seq                                 high-water mark: largest sequence number ever assigned
//	    00000000000000000007.json           metadata sidecar of entry 7 (an Entry as JSON)
//	    00000000000000000007.tar            archive of entry 7 (sealed with the data key, or plaintext)
//	    .tmp-<random>                       temporary files (archives being written, metadata being replaced)
//	<root>/.plain/                          decrypted copies handed to the runtime (0700; files 0600)
//
// # Encryption at rest
//
// A store opened with a data key ([Options].Key) seals every archive it
// writes (age, see package seal): the sidecar records "sealed": true, while
// its sha256 and size stay those of the plaintext, which is what Raft
// records and peers announce. Entries written in plaintext (before the key,
// or with store.plaintext) stay readable. Every reader goes through
// [Store.OpenArchive], which decrypts as it reads; the runtime, which needs
// a file, gets one from [Store.PlaintextFile], removed right after.
//
// # Commit protocol
//
// An entry is visible if and only if its .tar exists; renaming the archive
// to <seq>.tar is the single commit point. Before it, in order:
//
//  1. the archive is complete in a .tmp- file in the workload's directory,
//     hashed (its plaintext) and fsynced; with a data key the file is the
//     sealed archive, written by encrypting the stream (an import) or the
//     runtime's file (a commit: the runtime's plaintext file is moved into
//     the workload's directory as a .tmp- file first, sealed into another
//     .tmp- file, then removed);
//  2. seq is raised to the entry's sequence number (temp file, fsync,
//     rename), so the number is never handed out again, whatever happens
//     to the entry;
//  3. the sidecar <seq>.json is written (temp file, fsync, rename) and the
//     directory is fsynced, so the sidecar is durable before the archive
//     can appear.
//
// Then the archive is renamed to <seq>.tar and the directory is fsynced.
// Retention deletes an entry's archive first, then its sidecar, and MarkBad
// replaces a sidecar with a rename, so a .tar never lacks its .json.
//
// A crash can therefore leave only .tmp- files and sidecars without an
// archive; [Open] removes both (and, defensively, any archive without a
// sidecar, which this package never produces), empties .plain, then
// applies retention.
//
// # Limits
//
// An archive larger than [Limits].MaxArchiveBytes is refused by Commit and
// Import. Imports (replicas from peers) are also bounded by the replica
// quotas and by min_free: before anything is written, and again while the
// stream is read; see [Store.Import]. Sequence numbers are at most [MaxSeq],
// and a workload whose highest number is MaxSeq gets no next one.
//
// A Store assumes it is the only user of its root directory.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
)

// ErrNotFound is returned (wrapped) when a workload has no entry with the
// requested sequence number.
var ErrNotFound = errors.New("checkpoint not found")

// ErrDigest is returned (wrapped) by Commit and Import when the archive's
// sha256 is not the one announced: nothing was stored.
var ErrDigest = errors.New("sha256 mismatch")

// ErrNoKey is returned (wrapped) when a sealed archive is read by a store
// without a data key.
var ErrNoKey = errors.New("no data key")

// ErrPruned is returned (wrapped) by Import when the imported entry is older
// than the entries retention keeps, so it was deleted again at once.
var ErrPruned = errors.New("checkpoint older than the retained ones")

const (
	seqFile   = "seq"
	tmpPrefix = ".tmp-"
	seqDigits = 20 // enough for any uint64
)

// Entry describes one committed checkpoint.
type Entry struct {
	Workload  Workload      `json:"workload"`
	Seq       uint64        `json:"seq"`         // per-workload sequence, increasing, starts at 1
	Path      string        `json:"-"`           // absolute path of the archive
	SHA256    string        `json:"sha256"`      // hex
	Size      int64         `json:"size"`        // bytes
	Created   time.Time     `json:"created"`     // when the checkpoint was taken (UTC)
	Method    string        `json:"method"`      // "kubelet" | "cri" | "replica" | ...
	Duration  time.Duration `json:"duration_ns"` // how long the checkpoint call took
	Source    string        `json:"source"`      // node that took it
	Bad       bool          `json:"bad"`         // marked unusable (a restore from it failed)
	BadReason string        `json:"bad_reason,omitempty"`
	// Sealed: the archive file is encrypted with the data key (SHA256 and
	// Size are still the plaintext's). Entries without it are plaintext.
	Sealed bool `json:"sealed,omitempty"`
}

// Store is the local checkpoint store. It is safe for concurrent use;
// operations on one workload are serialized, different workloads proceed in
// parallel. Archives are streamed and hashed outside the workload's lock.
type Store struct {
	root   string
	key    *seal.Key // nil: plaintext
	limits Limits
	node   string

	mu        sync.Mutex
	retention int
	locks     map[string]*sync.Mutex // by workload directory name
	replicas  map[string]int64       // bytes of committed replicas, by workload directory name (see recount)
	pending   map[*reservation]bool  // imports in progress
}

// crashHook, when set by tests, is called at each step of a write, with the
// step's name; the on-disk state at that moment is what a crash would leave.
var crashHook func(step string)

func crashPoint(step string) {
	if crashHook != nil {
		crashHook(step)
	}
}

// Open opens the store at root, creating it (0700) if needed. It cleans up
// what an interrupted write left behind (temporary files, sidecars without
// an archive) and applies retention, which keeps at least one entry per
// workload (see SetRetention).
func Open(root string, retention int) (*Store, error) {
	return OpenWith(root, Options{Retention: retention})
}

// OpenWith opens the store at root like Open, with a data key (archives
// are then sealed when written) and limits. It also removes plaintext
// files that PlaintextFile handed out before a crash.
func OpenWith(root string, o Options) (*Store, error) {
	retention := o.Retention
	if retention < 1 {
		return nil, fmt.Errorf("store: open %s: retention %d, must be at least 1", root, retention)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("store: open: create root: %w", err)
	}
	s := &Store{
		root: abs, key: o.Key, limits: o.Limits, node: o.Node,
		retention: retention, locks: map[string]*sync.Mutex{},
		replicas: map[string]int64{}, pending: map[*reservation]bool{},
	}
	if err := s.cleanPlainDir(); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	des, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	for _, de := range des {
		w, ok := parseDirName(de.Name())
		if !ok || !de.IsDir() {
			continue
		}
		if err := s.recover(w); err != nil {
			return nil, fmt.Errorf("store: open: recover %s: %w", w, err)
		}
		unlock := s.lock(w)
		_, err := s.prune(w)
		s.recount(w)
		unlock()
		if err != nil {
			return nil, fmt.Errorf("store: open: apply retention to %s: %w", w, err)
		}
	}
	return s, nil
}

// Limits returns the limits the store enforces.
func (s *Store) Limits() Limits { return s.limits }

// Sealing reports whether the store encrypts the archives it writes.
func (s *Store) Sealing() bool { return s.key != nil }

// SetRetention sets how many entries per workload to keep (at least 1). It
// takes effect at the next Commit or Import of each workload.
func (s *Store) SetRetention(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retention = max(k, 1)
}

// TempPath returns a fresh path that does not exist yet, hidden in the
// workload's directory (created 0700), for a runtime to write an archive
// into before passing it to Commit. Open removes such files if they are
// never committed.
func (s *Store) TempPath(w Workload) (string, error) {
	dir, err := s.ensureDir(w)
	if err != nil {
		return "", fmt.Errorf("store: temp path for %s: %w", w, err)
	}
	for {
		p := tempName(dir)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return p, nil
		} else if err != nil {
			return "", fmt.Errorf("store: temp path for %s: %w", w, err)
		}
	}
}

// Commit adds the complete archive at tmp as the workload's next entry.
// tmp is normally from TempPath; a file elsewhere is moved in (copied if it
// is on another file system). The store computes sha256 and size (if
// meta.SHA256 is set it must match), fsyncs the archive, assigns the next
// Seq, makes the entry visible atomically and applies retention; meta
// supplies Created (default now), Method, Duration and Source. With a data
// key the archive is sealed and tmp (the runtime's plaintext) removed. An
// archive over max_archive_bytes is refused; the replica quotas and
// min_free do not apply to local checkpoints.
//
// On error nothing new is visible, older entries are intact and tmp is
// removed (unless it is a file of the store other than a temporary one,
// which Commit refuses to touch).
func (s *Store) Commit(w Workload, tmp string, meta Entry) (_ Entry, err error) {
	if abs, err := filepath.Abs(tmp); err != nil {
		return Entry{}, fmt.Errorf("store: commit %s from %s: %w", w, tmp, err)
	} else if strings.HasPrefix(abs, s.root+string(filepath.Separator)) && !strings.HasPrefix(filepath.Base(abs), tmpPrefix) {
		// Never move (or remove) a file the store owns, such as an archive.
		return Entry{}, fmt.Errorf("store: commit %s from %s: inside the store but not a temporary file", w, tmp)
	}
	staged := ""
	defer func() {
		if err != nil {
			os.Remove(tmp)
			if staged != "" {
				os.Remove(staged)
			}
			err = fmt.Errorf("store: commit %s from %s: %w", w, tmp, err)
		}
	}()
	dir, err := s.ensureDir(w)
	if err != nil {
		return Entry{}, err
	}
	staged, sum, size, err := s.stage(dir, tmp, w)
	if err != nil {
		return Entry{}, err
	}
	crashPoint("staged")
	if err := checkDigest(meta.SHA256, sum); err != nil {
		return Entry{}, err
	}
	e := newEntry(w, 0, sum, size, meta)
	e.Sealed = s.key != nil
	unlock := s.lock(w)
	defer unlock()
	return s.install(dir, staged, e)
}

// Import streams r into the store as an entry of w, then proceeds like
// Commit. Cancelling ctx aborts between reads (a Read that blocks must be
// unblocked by the caller, e.g. by closing the connection). If meta.SHA256
// is set, the stream's digest must match it. If meta.Seq is not 0 the entry
// gets that sequence number (replicas keep the origin's): if the workload
// already has it with the same sha256, Import returns the existing entry
// (without reading r when meta.SHA256 is given); with a different sha256
// it fails. An imported entry that retention would delete at once is
// rejected with ErrPruned. meta.Seq above MaxSeq is refused (ErrSeq).
//
// meta.Size, if not 0, is the size the sender announced: the stream must
// have exactly that many bytes (a longer one is cut after one byte more).
// The import is refused with a *QuotaError (ErrQuota), before anything is
// written when the announced size already exceeds a limit, else as soon as
// the bytes read do: max_archive_bytes; workload_quota (the workload's
// replicas, entries whose Source is another node or whose Method is
// "replica", plus the imports of it in progress); node_quota (all replicas
// plus all imports in progress); min_free (the file system's free space,
// less what imports in progress will still write, checked at the start and
// every 16 MiB). Imports in progress hold their announced size (or what
// they have read) so that two of them cannot both pass a limit only one
// fits. Every import counts against the quotas while it runs, whatever its
// Source.
//
// On error nothing new is visible and older entries are intact.
func (s *Store) Import(ctx context.Context, w Workload, r io.Reader, meta Entry) (_ Entry, err error) {
	defer func() {
		if err != nil {
			if meta.Seq != 0 {
				err = fmt.Errorf("store: import %s seq %d: %w", w, meta.Seq, err)
			} else {
				err = fmt.Errorf("store: import %s: %w", w, err)
			}
		}
	}()
	if meta.Seq > MaxSeq {
		return Entry{}, fmt.Errorf("seq %d is above the largest the store accepts, %d: %w", meta.Seq, uint64(MaxSeq), ErrSeq)
	}
	if meta.Size < 0 {
		return Entry{}, fmt.Errorf("announced size %d is negative", meta.Size)
	}
	dir, err := s.ensureDir(w)
	if err != nil {
		return Entry{}, err
	}
	if meta.Seq != 0 && meta.SHA256 != "" {
		unlock := s.lock(w)
		e, ok, err := s.existing(w, meta.Seq, meta.SHA256)
		unlock()
		if ok || err != nil {
			return e, err
		}
	}
	res, err := s.reserve(w, meta.Seq, meta.Size)
	if err != nil {
		return Entry{}, err
	}
	defer res.release()
	lr := &limitReader{r: ctxReader{ctx, r}, res: res, announced: meta.Size}
	tmp, sum, size, err := s.writeTemp(dir, lr)
	if err != nil {
		return Entry{}, err
	}
	crashPoint("staged")
	committed := false
	defer func() {
		if !committed {
			os.Remove(tmp)
		}
	}()
	if meta.Size > 0 && size != meta.Size {
		return Entry{}, fmt.Errorf("the stream ended after %d bytes, %d were announced", size, meta.Size)
	}
	if err := checkDigest(meta.SHA256, sum); err != nil {
		return Entry{}, err
	}
	if err := ctx.Err(); err != nil {
		return Entry{}, err
	}
	unlock := s.lock(w)
	defer unlock()
	if meta.Seq != 0 {
		if e, ok, err := s.existing(w, meta.Seq, sum); ok || err != nil {
			return e, err
		}
	}
	e := newEntry(w, meta.Seq, sum, size, meta)
	e.Sealed = s.key != nil
	e, err = s.install(dir, tmp, e)
	committed = err == nil
	return e, err
}

// List returns the workload's committed entries, newest (highest Seq)
// first. A workload without entries has an empty list.
func (s *Store) List(w Workload) ([]Entry, error) {
	if err := w.Validate(); err != nil {
		return nil, fmt.Errorf("store: list: %w", err)
	}
	unlock := s.lock(w)
	defer unlock()
	es, err := s.entries(w)
	if err != nil {
		return nil, fmt.Errorf("store: list %s: %w", w, err)
	}
	return es, nil
}

// Latest returns the newest entry not marked Bad; false if there is none.
func (s *Store) Latest(w Workload) (Entry, bool, error) {
	es, err := s.List(w)
	if err != nil {
		return Entry{}, false, err
	}
	for _, e := range es {
		if !e.Bad {
			return e, true, nil
		}
	}
	return Entry{}, false, nil
}

// Get returns the workload's entry seq, or an error wrapping ErrNotFound.
func (s *Store) Get(w Workload, seq uint64) (Entry, error) {
	if err := w.Validate(); err != nil {
		return Entry{}, fmt.Errorf("store: get: %w", err)
	}
	unlock := s.lock(w)
	defer unlock()
	e, err := s.load(w, seq)
	if err != nil {
		return Entry{}, fmt.Errorf("store: get %s seq %d: %w", w, seq, err)
	}
	return e, nil
}

// Workloads returns the workloads that have at least one entry, sorted by
// their string form.
func (s *Store) Workloads() ([]Workload, error) {
	des, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("store: list workloads: %w", err)
	}
	var ws []Workload
	for _, de := range des {
		w, ok := parseDirName(de.Name())
		if !ok || !de.IsDir() {
			continue
		}
		es, err := s.List(w)
		if err != nil {
			return nil, fmt.Errorf("store: list workloads: %w", err)
		}
		if len(es) > 0 {
			ws = append(ws, w)
		}
	}
	slices.SortFunc(ws, func(a, b Workload) int { return strings.Compare(a.String(), b.String()) })
	return ws, nil
}

// MarkBad records that entry seq is unusable (for instance a restore from
// it failed), with the reason, by atomically replacing its sidecar. Latest
// skips Bad entries; retention still counts them.
func (s *Store) MarkBad(w Workload, seq uint64, reason string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: mark %s seq %d bad: %w", w, seq, err)
		}
	}()
	if err := w.Validate(); err != nil {
		return err
	}
	unlock := s.lock(w)
	defer unlock()
	e, err := s.load(w, seq)
	if err != nil {
		return err
	}
	e.Bad, e.BadReason = true, reason
	dir := s.dir(w)
	if err := writeJSON(dir, seqName(seq, ".json"), e, "markbad-temp"); err != nil {
		return err
	}
	return syncDir(dir)
}

// Verify recomputes the sha256 of e's archive and compares it with the
// recorded one.
// For a sealed archive it hashes the plaintext, which also authenticates
// every chunk.
func (s *Store) Verify(e Entry) error {
	a, err := s.OpenArchive(e)
	if err != nil {
		return fmt.Errorf("store: verify: %w", err)
	}
	defer a.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, a, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("store: verify %s seq %d: read archive %s: %w", e.Workload, e.Seq, s.archivePath(e), err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != e.SHA256 {
		return fmt.Errorf("store: verify %s seq %d (%s): %w: recorded %s, archive has %s", e.Workload, e.Seq, s.archivePath(e), ErrDigest, e.SHA256, sum)
	}
	if e.Size != 0 && n != e.Size {
		return fmt.Errorf("store: verify %s seq %d (%s): %w: size mismatch: recorded %d bytes, archive has %d", e.Workload, e.Seq, s.archivePath(e), ErrDigest, e.Size, n)
	}
	return nil
}

// Remove deletes all entries of the workload. The sequence high-water mark
// stays, so sequence numbers are not reused if the workload comes back.
func (s *Store) Remove(w Workload) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: remove %s: %w", w, err)
		}
	}()
	if err := w.Validate(); err != nil {
		return err
	}
	unlock := s.lock(w)
	defer unlock()
	dir := s.dir(w)
	tars, jsons, err := scan(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, seq := range tars {
		if err := removeEntry(dir, seq); err != nil {
			return err
		}
	}
	for _, seq := range jsons { // sidecars removeEntry did not reach
		if err := removeFile(filepath.Join(dir, seqName(seq, ".json"))); err != nil {
			return err
		}
	}
	s.recount(w)
	return syncDir(dir)
}

// install makes the complete, fsynced archive tmp (a temporary file in the
// workload's directory) visible as entry e (e.Seq 0: the next free number)
// and applies retention. The caller holds the workload's lock. On error
// nothing new is visible and tmp is removed.
func (s *Store) install(dir, tmp string, e Entry) (_ Entry, err error) {
	sidecar := "" // set once this call may have created it
	defer func() {
		if err != nil {
			os.Remove(tmp)
			if sidecar != "" {
				os.Remove(sidecar)
			}
		}
	}()
	hwm, err := readSeq(dir)
	if err != nil {
		return Entry{}, err
	}
	tars, jsons, err := scan(dir)
	if err != nil {
		return Entry{}, err
	}
	if e.Seq == 0 {
		last := max(hwm, lastOf(tars), lastOf(jsons))
		if last >= MaxSeq {
			return Entry{}, fmt.Errorf("no next sequence number: the workload's highest is %d, the largest the store assigns is %d: %w", last, uint64(MaxSeq), ErrSeq)
		}
		e.Seq = last + 1
	} else if e.Seq > MaxSeq {
		return Entry{}, fmt.Errorf("seq %d is above the largest the store accepts, %d: %w", e.Seq, uint64(MaxSeq), ErrSeq)
	} else if slices.Contains(tars, e.Seq) || slices.Contains(jsons, e.Seq) {
		return Entry{}, fmt.Errorf("seq %d already exists", e.Seq)
	}
	sidecar = filepath.Join(dir, seqName(e.Seq, ".json"))
	archive := filepath.Join(dir, seqName(e.Seq, ".tar"))
	e.Path = archive

	if e.Seq > hwm {
		if err := writeFileAtomic(dir, seqFile, []byte(strconv.FormatUint(e.Seq, 10)+"\n"), "seq-temp"); err != nil {
			return Entry{}, fmt.Errorf("record sequence number: %w", err)
		}
		crashPoint("seq")
	}
	if err := writeJSON(dir, filepath.Base(sidecar), e, "sidecar-temp"); err != nil {
		return Entry{}, err
	}
	crashPoint("sidecar")
	if err := syncDir(dir); err != nil {
		return Entry{}, err
	}
	if err := os.Rename(tmp, archive); err != nil {
		return Entry{}, fmt.Errorf("commit archive: %w", err)
	}
	crashPoint("renamed")
	if err := syncDir(dir); err != nil {
		os.Remove(archive)
		return Entry{}, err
	}
	crashPoint("committed")
	// Retention failures leave extra entries behind, which the next Commit,
	// Import or Open deletes; the new entry is committed regardless.
	pruned, _ := s.prune(e.Workload)
	s.recount(e.Workload)
	if slices.Contains(pruned, e.Seq) {
		return Entry{}, fmt.Errorf("seq %d: %w", e.Seq, ErrPruned)
	}
	return e, nil
}

// existing looks for entry seq; if present it reports whether its digest is
// sum, failing if it differs. The caller holds the workload's lock.
func (s *Store) existing(w Workload, seq uint64, sum string) (Entry, bool, error) {
	e, err := s.load(w, seq)
	if errors.Is(err, ErrNotFound) {
		return Entry{}, false, nil
	} else if err != nil {
		return Entry{}, false, err
	}
	if !strings.EqualFold(e.SHA256, sum) {
		return Entry{}, false, fmt.Errorf("seq %d already exists with sha256 %s, import has sha256 %s", seq, e.SHA256, strings.ToLower(sum))
	}
	return e, true, nil
}

// prune applies retention to the workload and returns the deleted
// sequence numbers: it keeps the newest K entries, Bad or not, and the
// newest entry that is not Bad. The caller holds the workload's lock.
func (s *Store) prune(w Workload) ([]uint64, error) {
	s.mu.Lock()
	k := s.retention
	s.mu.Unlock()
	es, err := s.entries(w)
	if err != nil || len(es) <= k {
		return nil, err
	}
	keepGood := slices.IndexFunc(es, func(e Entry) bool { return !e.Bad })
	dir := s.dir(w)
	var pruned []uint64
	for i, e := range es[k:] {
		if k+i == keepGood {
			continue
		}
		if err := removeEntry(dir, e.Seq); err != nil {
			return pruned, err
		}
		pruned = append(pruned, e.Seq)
	}
	return pruned, syncDir(dir)
}

// recover removes what an interrupted write left in the workload's
// directory: temporary files, sidecars without an archive and archives
// without a sidecar (which the commit protocol never produces; without
// metadata the archive's digest is unknown).
func (s *Store) recover(w Workload) error {
	unlock := s.lock(w)
	defer unlock()
	dir := s.dir(w)
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	tars, jsons, err := scan(dir)
	if err != nil {
		return err
	}
	var junk []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), tmpPrefix) {
			junk = append(junk, de.Name())
		}
	}
	for _, seq := range jsons {
		if !slices.Contains(tars, seq) {
			junk = append(junk, seqName(seq, ".json"))
		}
	}
	for _, seq := range tars {
		if !slices.Contains(jsons, seq) {
			junk = append(junk, seqName(seq, ".tar"))
		}
	}
	for _, name := range junk {
		if err := removeFile(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if len(junk) > 0 {
		return syncDir(dir)
	}
	return nil
}

// entries reads the workload's committed entries, newest first. The caller
// holds the workload's lock.
func (s *Store) entries(w Workload) ([]Entry, error) {
	tars, _, err := scan(s.dir(w))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	es := make([]Entry, 0, len(tars))
	for _, seq := range slices.Backward(tars) {
		e, err := s.load(w, seq)
		if err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	return es, nil
}

// load reads committed entry seq. The caller holds the workload's lock.
func (s *Store) load(w Workload, seq uint64) (Entry, error) {
	dir := s.dir(w)
	archive := filepath.Join(dir, seqName(seq, ".tar"))
	if _, err := os.Stat(archive); errors.Is(err, fs.ErrNotExist) {
		return Entry{}, ErrNotFound
	} else if err != nil {
		return Entry{}, err
	}
	sidecar := filepath.Join(dir, seqName(seq, ".json"))
	b, err := os.ReadFile(sidecar)
	if err != nil {
		return Entry{}, fmt.Errorf("read metadata: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return Entry{}, fmt.Errorf("parse metadata %s: %w", sidecar, err)
	}
	if e.Seq != seq || e.Workload != w {
		return Entry{}, fmt.Errorf("metadata %s is for %s seq %d", sidecar, e.Workload, e.Seq)
	}
	e.Path = archive
	return e, nil
}

// lock locks the workload and returns the unlock function.
func (s *Store) lock(w Workload) func() {
	s.mu.Lock()
	m := s.locks[w.dirName()]
	if m == nil {
		m = new(sync.Mutex)
		s.locks[w.dirName()] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

func (s *Store) dir(w Workload) string { return filepath.Join(s.root, w.dirName()) }

// ensureDir validates w and creates its directory (0700) if needed.
func (s *Store) ensureDir(w Workload) (string, error) {
	if err := w.Validate(); err != nil {
		return "", err
	}
	dir := s.dir(w)
	if err := os.Mkdir(dir, 0o700); errors.Is(err, fs.ErrExist) {
		return dir, nil
	} else if err != nil {
		return "", fmt.Errorf("create workload directory: %w", err)
	}
	return dir, syncDir(s.root)
}

func newEntry(w Workload, seq uint64, sum string, size int64, meta Entry) Entry {
	created := meta.Created
	if created.IsZero() {
		created = time.Now()
	}
	// As it reads back from the sidecar: UTC, no monotonic clock reading.
	created = created.UTC().Round(0)
	return Entry{
		Workload: w, Seq: seq, SHA256: sum, Size: size,
		Created: created, Method: meta.Method, Duration: meta.Duration, Source: meta.Source,
	}
}

// checkDigest compares an expected hex sha256 ("" for none) with the
// computed one.
func checkDigest(want, got string) error {
	if want != "" && !strings.EqualFold(want, got) {
		return fmt.Errorf("%w: expected %s, got %s", ErrDigest, want, got)
	}
	return nil
}

// ctxReader fails reads once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashFile returns the sha256 and size of the file at path, fsyncing it
// first if sync is set.
func hashFile(path string, sync bool) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if sync {
		if err := f.Sync(); err != nil {
			return "", 0, fmt.Errorf("fsync archive %s: %w", path, err)
		}
	}
	h := sha256.New()
	size, err = io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("read archive %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// writeJSON atomically replaces dir/name with v as JSON.
func writeJSON(dir, name string, v any, step string) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, name, append(b, '\n'), step); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return nil
}

// writeFileAtomic replaces dir/name with data: temporary file, fsync,
// rename. The caller fsyncs dir. step names the crash point between
// writing the temporary file and the rename.
func writeFileAtomic(dir, name string, data []byte, step string) (err error) {
	f, err := createTemp(dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	crashPoint(step)
	return os.Rename(f.Name(), filepath.Join(dir, name))
}

// createTemp creates a new, empty temporary file (0600) in dir.
func createTemp(dir string) (*os.File, error) {
	for {
		f, err := os.OpenFile(tempName(dir), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

func tempName(dir string) string {
	return filepath.Join(dir, tmpPrefix+rand.Text())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// removeEntry deletes an entry: archive first (the entry disappears), then
// sidecar (an orphan sidecar is cleaned up by Open).
func removeEntry(dir string, seq uint64) error {
	if err := removeFile(filepath.Join(dir, seqName(seq, ".tar"))); err != nil {
		return err
	}
	crashPoint("pruned-archive")
	return removeFile(filepath.Join(dir, seqName(seq, ".json")))
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func seqName(seq uint64, ext string) string {
	return fmt.Sprintf("%0*d%s", seqDigits, seq, ext)
}

// parseSeqName parses "<20 digits><ext>".
func parseSeqName(name, ext string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, ext)
	if !ok || len(digits) != seqDigits {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	return seq, err == nil && seq > 0
}

// scan returns the sequence numbers of the archives and sidecars in dir,
// ascending.
func scan(dir string) (tars, jsons []uint64, err error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, de := range des { // ReadDir sorts by name, so by sequence number
		if seq, ok := parseSeqName(de.Name(), ".tar"); ok {
			tars = append(tars, seq)
		} else if seq, ok := parseSeqName(de.Name(), ".json"); ok {
			jsons = append(jsons, seq)
		}
	}
	return tars, jsons, nil
}

func lastOf(seqs []uint64) uint64 {
	if len(seqs) == 0 {
		return 0
	}
	return seqs[len(seqs)-1]
}

// readSeq returns the workload's sequence high-water mark (0 if none yet).
func readSeq(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, seqFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("read sequence number: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse sequence number in %s: %w", filepath.Join(dir, seqFile), err)
	}
	return n, nil
}
