// Package ociserve serves the checkpoints of a node's store as OCI images
// through a read-only registry endpoint (the pull side of the OCI
// distribution specification), so that the node's own container runtime,
// or kubelet for a static pod, can restore a container by pulling a
// checkpoint image, without any external registry.
//
// # Names
//
//	crfailoverd/<namespace>/<pod>/<container>:<seq>     the store's entry seq
//	crfailoverd/<namespace>/<pod>/<container>:latest    the newest entry not marked bad
//
// # Images
//
// A checkpoint image is an OCI image manifest
// (application/vnd.oci.image.manifest.v1+json) with one gzip-compressed
// layer holding the checkpoint archive's files at the archive's paths
// (checkpoint/, config.dump, spec.dump, rootfs-diff.tar, ...), an image
// configuration with OS linux, the node's architecture and the layer's
// diff_id, and the manifest annotations org.criu.checkpoint.container.name
// and io.kubernetes.cri-o.annotations.checkpoint.name (the container name
// from config.dump) that make containerd and CRI-O restore the container
// when they create it from the image.
//
// # Cache
//
// The layer is built once per checkpoint, deterministically (sorted members,
// fixed times and owners, fixed gzip header and level), and kept in a cache
// directory outside the store (by default "images" beside the store's root
// directory, so <data_dir>/images for <data_dir>/checkpoints):
//
//	<cache>/<namespace>_<pod>_<container>/
//	    <seq 20 digits>.layer.tar.gz   the layer
//	    <seq 20 digits>.image.json     sidecar: archive sha256, digests, config and manifest bytes
//	    .tmp-*                         files being written
//
// The sidecar is written after the layer (both atomically), so it marks a
// complete layer; it names the archive's sha256, and a cached image whose
// archive differs from the store's entry is rebuilt. Cached images of
// entries the store no longer lists are pruned periodically while serving,
// and whenever another image of the workload is built. The store's own
// directory is never written.
package ociserve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Server serves a store's checkpoints as images. Set its exported fields
// before first use.
type Server struct {
	// CacheDir is where built layers are kept; by default "images" in the
	// parent directory of the store's root.
	CacheDir string
	// PruneInterval is how often Serve and ServeListener prune the cache
	// (default 1 minute).
	PruneInterval time.Duration
	// Architecture is the image configuration's architecture (default: the
	// architecture crfailoverd runs on, which is that of the node and of
	// its checkpoints).
	Architecture string
	// Credentials are what every request must carry (HTTP basic); a
	// server without them refuses every request, and Serve and
	// ServeListener refuse to start.
	Credentials Credentials
	// CacheKey seals the cached layers (and the spool of a compressed
	// archive) at rest; normally the store's data key. nil keeps them in
	// plaintext, as a store without a data key keeps its archives.
	CacheKey *seal.Key
	// Serves says which checkpoints are served at all: the daemon serves a
	// checkpoint only while a restore from it is handed to kubelet on this
	// node (the node's pull credentials are kubelet's, which any pod's pull
	// on the node uses). nil serves every checkpoint of the store (tests,
	// tools).
	Serves func(w store.Workload, seq uint64) bool

	st  *store.Store
	log *slog.Logger

	mu      sync.Mutex
	derived string                 // cache dir derived from an entry's path
	memo    map[string]*Image      // by imageKey; layers verified by this process
	flights map[string]*flight     // builds in progress, by imageKey
	wlLocks map[string]*sync.Mutex // per workload cache directory
}

type flight struct {
	done chan struct{}
	img  *Image
	err  error
}

// NewServer returns a server of the checkpoints in st. log may be nil.
func NewServer(st *store.Store, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{st: st, log: log, memo: map[string]*Image{}, flights: map[string]*flight{}, wlLocks: map[string]*sync.Mutex{}}
}

func imageKey(w store.Workload, seq uint64) string {
	return w.String() + ":" + strconv.FormatUint(seq, 10)
}

