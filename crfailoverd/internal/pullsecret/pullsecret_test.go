package pullsecret

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var hosts = []string{"localhost:7948", "127.0.0.1:7948"}

var auth = Auth{Username: "crfailoverd", Password: "0011aabb"}

// decode reads a written file as kubelet does: auths[host].auth is base64
// of user:password.
func decode(t *testing.T, path string) (top map[string]json.RawMessage, auths map[string]map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if err := json.Unmarshal(top["auths"], &auths); err != nil {
		t.Fatalf("auths %s: %v", top["auths"], err)
	}
	return top, auths
}

func userPass(t *testing.T, e map[string]any) string {
	t.Helper()
	s, _ := e["auth"].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("auth %q: %v", s, err)
	}
	return string(b)
}

// TestWriteNew: a missing file is created 0600, in a parent directory
// created 0700, with an entry per host.
func TestWriteNew(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kubelet", "config.json")
	if err := Write(p, hosts, auth); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %s, want 0600", st.Mode())
	}
	if dst, err := os.Stat(filepath.Dir(p)); err != nil || dst.Mode().Perm() != 0o700 {
		t.Errorf("parent directory: %v, mode %v, want 0700", err, dst.Mode())
	}
	_, auths := decode(t, p)
	for _, h := range hosts {
		if got := userPass(t, auths[h]); got != "crfailoverd:0011aabb" {
			t.Errorf("auths[%s] = %q", h, got)
		}
	}
	if len(auths) != len(hosts) {
		t.Errorf("auths %v", auths)
	}
	if names, _ := os.ReadDir(filepath.Dir(p)); len(names) != 1 {
		t.Errorf("directory holds %d files, want config.json only", len(names))
	}
}

// TestWriteMerges: an existing file keeps its other registries' entries
// (with their fields) and its other keys; an old entry of ours is
// replaced; a group-readable file becomes 0600.
func TestWriteMerges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.json")
	existing := `{
  "auths": {
    "registry.example.com": {"auth": "dXNlcjpwdw==", "email": "ops@example.com"},
    "localhost:7948": {"auth": "b2xkOm9sZA=="}
  },
  "credHelpers": {"gcr.io": "gcloud"},
  "HttpHeaders": {"User-Agent": "x"}
}`
	if err := os.WriteFile(p, []byte(existing), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, hosts, auth); err != nil {
		t.Fatal(err)
	}
	top, auths := decode(t, p)
	if got := userPass(t, auths["registry.example.com"]); got != "user:pw" || auths["registry.example.com"]["email"] != "ops@example.com" {
		t.Errorf("other registry's entry: %v", auths["registry.example.com"])
	}
	for _, h := range hosts {
		if got := userPass(t, auths[h]); got != "crfailoverd:0011aabb" {
			t.Errorf("auths[%s] = %q", h, got)
		}
	}
	var helpers map[string]string
	if err := json.Unmarshal(top["credHelpers"], &helpers); err != nil || helpers["gcr.io"] != "gcloud" {
		t.Errorf("credHelpers %s: %v", top["credHelpers"], err)
	}
	if _, ok := top["HttpHeaders"]; !ok {
		t.Errorf("HttpHeaders dropped: %v", top)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %s after writing, want 0600", st.Mode())
	}
	// Writing again (a restart) changes nothing.
	before, _ := os.ReadFile(p)
	if err := Write(p, hosts, auth); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(p); string(after) != string(before) {
		t.Errorf("second write changed the file:\n%s\n%s", before, after)
	}
}

// TestWriteRefuses: a symbolic link (to a file or dangling), a directory,
// a file that is not a JSON object, an "auths" that is not an object and a
// relative path are refused, naming the file, and nothing is written
// through the link or over the unreadable file.
func TestWriteRefuses(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target.json")
	if err := os.WriteFile(target, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling.json")
	if err := os.Symlink(filepath.Join(dir, "nowhere.json"), dangling); err != nil {
		t.Fatal(err)
	}
	notJSON := filepath.Join(dir, "broken.json")
	if err := os.WriteFile(notJSON, []byte(`{"auths": {`), 0o600); err != nil {
		t.Fatal(err)
	}
	badAuths := filepath.Join(dir, "badauths.json")
	if err := os.WriteFile(badAuths, []byte(`{"auths": ["x"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub.json")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{link, link + " is a symbolic link: refused"},
		{dangling, dangling + " is a symbolic link: refused"},
		{sub, sub + " (mode d"},
		{notJSON, notJSON + " is not a JSON object: refused to rewrite it"},
		{badAuths, badAuths + `: "auths" is not a JSON object`},
		{"config.json", `"config.json": not an absolute path`},
	} {
		err := Write(tc.path, hosts, auth)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Write(%s) = %v, want an error containing %q", tc.path, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), auth.Password) {
			t.Errorf("error shows the password: %v", err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != `{"auths":{}}` {
		t.Errorf("written through the link: %s", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "nowhere.json")); err == nil {
		t.Errorf("the dangling link's target was created")
	}
	if b, _ := os.ReadFile(notJSON); string(b) != `{"auths": {` {
		t.Errorf("an unreadable file was overwritten: %s", b)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v", err)
	}
}
