// Package pullsecret keeps registry credentials in docker config.json files
// (the format kubelet reads from its root directory, and CRI-O's
// global_auth_file), so that a node's image pulls authenticate to
// crfailoverd's image endpoint.
//
// A file is merged, never replaced wholesale: its other registries' entries
// and its other top-level keys stay as they were (the same JSON
// values, re-indented). It is written atomically (a temporary file in the same
// directory, fsynced, renamed over it, the directory fsynced), mode 0600,
// in a parent directory created 0700 if missing. A path that is a symbolic
// link, or not a regular file, is refused, as is a file that is not a JSON
// object: the daemon does not follow links planted where kubelet looks,
// and does not clobber a file it cannot read.
package pullsecret

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
)

// MaxFileBytes bounds what is read of an existing file.
const MaxFileBytes = 4 << 20

// Auth is one registry's credentials.
type Auth struct {
	Username string
	Password string
}

// entry is an auths entry as docker, kubelet and containers/image read it:
// "auth" is base64 of "user:password".
type entry struct {
	Auth string `json:"auth"`
}

// Write sets the auths entries of hosts (registry host[:port] as image
// references name them, for example "localhost:7948") to a in the docker
// config.json file at path, keeping everything else in it. Errors name
// the file.
func Write(path string, hosts []string, a Auth) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("pull secret file %q: not an absolute path: refused", path)
	}
	if len(hosts) == 0 {
		return fmt.Errorf("pull secret file %s: no registry hosts to write", path)
	}
	top, err := read(path)
	if err != nil {
		return err
	}
	auths := map[string]json.RawMessage{}
	if raw, ok := top["auths"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &auths); err != nil {
			return fmt.Errorf("pull secret file %s: \"auths\" is not a JSON object: refused to rewrite it: %w", path, err)
		}
		if auths == nil {
			auths = map[string]json.RawMessage{}
		}
	}
	e, err := json.Marshal(entry{Auth: base64.StdEncoding.EncodeToString([]byte(a.Username + ":" + a.Password))})
	if err != nil {
		return err
	}
	for _, h := range hosts {
		auths[h] = e
	}
	if top["auths"], err = json.Marshal(auths); err != nil {
		return err
	}
	out, err := json.MarshalIndent(top, "", "\t")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pull secret file %s: create its directory: %w", path, err)
	}
	// The rename replaces a link planted after the check above rather than
	// writing through it.
	if err := atomicfile.WriteFile(path, append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("pull secret file: %w", err)
	}
	return nil
}

// read returns the top-level keys of the file at path; none if it does not
// exist.
func read(path string) (map[string]json.RawMessage, error) {
	top := map[string]json.RawMessage{}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return top, nil
	} else if err != nil {
		return nil, fmt.Errorf("pull secret file: %w", err)
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("pull secret file %s is a symbolic link: refused (crfailoverd does not follow links where image pulls read credentials; replace it with a regular file)", path)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("pull secret file %s (mode %s) is not a regular file: refused", path, st.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("pull secret file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("pull secret file %s: %w", path, err)
	}
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("pull secret file %s is larger than %d bytes: refused", path, MaxFileBytes)
	}
	if len(b) == 0 {
		return top, nil
	}
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("pull secret file %s is not a JSON object: refused to rewrite it: %w", path, err)
	}
	if top == nil { // the file says null
		top = map[string]json.RawMessage{}
	}
	return top, nil
}