// Serve listens on addr (host:port; the caller chooses it, normally a
// loopback address) and serves until ctx is done, then shuts down and
// returns nil.
func (s *Server) Serve(ctx context.Context, addr string) error {
	if !s.Credentials.valid() {
		return fmt.Errorf("checkpoint image endpoint on %s: refusing to serve without credentials (the endpoint serves process memory)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("checkpoint image endpoint: listen on %s: %w", addr, err)
	}
	return s.ServeListener(ctx, ln)
}

// ServeListener serves on ln until ctx is done, then shuts down and
// returns nil. It closes ln. While it serves, it prunes the cache every
// PruneInterval.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	if !s.Credentials.valid() {
		ln.Close()
		return fmt.Errorf("checkpoint image endpoint on %s: refusing to serve without credentials (the endpoint serves process memory)", ln.Addr())
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.log.Info("serving checkpoint images", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	pruneEvery := s.PruneInterval
	if pruneEvery <= 0 {
		pruneEvery = time.Minute
	}
	tick := time.NewTicker(pruneEvery)
	defer tick.Stop()
	s.prune()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close()
			}
			return nil
		case err := <-errc:
			return fmt.Errorf("checkpoint image endpoint on %s: %w", ln.Addr(), err)
		case <-tick.C:
			s.prune()
		}
	}
}

func (s *Server) prune() {
	if err := s.Prune(); err != nil {
		s.log.Warn("pruning the checkpoint image cache failed", "err", err)
	}
}

// Prepare builds (or loads from the cache) the image of the workload's
// entry seq (0: the newest entry not marked bad), so that a pull does not
// wait for it. The error wraps store.ErrNotFound when there is no such
// entry.
func (s *Server) Prepare(ctx context.Context, w store.Workload, seq uint64) (*Image, error) {
	e, err := s.entry(w, seq)
	if err != nil {
		return nil, err
	}
	return s.image(ctx, e)
}

// entry returns the workload's entry seq, or the latest good one for 0.
func (s *Server) entry(w store.Workload, seq uint64) (store.Entry, error) {
	if seq != 0 {
		return s.st.Get(w, seq)
	}
	e, ok, err := s.st.Latest(w)
	if err != nil {
		return store.Entry{}, err
	}
	if !ok {
		return store.Entry{}, fmt.Errorf("no usable checkpoint of %s: %w", w, store.ErrNotFound)
	}
	return e, nil
}

// cached returns the image of e if this process has it or the cache holds
// it, without building.
func (s *Server) cached(e store.Entry) (*Image, bool) {
	k := imageKey(e.Workload, e.Seq)
	s.mu.Lock()
	im := s.memo[k]
	s.mu.Unlock()
	if im != nil && strings.EqualFold(im.ArchiveSHA256, e.SHA256) {
		return im, true
	}
	root := s.cacheRoot(e)
	unlock := s.lockWorkload(e.Workload)
	defer unlock()
	im, ok := s.loadCached(root, e, true)
	if ok {
		s.remember(im)
	}
	return im, ok
}

func (s *Server) remember(im *Image) {
	s.mu.Lock()
	s.memo[imageKey(im.Workload, im.Seq)] = im
	s.mu.Unlock()
}

// image returns the image of entry e, building it if needed. Concurrent
// calls for one entry share one build, which goes on if ctx ends.
func (s *Server) image(ctx context.Context, e store.Entry) (*Image, error) {
	k := imageKey(e.Workload, e.Seq)
	s.mu.Lock()
	if im := s.memo[k]; im != nil && strings.EqualFold(im.ArchiveSHA256, e.SHA256) {
		s.mu.Unlock()
		return im, nil
	}
	f := s.flights[k]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		s.flights[k] = f
		go s.run(k, f, e)
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.img, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Server) run(k string, f *flight, e store.Entry) {
	img, err := s.loadOrBuild(e)
	s.mu.Lock()
	delete(s.flights, k)
	if err == nil {
		s.memo[k] = img
	}
	s.mu.Unlock()
	f.img, f.err = img, err
	close(f.done)
}

func (s *Server) loadOrBuild(e store.Entry) (*Image, error) {
	root := s.cacheRoot(e)
	unlock := s.lockWorkload(e.Workload)
	defer unlock()
	if im, ok := s.loadCached(root, e, true); ok {
		return im, nil
	}
	im, err := s.build(context.Background(), root, e)
	if err != nil {
		return nil, fmt.Errorf("checkpoint image of %s #%d: %w", e.Workload, e.Seq, err)
	}
	if err := s.pruneWorkloadLocked(root, e.Workload); err != nil {
		s.log.Warn("pruning the checkpoint image cache failed", "workload", e.Workload.String(), "err", err)
	}
	return im, nil
}

