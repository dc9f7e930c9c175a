package main

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestImageEndpointHosts(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want []string
	}{
		{"127.0.0.1:7948", []string{"localhost:7948", "127.0.0.1:7948"}},
		{"localhost:5001", []string{"localhost:5001", "127.0.0.1:5001"}},
		{"0.0.0.0:7948", []string{"localhost:7948", "127.0.0.1:7948"}},
		{"[::1]:7948", []string{"localhost:7948", "127.0.0.1:7948", "[::1]:7948"}},
		{"10.0.0.5:7948", []string{"localhost:7948", "127.0.0.1:7948", "10.0.0.5:7948"}},
	} {
		got, err := imageEndpointHosts(tc.addr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("imageEndpointHosts(%s) = %v, %v; want %v", tc.addr, got, err, tc.want)
		}
	}
	if _, err := imageEndpointHosts("7948"); err == nil {
		t.Errorf("an address without a port was accepted")
	}
}

// TestNewImageServer: the daemon's image server serves only with the
// credentials it wrote into the pull secret files, and a restarted daemon
// writes the same ones (credentials cached by kubelet stay valid).
func TestNewImageServer(t *testing.T) {
	c := config.Default()
	c.Node.DataDir = t.TempDir()
	c.Images.ListenAddr = "127.0.0.1:7948"
	pullFile := filepath.Join(t.TempDir(), "kubelet", "config.json")
	c.Images.PullSecretFiles = []string{pullFile}
	st, err := store.Open(filepath.Join(c.Node.DataDir, "checkpoints"), 2)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := newImageServer(c, st, nil, true, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	written := func() (user, pass string) {
		t.Helper()
		b, err := os.ReadFile(pullFile)
		if err != nil {
			t.Fatal(err)
		}
		var f struct {
			Auths map[string]struct{ Auth string } `json:"auths"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		up, err := base64.StdEncoding.DecodeString(f.Auths["localhost:7948"].Auth)
		if err != nil || f.Auths["127.0.0.1:7948"].Auth != f.Auths["localhost:7948"].Auth {
			t.Fatalf("auths %v: %v", f.Auths, err)
		}
		r, _ := http.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString(up))
		user, pass, _ = r.BasicAuth()
		return user, pass
	}
	user, pass := written()
	h := srv.Handler()
	for _, tc := range []struct {
		user, pass string
		want       int
	}{{user, pass, 200}, {user, pass + "x", 401}, {"", "", 401}} {
		r := httptest.NewRequest("GET", "/v2/", nil)
		if tc.user != "" {
			r.SetBasicAuth(tc.user, tc.pass)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("GET /v2/ as %q: %d, want %d", tc.user, w.Code, tc.want)
		}
	}
	if fi, err := os.Stat(filepath.Join(c.Node.DataDir, "images", "secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file: %v %v", err, fi)
	}
	if _, err := newImageServer(c, st, nil, true, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if u2, p2 := written(); u2 != user || p2 != pass {
		t.Errorf("a restart changed the credentials")
	}

	// A pull secret file that is a link stops the start, naming it.
	link := filepath.Join(t.TempDir(), "config.json")
	if err := os.Symlink(pullFile, link); err != nil {
		t.Fatal(err)
	}
	c.Images.PullSecretFiles = []string{link}
	if _, err := newImageServer(c, st, nil, true, slog.New(slog.DiscardHandler)); err == nil {
		t.Errorf("a pull secret file that is a symbolic link was accepted")
	}
}

// TestNoPullSecretsWithoutKubelet: restores through the CRI never pull
// from the endpoint, so no pull secret file is written (a node without
// kubelet has no /var/lib/kubelet, and systemd keeps it read-only).
func TestNoPullSecretsWithoutKubelet(t *testing.T) {
	c := config.Default()
	c.Node.DataDir = t.TempDir()
	pullFile := filepath.Join(t.TempDir(), "kubelet", "config.json")
	c.Images.PullSecretFiles = []string{pullFile}
	st, err := store.Open(filepath.Join(c.Node.DataDir, "checkpoints"), 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newImageServer(c, st, nil, false, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(pullFile)); !os.IsNotExist(err) {
		t.Errorf("restores through the CRI: the pull secret file's directory exists (%v)", err)
	}
}
