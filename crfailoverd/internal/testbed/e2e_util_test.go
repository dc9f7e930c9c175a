package testbed

import (
	"archive/tar"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

func postStatus(t *testing.T, cfg *tls.Config, addr, path string) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	resp, err := c.Post("https://"+addr+path, "", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func archiveMembers(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read archive %s: %v", path, err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if i := strings.IndexByte(name, '/'); i >= 0 {
			name = name[:i+1]
		}
		out[name] = true
	}
}