// cacheRoot returns the cache directory, deriving the default from the
// path of entry e (<store root>/<workload>/<seq>.tar).
func (s *Server) cacheRoot(e store.Entry) string {
	if s.CacheDir != "" {
		return s.CacheDir
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.derived == "" && e.Path != "" {
		storeRoot := filepath.Dir(filepath.Dir(e.Path))
		s.derived = filepath.Join(filepath.Dir(storeRoot), "images")
	}
	return s.derived
}

// knownCacheRoot returns the cache directory if it is configured or can be
// derived from any entry of the store; "" if neither.
func (s *Server) knownCacheRoot() (string, error) {
	if s.CacheDir != "" {
		return s.CacheDir, nil
	}
	s.mu.Lock()
	d := s.derived
	s.mu.Unlock()
	if d != "" {
		return d, nil
	}
	ws, err := s.st.Workloads()
	if err != nil {
		return "", err
	}
	for _, w := range ws {
		if e, err := s.st.List(w); err == nil && len(e) > 0 {
			return s.cacheRoot(e[0]), nil
		}
	}
	return "", nil
}

func (s *Server) lockWorkload(w store.Workload) func() {
	s.mu.Lock()
	m := s.wlLocks[w.String()]
	if m == nil {
		m = new(sync.Mutex)
		s.wlLocks[w.String()] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// Prune removes the cached images of entries the store no longer lists
// (or whose archive changed), and leftover temporary files.
func (s *Server) Prune() error {
	root, err := s.knownCacheRoot()
	if err != nil || root == "" {
		return err
	}
	des, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	var errs []error
	for _, de := range des {
		w, ok := parseWlDirName(de.Name())
		if !ok || !de.IsDir() {
			continue
		}
		unlock := s.lockWorkload(w)
		if err := s.pruneWorkloadLocked(root, w); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", w, err))
		}
		unlock()
	}
	return errors.Join(errs...)
}

// pruneWorkloadLocked prunes the workload's cache directory. The caller
// holds the workload's cache lock, so no build of it is in progress.
func (s *Server) pruneWorkloadLocked(root string, w store.Workload) error {
	dir := filepath.Join(root, wlDirName(w))
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	es, err := s.st.List(w)
	if err != nil {
		return err
	}
	live := map[uint64]string{}
	for _, e := range es {
		live[e.Seq] = strings.ToLower(e.SHA256)
	}
	var stale []uint64
	var errs []error
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			errs = append(errs, removeFile(filepath.Join(dir, name)))
			continue
		}
		seq, ok := parseCacheName(name, metaExt)
		if !ok {
			seq, ok = parseCacheName(name, layerExt)
		}
		if !ok {
			continue
		}
		if slices.Contains(stale, seq) {
			continue
		}
		if _, in := live[seq]; !in {
			stale = append(stale, seq)
		} else if _, ok := s.readMeta(dir, seq); !ok && name != seqName(seq, layerExt) {
			// Of another cache version, or sealed otherwise than this
			// server keeps layers (a plaintext layer left from before
			// the data key was set): not served, so not kept.
			stale = append(stale, seq)
		}
	}
	for _, seq := range stale {
		// Sidecar first: a layer without one is never served.
		errs = append(errs, removeFile(filepath.Join(dir, seqName(seq, metaExt))))
		errs = append(errs, removeFile(filepath.Join(dir, seqName(seq, layerExt))))
		s.log.Debug("pruned checkpoint image", "workload", w.String(), "seq", seq)
	}
	s.mu.Lock()
	for k, im := range s.memo {
		if sha, in := live[im.Seq]; im.Workload == w && (!in || !strings.EqualFold(sha, im.ArchiveSHA256) || slices.Contains(stale, im.Seq)) {
			delete(s.memo, k)
		}
	}
	s.mu.Unlock()
	if len(stale) > 0 {
		errs = append(errs, syncDir(dir))
	}
	if len(es) == 0 {
		_ = os.Remove(dir) // only if empty
	}
	return errors.Join(errs...)
}
