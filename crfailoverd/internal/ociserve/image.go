package ociserve

import (
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Media types of the served images (OCI image specification).
const (
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Manifest annotations of a checkpoint image. The first two make the
// runtimes treat the image as a checkpoint to restore (containerd and
// checkpointctl know the first, CRI-O the second); both hold the container
// name recorded in the archive's config.dump.
const (
	AnnCheckpointName     = "org.criu.checkpoint.container.name"
	AnnCRIOCheckpointName = "io.kubernetes.cri-o.annotations.checkpoint.name"
	AnnCreated            = "org.opencontainers.image.created"
	AnnWorkload           = "io.crfailoverd.checkpoint.workload" // namespace/pod/container
	AnnSeq                = "io.crfailoverd.checkpoint.seq"
	AnnArchiveSHA256      = "io.crfailoverd.checkpoint.archive-sha256"
)

// cacheVersion changes whenever the bytes of an image built from the same
// checkpoint would change (layout, compression, config or manifest
// contents); cached images of another version are rebuilt.
// (A sidecar without "sealed" is of a plaintext layer, as before.)
const cacheVersion = 1

const tmpPrefix = ".tmp-"

// Image is the checkpoint image of one store entry.
type Image struct {
	Workload      store.Workload
	Seq           uint64
	ArchiveSHA256 string // of the entry's archive
	Container     string // container name from config.dump

	Manifest       []byte // the OCI image manifest, as served
	ManifestDigest string // "sha256:<hex>"
	Config         []byte // the OCI image configuration, as served
	ConfigDigest   string
	LayerDigest    string // of the gzip stream
	LayerSize      int64
	DiffID         string // of the uncompressed tar stream
	LayerPath      string // the cached layer (sealed if the server has a CacheKey)

	sealed bool // the cached layer is encrypted
}

// Size is the number of bytes a client pulls: manifest, configuration and
// layer.
func (im *Image) Size() int64 { return int64(len(im.Manifest)+len(im.Config)) + im.LayerSize }

// ImageName returns the repository and tag of a checkpoint,
// "crfailoverd/<namespace>/<pod>/<container>:<seq>"; seq 0 names the tag
// "latest" (the newest checkpoint not marked bad).
func ImageName(w store.Workload, seq uint64) string {
	tag := "latest"
	if seq != 0 {
		tag = strconv.FormatUint(seq, 10)
	}
	return Repository(w) + ":" + tag
}

// Repository returns the repository name of a workload's checkpoints,
// "crfailoverd/<namespace>/<pod>/<container>".
func Repository(w store.Workload) string {
	return "crfailoverd/" + w.Namespace + "/" + w.Pod + "/" + w.Container
}

// Ref returns the full image reference of a checkpoint served at hostport,
// for example "localhost:5001/crfailoverd/default/counter/counter:7".
func Ref(hostport string, w store.Workload, seq uint64) string {
	return hostport + "/" + ImageName(w, seq)
}

// cacheMeta is the sidecar of a cached layer, written after the layer: its
// presence means the layer is complete.
type cacheMeta struct {
	Version       int            `json:"version"`
	Workload      store.Workload `json:"workload"`
	Seq           uint64         `json:"seq"`
	ArchiveSHA256 string         `json:"archive_sha256"`
	Container     string         `json:"container"`
	LayerDigest   string         `json:"layer_digest"`
	LayerSize     int64          `json:"layer_size"`
	DiffID        string         `json:"diff_id"`
	Config        []byte         `json:"config"`   // exact bytes
	Manifest      []byte         `json:"manifest"` // exact bytes
	Sealed        bool           `json:"sealed"`   // the layer file is encrypted (age, the server's CacheKey)
}

func seqName(seq uint64, ext string) string { return fmt.Sprintf("%020d%s", seq, ext) }

const (
	metaExt  = ".image.json"
	layerExt = ".layer.tar.gz"
)

func wlDirName(w store.Workload) string { return w.Namespace + "_" + w.Pod + "_" + w.Container }

func parseWlDirName(name string) (store.Workload, bool) {
	parts := strings.Split(name, "_")
	if len(parts) != 3 {
		return store.Workload{}, false
	}
	w := store.Workload{Namespace: parts[0], Pod: parts[1], Container: parts[2]}
	return w, w.Validate() == nil
}

// parseCacheName returns the sequence number of a cache file name
// "<20 digits><ext>".
func parseCacheName(name, ext string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, ext)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	return seq, err == nil && seq > 0
}

// loadCached returns the cached image of entry e, or false when there is
// none that matches e (missing, incomplete, of another archive or another
// cache version, sealed when the server keeps plaintext or the other way
// round, or sealed with another key). A layer not yet verified by this
// process is hashed first (its plaintext, decrypted).
func (s *Server) loadCached(root string, e store.Entry, verify bool) (*Image, bool) {
	dir := filepath.Join(root, wlDirName(e.Workload))
	m, ok := s.readMeta(dir, e.Seq)
	if !ok || m.Workload != e.Workload || !strings.EqualFold(m.ArchiveSHA256, e.SHA256) {
		return nil, false
	}
	lp := filepath.Join(dir, seqName(e.Seq, layerExt))
	im := &Image{
		Workload: e.Workload, Seq: e.Seq, ArchiveSHA256: m.ArchiveSHA256, Container: m.Container,
		Manifest: m.Manifest, ManifestDigest: sha256Digest(m.Manifest),
		Config: m.Config, ConfigDigest: sha256Digest(m.Config),
		LayerDigest: m.LayerDigest, LayerSize: m.LayerSize, DiffID: m.DiffID, LayerPath: lp, sealed: m.Sealed,
	}
	l, err := s.openLayer(im)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("cached checkpoint image layer is unreadable; rebuilding it", "workload", e.Workload.String(), "seq", e.Seq, "layer", lp, "err", err)
		}
		return nil, false
	}
	defer l.Close()
	if l.Size() != m.LayerSize {
		return nil, false
	}
	if verify {
		h := sha256.New()
		if _, err := io.Copy(h, l); err != nil || digestOf(h) != m.LayerDigest {
			s.log.Warn("cached checkpoint image layer is damaged; rebuilding it", "workload", e.Workload.String(), "seq", e.Seq, "layer", lp, "err", err)
			return nil, false
		}
	}
	return im, true
}

