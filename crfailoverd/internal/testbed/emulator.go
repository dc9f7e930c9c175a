package testbed

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Emulator is the kubelet's checkpoint endpoint and nothing more:
//
//	POST /checkpoint/{namespace}/{pod}/{container}?timeout=SECONDS
//
// over HTTPS with client certificates signed by the bed's CA. It calls CRI
// CheckpointContainer with a location under KubeletDir/checkpoints named as
// kubelet names it, and answers {"items":["<path>"]}. Kubelet's own
// authorization (a SubjectAccessReview against the API server) has no
// counterpart here: any certificate the CA signed is authorized.
type Emulator struct {
	Runtime    runtimeapi.RuntimeServiceClient
	KubeletDir string
	Log        *slog.Logger
	Now        func() time.Time
}

// Handler returns the emulator's HTTP handler.
func (e *Emulator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /checkpoint/{namespace}/{pod}/{container}", e.checkpoint)
	return mux
}

func (e *Emulator) checkpoint(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		// kubelet's authenticator rejects anonymous requests.
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	log := e.Log.With("namespace", ns, "pod", pod, "container", ctr, "client", r.TLS.PeerCertificates[0].Subject.CommonName)
	var timeout int64
	if v := r.URL.Query().Get("timeout"); v != "" {
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil || t < 0 {
			http.Error(w, fmt.Sprintf("cannot parse value of timeout parameter %q", v), http.StatusBadRequest)
			return
		}
		timeout = t
	}
	ctx := r.Context()
	id, found, err := findRunningContainer(ctx, e.Runtime, ns, pod, ctr)
	if err != nil {
		log.Error("checkpoint: look up container", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if !found {
		http.Error(w, fmt.Sprintf("container %s/%s/%s does not exist", ns, pod, ctr), http.StatusNotFound)
		return
	}
	dir := filepath.Join(e.KubeletDir, "checkpoints")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	now := time.Now
	if e.Now != nil {
		now = e.Now
	}
	loc := filepath.Join(dir, fmt.Sprintf("checkpoint-%s_%s-%s-%s.tar", pod, ns, ctr, now().Format(time.RFC3339)))
	start := time.Now()
	_, err = e.Runtime.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: loc, Timeout: timeout})
	if err != nil {
		log.Error("checkpoint failed", "container_id", id, "err", err)
		http.Error(w, fmt.Sprintf("checkpointing of %s/%s/%s failed (%v)", ns, pod, ctr, err), http.StatusInternalServerError)
		return
	}
	log.Info("checkpointed", "container_id", id, "location", loc, "duration_ms", time.Since(start).Milliseconds())
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string][]string{"items": {loc}})
}

// ServeEmulator serves the emulator on addr with the given serving
// certificate, requiring client certificates signed by caFile whenever one
// is presented (no certificate: 401; a certificate of another CA: the TLS
// handshake fails). It returns when ctx ends.
func ServeEmulator(ctx context.Context, e *Emulator, addr, certFile, keyFile, caFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load kubelet serving certificate: %w", err)
	}
	pool, err := loadPool(caFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("kubelet emulator: listen on %s: %w (is another kubelet or an earlier bed still running?)", addr, err)
	}
	srv := &http.Server{
		Handler:           e.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	e.Log.Info("kubelet emulator listening", "addr", addr)
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
