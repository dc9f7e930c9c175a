package ociserve

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Error codes of the OCI distribution specification.
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeUnsupported     = "UNSUPPORTED"
	codePaginationBad   = "PAGINATION_NUMBER_INVALID"
	codeUnknown         = "UNKNOWN" // a failure of the server itself
)

// Handler returns the registry's HTTP handler. Every request must carry
// the server's Credentials (HTTP basic); any other is answered 401 with
// the challenge WWW-Authenticate: Basic realm="crfailoverd". Then GET and
// HEAD of
//
//	/v2/                                    200 {}
//	/v2/_catalog                            the repositories (workloads with checkpoints)
//	/v2/<name>/tags/list                    the tags of a repository
//	/v2/<name>/manifests/<tag or digest>    a manifest
//	/v2/<name>/blobs/<digest>               the configuration or the layer
//
// Everything else is answered with the distribution specification's error
// JSON: 404 for unknown names, tags and digests, 405 for other methods.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		s.log.Debug("checkpoint image request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"took_ms", time.Since(start).Milliseconds())
	}()
	w = rec
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !s.authorize(w, r) {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, codeUnsupported, "this registry is read-only: only GET and HEAD are served", nil)
		return
	}
	p := r.URL.Path
	switch p {
	case "/v2", "/v2/":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}"))
		return
	case "/v2/_catalog":
		s.serveCatalog(w, r)
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		writeError(w, http.StatusNotFound, codeNameUnknown, "not a registry API path", map[string]string{"path": p})
		return
	}
	var (
		name, kind, ref string
	)
	if n, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		name, kind = n, "tags"
	} else if i := strings.LastIndex(rest, "/manifests/"); i >= 0 {
		name, kind, ref = rest[:i], "manifests", rest[i+len("/manifests/"):]
	} else if i := strings.LastIndex(rest, "/blobs/"); i >= 0 {
		name, kind, ref = rest[:i], "blobs", rest[i+len("/blobs/"):]
	} else {
		writeError(w, http.StatusNotFound, codeNameUnknown, "not a registry API path", map[string]string{"path": p})
		return
	}
	wl, ok := parseRepository(name)
	if !ok {
		writeError(w, http.StatusNotFound, codeNameUnknown, "repository name not known to this registry", map[string]string{"name": name})
		return
	}
	es, err := s.st.List(wl)
	if err != nil {
		s.serverError(w, err, codeNameUnknown)
		return
	}
	if len(es) == 0 {
		writeError(w, http.StatusNotFound, codeNameUnknown, "no checkpoints of this workload", map[string]string{"name": name})
		return
	}
	if es = s.served(wl, es); len(es) == 0 {
		s.log.Info("REFUSED checkpoint image request", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path,
			"reason", "no restore of this workload is pending on this node")
		writeError(w, http.StatusNotFound, codeNameUnknown, "not served: no restore of this workload is handed to kubelet on this node", map[string]string{"name": name})
		return
	}
	switch kind {
	case "tags":
		s.serveTags(w, r, name, es)
	case "manifests":
		s.serveManifest(w, r, name, ref, es)
	case "blobs":
		s.serveBlob(w, r, name, ref, es)
	}
}

// served returns the entries of es that the server serves (Serves).
func (s *Server) served(wl store.Workload, es []store.Entry) []store.Entry {
	if s.Serves == nil {
		return es
	}
	var out []store.Entry
	for _, e := range es {
		if s.Serves(wl, e.Seq) {
			out = append(out, e)
		}
	}
	return out
}