// readMeta returns the sidecar of the cached image seq in dir if it is of
// this cache version and sealed as this server keeps layers.
func (s *Server) readMeta(dir string, seq uint64) (cacheMeta, bool) {
	b, err := os.ReadFile(filepath.Join(dir, seqName(seq, metaExt)))
	if err != nil {
		return cacheMeta{}, false
	}
	var m cacheMeta
	if json.Unmarshal(b, &m) != nil || m.Version != cacheVersion || m.Seq != seq || m.Sealed != (s.CacheKey != nil) {
		return cacheMeta{}, false
	}
	return m, true
}

// layer is an open cached layer, read as its plaintext.
type layer struct {
	*io.SectionReader
	f *os.File
}

func (l *layer) Close() error { return l.f.Close() }

// openLayer opens im's cached layer for reading (decrypting a sealed one;
// seekable either way).
func (s *Server) openLayer(im *Image) (*layer, error) {
	f, err := os.Open(im.LayerPath)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !im.sealed {
		return &layer{SectionReader: io.NewSectionReader(f, 0, st.Size()), f: f}, nil
	}
	if s.CacheKey == nil {
		f.Close()
		return nil, fmt.Errorf("cached layer %s is sealed, but the server has no key", im.LayerPath)
	}
	sr, err := s.CacheKey.DecryptAt(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cached layer %s: %w", im.LayerPath, err)
	}
	return &layer{SectionReader: sr, f: f}, nil
}

