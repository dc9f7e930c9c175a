package ociserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func basicAuth(user, pass string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pass)
	return r.Header.Get("Authorization")
}

// TestCredentialsRequired sends every kind of request without credentials,
// with a wrong password, with a wrong user name and with the right
// credentials: only the last is served, the others are 401 with the Basic
// challenge, a body that names what was refused, and an info log line with
// the remote address and the path that never shows a password.
func TestCredentialsRequired(t *testing.T) {
	b := newBed(t, 2)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	im, err := b.srv.Prepare(context.Background(), wl, 1)
	if err != nil {
		t.Fatal(err)
	}
	repo := b.http.URL + "/v2/crfailoverd/default/counter/counter"
	paths := map[string]string{
		"base":     b.http.URL + "/v2/",
		"catalog":  b.http.URL + "/v2/_catalog",
		"tags":     repo + "/tags/list",
		"manifest": repo + "/manifests/1",
		"config":   repo + "/blobs/" + im.ConfigDigest,
		"layer":    repo + "/blobs/" + im.LayerDigest,
		"unknown":  b.http.URL + "/not/a/registry/path",
	}
	const wrongPass = "wrong-password-never-logged"
	refused := map[string]string{
		"none":           "",
		"wrong password": basicAuth(testCreds.Username, wrongPass),
		"wrong user":     basicAuth("admin", testCreds.Password),
		"empty":          basicAuth("", ""),
		"bearer":         "Bearer " + testCreds.Password,
	}
	for what, u := range paths {
		for how, authz := range refused {
			for _, method := range []string{"GET", "HEAD", "DELETE"} {
				before := b.logs.count("REFUSED checkpoint image request")
				resp, body := get(t, method, u, "Authorization", authz)
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s %s (%s), credentials %s: %s, want 401", method, what, u, how, resp.Status)
					continue
				}
				if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="crfailoverd"` {
					t.Errorf("%s %s, credentials %s: WWW-Authenticate %q", method, what, how, got)
				}
				if resp.Header.Get("Docker-Content-Digest") != "" {
					t.Errorf("%s %s, credentials %s: a refusal carries a digest", method, what, how)
				}
				if method == "GET" {
					path := strings.TrimPrefix(u, b.http.URL)
					if code := errorCode(t, body); code != codeUnauthorized || !strings.Contains(string(body), path) {
						t.Errorf("%s %s, credentials %s: body %s does not refuse %s with %s", method, what, how, body, path, codeUnauthorized)
					}
				}
				if b.logs.count("REFUSED checkpoint image request") != before+1 {
					t.Errorf("%s %s, credentials %s: refusal not logged once", method, what, how)
				}
			}
		}
	}
	logs := b.logs.b.String()
	if strings.Contains(logs, testCreds.Password) || strings.Contains(logs, wrongPass) {
		t.Errorf("a password is in the log:\n%s", logs)
	}
	for _, want := range []string{"level=INFO msg=\"REFUSED checkpoint image request\" remote=127.0.0.1:", "path=/v2/crfailoverd/default/counter/counter/manifests/1", `reason="no credentials offered"`, `reason="wrong user name or password"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// The right credentials: served.
	for what, u := range paths {
		resp, body := get(t, "GET", u)
		want := http.StatusOK
		if what == "unknown" {
			want = http.StatusNotFound
		}
		if resp.StatusCode != want {
			t.Errorf("GET %s with credentials: %s %s, want %d", what, resp.Status, body, want)
		}
	}
}

// TestClientWithoutCredentials pulls with go-containerregistry's client and
// no credentials: the 401 challenge reaches it as an unauthorized error,
// and with the credentials the same pull works.
func TestClientWithoutCredentials(t *testing.T) {
	b := newBed(t, 2)
	gz, _ := fixtureBytes(t)
	b.add(t, wl, gz)
	_, err := remote.Image(b.ref(t, ImageName(wl, 1)))
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous pull: %v, want a 401 transport error", err)
	}
	if _, err := remote.Image(b.ref(t, ImageName(wl, 1)), testAuth); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
}

// TestNoCredentialsNoService: a server whose credentials are not set
// refuses every request (even one that offers empty credentials) and
// refuses to start serving.
func TestNoCredentialsNoService(t *testing.T) {
	b := newBed(t, 2)
	b.srv.Credentials = Credentials{}
	for _, authz := range []string{"", basicAuth("", ""), basicAuth(testCreds.Username, testCreds.Password)} {
		resp, body := get(t, "GET", b.http.URL+"/v2/", "Authorization", authz)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "no credentials configured") {
			t.Errorf("server without credentials, Authorization %q: %s %s", authz, resp.Status, body)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := b.srv.ServeListener(context.Background(), ln); err == nil || !strings.Contains(err.Error(), "without credentials") {
		t.Errorf("ServeListener without credentials: %v", err)
	}
	// The listener was closed: the address can be listened on again.
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("ServeListener left its listener open: %v", err)
	} else {
		ln2.Close()
	}
	if err := b.srv.Serve(context.Background(), "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "without credentials") {
		t.Errorf("Serve without credentials: %v", err)
	}
}

func TestEqualSecret(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"s3cret", "s3cret", true},
		{"s3cret", "s3creT", false},
		{"s3cret", "s3cret-longer", false},
		{"", "", true},
		{"", "x", false},
	} {
		if got := equalSecret(tc.a, tc.b); got != tc.want {
			t.Errorf("equalSecret(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}