// parseRepository parses "crfailoverd/<namespace>/<pod>/<container>".
func parseRepository(name string) (store.Workload, bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "crfailoverd" {
		return store.Workload{}, false
	}
	w := store.Workload{Namespace: parts[1], Pod: parts[2], Container: parts[3]}
	return w, w.Validate() == nil
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, name, ref string, es []store.Entry) {
	var (
		im  *Image
		err error
	)
	if strings.Contains(ref, ":") { // a digest
		if _, ok := validDigest(ref); !ok {
			writeError(w, http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": name, "reference": ref})
			return
		}
		im, err = s.findByDigest(r, es, func(im *Image) bool { return im.ManifestDigest == ref })
	} else {
		e, ok := resolveTag(ref, es)
		if !ok {
			writeError(w, http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": name, "tag": ref})
			return
		}
		im, err = s.image(r.Context(), e)
	}
	if err != nil {
		s.serverError(w, err, codeManifestUnknown)
		return
	}
	if im == nil {
		writeError(w, http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": name, "reference": ref})
		return
	}
	serveBytes(w, r, MediaTypeManifest, im.ManifestDigest, im.Manifest)
}

// resolveTag returns the entry a tag names: "latest" (the newest entry not
// marked bad) or the entry's sequence number in canonical decimal form.
func resolveTag(tag string, es []store.Entry) (store.Entry, bool) {
	if tag == "latest" {
		i := slices.IndexFunc(es, func(e store.Entry) bool { return !e.Bad })
		if i < 0 {
			return store.Entry{}, false
		}
		return es[i], true
	}
	seq, err := strconv.ParseUint(tag, 10, 64)
	if err != nil || strconv.FormatUint(seq, 10) != tag {
		return store.Entry{}, false
	}
	i := slices.IndexFunc(es, func(e store.Entry) bool { return e.Seq == seq })
	if i < 0 {
		return store.Entry{}, false
	}
	return es[i], true
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, name, ref string, es []store.Entry) {
	algo, ok := validDigest(ref)
	if !ok {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest", map[string]string{"digest": ref})
		return
	}
	if algo != "sha256" {
		writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown to registry", map[string]string{"digest": ref})
		return
	}
	im, err := s.findByDigest(r, es, func(im *Image) bool { return im.ConfigDigest == ref || im.LayerDigest == ref })
	if err != nil {
		s.serverError(w, err, codeBlobUnknown)
		return
	}
	if im == nil {
		writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown to registry", map[string]string{"name": name, "digest": ref})
		return
	}
	if im.ConfigDigest == ref {
		serveBytes(w, r, "application/octet-stream", ref, im.Config)
		return
	}
	l, err := s.openLayer(im)
	if errors.Is(err, os.ErrNotExist) { // pruned meanwhile
		writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown to registry", map[string]string{"name": name, "digest": ref})
		return
	} else if err != nil {
		s.serverError(w, err, codeBlobUnknown)
		return
	}
	defer l.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", ref)
	h.Set("ETag", `"`+ref+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	// ServeContent answers HEAD and range requests and sets Content-Length.
	// A sealed layer is decrypted as it is sent.
	http.ServeContent(w, r, "", time.Time{}, l)
}

// findByDigest returns the image of one of the entries es for which match
// is true, or nil. Images in the cache are looked at first; only if none
// matches are the missing ones built (a client normally knows a digest only
// from an image that was built).
func (s *Server) findByDigest(r *http.Request, es []store.Entry, match func(*Image) bool) (*Image, error) {
	var missing []store.Entry
	for _, e := range es {
		im, ok := s.cached(e)
		if !ok {
			missing = append(missing, e)
			continue
		}
		if match(im) {
			return im, nil
		}
	}
	for _, e := range missing {
		im, err := s.image(r.Context(), e)
		if err != nil {
			return nil, err
		}
		if match(im) {
			return im, nil
		}
	}
	return nil, nil
}

// validDigest checks the form "<algorithm>:<encoded>"; a sha256 digest
// must be 64 lowercase hex digits.
func validDigest(d string) (algo string, ok bool) {
	algo, enc, ok := strings.Cut(d, ":")
	if !ok || algo == "" || enc == "" {
		return "", false
	}
	for _, c := range algo {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '.' || c == '_' || c == '-') {
			return "", false
		}
	}
	if algo == "sha256" {
		if len(enc) != 64 {
			return "", false
		}
		for _, c := range enc {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return "", false
			}
		}
		return algo, true
	}
	for _, c := range enc {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '=' || c == '_' || c == '-') {
			return "", false
		}
	}
	return algo, true
}

func (s *Server) serveTags(w http.ResponseWriter, r *http.Request, name string, es []store.Entry) {
	var tags []string
	for _, e := range es {
		tags = append(tags, strconv.FormatUint(e.Seq, 10))
	}
	if slices.ContainsFunc(es, func(e store.Entry) bool { return !e.Bad }) {
		tags = append(tags, "latest")
	}
	slices.Sort(tags)
	page, next, ok := paginate(w, r, tags)
	if !ok {
		return
	}
	if next != "" {
		setNextLink(w, "/v2/"+name+"/tags/list", r, next)
	}
	writeJSON(w, r, struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, page})
}