// build makes the checkpoint image of entry e and caches it under root,
// reading the archive through the store (decrypted as it is read) and
// sealing the layer with CacheKey if set. The caller holds the workload's
// cache lock.
func (s *Server) build(ctx context.Context, root string, e store.Entry) (_ *Image, err error) {
	start := time.Now()
	a, err := s.st.OpenArchive(e)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	src := fmt.Sprintf("%s #%d", e.Workload, e.Seq)
	info, err := archive.ReadFrom(io.NewSectionReader(a, 0, a.Size()), a.Size(), src)
	if err != nil {
		return nil, err
	}
	name := info.Container
	if name == "" {
		name = e.Workload.Container
	}
	dir := filepath.Join(root, wlDirName(e.Workload))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create image cache: %w", err)
	}

	tmp, err := os.CreateTemp(dir, tmpPrefix+"layer-")
	if err != nil {
		return nil, fmt.Errorf("create image cache file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var out io.Writer = tmp
	var sealer io.WriteCloser
	if s.CacheKey != nil {
		if sealer, err = s.CacheKey.Encrypt(tmp); err != nil {
			return nil, err
		}
		out = sealer
	}
	lr, err := writeLayer(ctx, a, dir, out, s.CacheKey != nil)
	if err != nil {
		return nil, fmt.Errorf("build layer from %s: %w", src, err)
	}
	if sealer != nil {
		if err := sealer.Close(); err != nil {
			return nil, fmt.Errorf("seal layer: %w", err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	cfg, manifest, err := s.describe(e, name, lr)
	if err != nil {
		return nil, err
	}
	lp := filepath.Join(dir, seqName(e.Seq, layerExt))
	if err := os.Rename(tmp.Name(), lp); err != nil {
		return nil, err
	}
	m := cacheMeta{
		Version: cacheVersion, Workload: e.Workload, Seq: e.Seq, ArchiveSHA256: strings.ToLower(e.SHA256), Container: name,
		LayerDigest: lr.digest, LayerSize: lr.size, DiffID: lr.diffID, Config: cfg, Manifest: manifest, Sealed: sealer != nil,
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(dir, seqName(e.Seq, metaExt), b); err != nil {
		return nil, fmt.Errorf("write image cache: %w", err)
	}
	s.log.Info("built checkpoint image", "workload", e.Workload.String(), "seq", e.Seq, "layer_bytes", lr.size,
		"archive_bytes", e.Size, "sealed", m.Sealed, "digest", sha256Digest(manifest), "took_ms", time.Since(start).Milliseconds())
	return &Image{
		Workload: e.Workload, Seq: e.Seq, ArchiveSHA256: m.ArchiveSHA256, Container: name,
		Manifest: manifest, ManifestDigest: sha256Digest(manifest), Config: cfg, ConfigDigest: sha256Digest(cfg),
		LayerDigest: lr.digest, LayerSize: lr.size, DiffID: lr.diffID, LayerPath: lp, sealed: m.Sealed,
	}, nil
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type manifestJSON struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        descriptor        `json:"config"`
	Layers        []descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations"`
}

type configJSON struct {
	Created      string        `json:"created,omitempty"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       struct{}      `json:"config"`
	RootFS       rootFS        `json:"rootfs"`
	History      []historyJSON `json:"history"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyJSON struct {
	Created   string `json:"created,omitempty"`
	CreatedBy string `json:"created_by"`
	Comment   string `json:"comment,omitempty"`
}

// describe returns the image configuration and manifest of a checkpoint
// image whose layer is lr.
func (s *Server) describe(e store.Entry, name string, lr layerResult) (cfg, manifest []byte, err error) {
	created := ""
	if !e.Created.IsZero() {
		created = e.Created.UTC().Format(time.RFC3339Nano)
	}
	c := configJSON{
		Created: created, Architecture: s.arch(), OS: "linux",
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{lr.diffID}},
		History: []historyJSON{{Created: created, CreatedBy: "crfailoverd", Comment: fmt.Sprintf("checkpoint %s #%d", e.Workload, e.Seq)}},
	}
	if cfg, err = json.Marshal(c); err != nil {
		return nil, nil, err
	}
	ann := map[string]string{
		AnnCheckpointName:     name,
		AnnCRIOCheckpointName: name,
		AnnWorkload:           e.Workload.String(),
		AnnSeq:                strconv.FormatUint(e.Seq, 10),
		AnnArchiveSHA256:      strings.ToLower(e.SHA256),
	}
	if created != "" {
		ann[AnnCreated] = created
	}
	m := manifestJSON{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        descriptor{MediaType: MediaTypeConfig, Digest: sha256Digest(cfg), Size: int64(len(cfg))},
		Layers:        []descriptor{{MediaType: MediaTypeLayer, Digest: lr.digest, Size: lr.size}},
		Annotations:   ann,
	}
	if manifest, err = json.Marshal(m); err != nil {
		return nil, nil, err
	}
	return cfg, manifest, nil
}

func (s *Server) arch() string {
	if s.Architecture != "" {
		return s.Architecture
	}
	return runtime.GOARCH
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeFileAtomic replaces dir/name with data.
func writeFileAtomic(dir, name string, data []byte) error {
	return atomicfile.WriteFile(filepath.Join(dir, name), data, 0o600)
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }

func removeFile(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
