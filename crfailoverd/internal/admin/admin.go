// Package admin is crfailoverd's local admin API: HTTP with JSON over a
// unix socket (mode 0600, so only root and the daemon's user reach it),
// used by the CLI.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/api"
)

// Backend answers the admin requests.
type Backend interface {
	Status() api.Status
	Checkpoints(workload string) ([]api.CheckpointInfo, error)
}

// EventSource answers GET /v1/events: the events after a sequence number,
// waiting for one (long poll) when follow is set.
type EventSource interface {
	Events(ctx context.Context, after uint64, follow bool) []api.Event
}

// ClusterBackend answers the cluster requests; nil when clustering is off.
type ClusterBackend interface {
	Members() []api.Member
	RaftPeers() api.RaftInfo
	Workloads() []api.ClusterWorkload
	Migrate(ctx context.Context, workload, to string) (uint64, time.Duration, error)
}

// Handler returns the admin API's HTTP handler.
func Handler(b Backend, cb ClusterBackend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	clustered := func(f func(w http.ResponseWriter, r *http.Request)) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			if cb == nil {
				http.Error(w, "clustering is off on this node (cluster.enabled = false)", http.StatusServiceUnavailable)
				return
			}
			f(w, r)
		}
	}
	if es, ok := b.(EventSource); ok {
		mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
			after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
			ctx, cancel := context.WithTimeout(r.Context(), 25*time.Second)
			defer cancel()
			writeJSON(w, es.Events(ctx, after, r.URL.Query().Get("follow") != ""))
		})
	}
	mux.HandleFunc("GET /v1/members", clustered(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, cb.Members()) }))
	mux.HandleFunc("GET /v1/raft", clustered(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, cb.RaftPeers()) }))
	mux.HandleFunc("GET /v1/workloads", clustered(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, cb.Workloads()) }))
	mux.HandleFunc("POST /v1/migrate", clustered(func(w http.ResponseWriter, r *http.Request) {
		var req api.MigrateRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil || req.Workload == "" || req.To == "" {
			http.Error(w, `want {"workload":"namespace/pod/container","to":"NODE"}`, http.StatusBadRequest)
			return
		}
		seq, d, err := cb.Migrate(r.Context(), req.Workload, req.To)
		if err != nil {
			log.Warn("admin: migrate", "workload", req.Workload, "to", req.To, "err", err)
			http.Error(w, "migrate "+req.Workload+" to "+req.To+": "+err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, api.MigrateResult{Seq: seq, Downtime: d})
	}))
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, b.Status())
	})
	mux.HandleFunc("GET /v1/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		cs, err := b.Checkpoints(r.URL.Query().Get("workload"))
		if err != nil {
			log.Warn("admin: list checkpoints", "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, cs)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Listen opens the admin socket at path, mode 0600.
//
// Its directory is created 0700 when missing; an existing one that group or
// others may write is refused (they could replace the socket with their
// own, or bind one at its name first), with an error naming the directory,
// its mode and the fix. A live daemon already listening at path is an
// error; a stale socket (or other non-directory file) is replaced.
//
// The socket has mode 0600 from the moment it exists at path: it is bound
// in a private temporary directory (0700) next to path, made 0600 there,
// and renamed into place. This needs no change of the process-wide umask,
// which would race with goroutines creating files: the daemon opens the
// socket after memberlist and Raft have started theirs.
//
// Closing the listener removes the socket, unless another socket has
// replaced it at path in the meantime.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: another crfailoverd is listening there", path)
	}
	// Leftovers of a daemon killed inside this function.
	old, _ := filepath.Glob(filepath.Join(dir, socketTempPrefix+"*"))
	for _, o := range old {
		_ = os.RemoveAll(o)
	}
	tmpDir, err := os.MkdirTemp(dir, socketTempPrefix)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > maxSocketPath {
		return nil, fmt.Errorf("admin socket %s: path too long: %s (used while the socket is set up) has %d bytes, at most %d fit a unix socket address",
			path, tmp, len(tmp), maxSocketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	// Its bound name goes away with the rename; socketListener.Close
	// removes the socket at path instead.
	ln.SetUnlinkOnClose(false)
	var st os.FileInfo
	if err = os.Chmod(tmp, 0o600); err == nil {
		if err = os.Rename(tmp, path); err == nil {
			st, err = os.Lstat(path)
		}
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &socketListener{UnixListener: ln, path: path, file: st}, nil
}

// socketTempPrefix names the private directories Listen binds sockets in.
const socketTempPrefix = ".crfadm-"

// maxSocketPath is the longest path a unix socket can be bound at
// (sun_path is 108 bytes on Linux, with the terminating NUL).
const maxSocketPath = 107

// checkSocketDir refuses a socket directory that group or others may write.
func checkSocketDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("directory %s has mode %04o: its group or others may write it and replace the socket; fix: chmod go-w %s", dir, perm, dir)
	}
	return nil
}

// socketListener is the admin socket's listener; it reports path as its
// address and removes the socket there when closed.
type socketListener struct {
	*net.UnixListener
	path string
	file os.FileInfo // the socket as renamed to path
	once sync.Once
}

func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if st, e := os.Lstat(l.path); e == nil && os.SameFile(st, l.file) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// Serve serves h on ln until ctx ends (also used for the Prometheus
// endpoint).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Client calls a daemon's admin socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{
		Timeout: 5 * time.Minute, // a migration waits for the target
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

func (c *Client) get(ctx context.Context, path string, q url.Values, into any) error {
	return c.do(ctx, http.MethodGet, path, q, nil, into)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any, into any) error {
	u := "http://crfailoverd" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach crfailoverd at %s (is it running? systemctl status crfailoverd): %w", c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("crfailoverd: %s", strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Status asks for the daemon's status.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var s api.Status
	return s, c.get(ctx, "/v1/status", nil, &s)
}

// Checkpoints lists stored checkpoints, of one workload or all.
func (c *Client) Checkpoints(ctx context.Context, workload string) ([]api.CheckpointInfo, error) {
	var cs []api.CheckpointInfo
	q := url.Values{}
	if workload != "" {
		q.Set("workload", workload)
	}
	return cs, c.get(ctx, "/v1/checkpoints", q, &cs)
}

// Members lists the cluster's members.
func (c *Client) Members(ctx context.Context) ([]api.Member, error) {
	var ms []api.Member
	return ms, c.get(ctx, "/v1/members", nil, &ms)
}

// RaftPeers shows the Raft configuration.
func (c *Client) RaftPeers(ctx context.Context) (api.RaftInfo, error) {
	var r api.RaftInfo
	return r, c.get(ctx, "/v1/raft", nil, &r)
}

// Workloads lists the cluster's workloads.
func (c *Client) Workloads(ctx context.Context) ([]api.ClusterWorkload, error) {
	var ws []api.ClusterWorkload
	return ws, c.get(ctx, "/v1/workloads", nil, &ws)
}

// Migrate moves a workload to a node and waits until it runs there.
func (c *Client) Migrate(ctx context.Context, workload, to string) (api.MigrateResult, error) {
	var r api.MigrateResult
	return r, c.do(ctx, http.MethodPost, "/v1/migrate", nil, api.MigrateRequest{Workload: workload, To: to}, &r)
}

// Events returns the events after seq; with follow it waits (up to about
// 25 s) for at least one.
func (c *Client) Events(ctx context.Context, after uint64, follow bool) ([]api.Event, error) {
	var evs []api.Event
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	return evs, c.get(ctx, "/v1/events", q, &evs)
}