func (s *Server) serveCatalog(w http.ResponseWriter, r *http.Request) {
	ws, err := s.st.Workloads()
	if err != nil {
		s.serverError(w, err, codeNameUnknown)
		return
	}
	repos := []string{}
	for _, wl := range ws {
		if s.Serves != nil {
			if es, err := s.st.List(wl); err != nil || len(s.served(wl, es)) == 0 {
				continue
			}
		}
		repos = append(repos, Repository(wl))
	}
	slices.Sort(repos)
	page, next, ok := paginate(w, r, repos)
	if !ok {
		return
	}
	if next != "" {
		setNextLink(w, "/v2/_catalog", r, next)
	}
	writeJSON(w, r, struct {
		Repositories []string `json:"repositories"`
	}{page})
}

// paginate applies the n and last query parameters to the sorted items.
// next is the last item of the page when more follow.
func paginate(w http.ResponseWriter, r *http.Request, items []string) (page []string, next string, ok bool) {
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(items, last)
		for i < len(items) && items[i] <= last {
			i++
		}
		items = items[i:]
	}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, codePaginationBad, "invalid number of results requested", map[string]string{"n": ns})
			return nil, "", false
		}
		if n < len(items) {
			items = items[:n]
			if n > 0 {
				next = items[n-1]
			}
		}
	}
	if items == nil {
		items = []string{}
	}
	return items, next, true
}

func setNextLink(w http.ResponseWriter, path string, r *http.Request, last string) {
	v := url.Values{}
	v.Set("n", r.URL.Query().Get("n"))
	v.Set("last", last)
	w.Header().Set("Link", "<"+path+"?"+v.Encode()+`>; rel="next"`)
}

// serveBytes answers with a manifest or configuration blob.
func serveBytes(w http.ResponseWriter, r *http.Request, mediaType, digest string, b []byte) {
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", digest)
	h.Set("ETag", `"`+digest+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

func writeJSON(w http.ResponseWriter, r *http.Request, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, codeUnknown, err.Error(), nil)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError answers with the distribution specification's error body,
// {"errors":[{"code":...,"message":...,"detail":...}]}.
func writeError(w http.ResponseWriter, status int, code, msg string, detail any) {
	b, _ := json.Marshal(struct {
		Errors []apiError `json:"errors"`
	}{[]apiError{{Code: code, Message: msg, Detail: detail}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Del("Docker-Content-Digest")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// serverError answers a failure; an entry that went away meanwhile
// (retention) is answered as unknown with notFound's code.
func (s *Server) serverError(w http.ResponseWriter, err error, notFound string) {
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, notFound, "checkpoint no longer stored", nil)
		return
	}
	s.log.Warn("checkpoint image endpoint failed", "err", err)
	writeError(w, http.StatusInternalServerError, codeUnknown, err.Error(), nil)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// ReadFrom keeps http.ServeContent's sendfile path for files.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{s.ResponseWriter}, r)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
