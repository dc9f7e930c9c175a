package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

func TestOpenStore(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "etc", "data.key")
	if err := writeDataKey(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := writeDataKey(keyPath); err == nil || !strings.Contains(err.Error(), "not replaced") {
		t.Errorf("second keygen --data-key over %s: %v; want a refusal", keyPath, err)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("data key %s: %v, mode %v; want 0600", keyPath, err, fi.Mode().Perm())
	}
	c := config.Default()
	c.Node.Name = "n1"
	c.Node.DataDir = filepath.Join(dir, "data")
	c.Store.DataKeyFile = keyPath
	c.Store.WorkloadQuota = 5 << 20
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	st, _, err := openStore(c, log)
	if err != nil {
		t.Fatal(err)
	}
	if st.Limits().WorkloadQuota != 5<<20 || st.Limits().MinFree != c.Store.MinFree || !st.Sealing() {
		t.Errorf("store limits %+v, sealing %v; want the configuration's, sealed", st.Limits(), st.Sealing())
	}
	w := store.Workload{Namespace: "default", Pod: "p", Container: "c"}
	e, err := st.Import(context.Background(), w, strings.NewReader("archive"), store.Entry{Seq: 1, Source: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(e.Path)
	if !seal.Encrypted(raw) {
		t.Errorf("the store opened with data_key_file writes plaintext")
	}

	// inspect refuses a sealed file without the key, clearly.
	cfgPath := filepath.Join(dir, "none.toml")
	if _, err := inspectArchive(e.Path, "", cfgPath); err == nil || !strings.Contains(err.Error(), "sealed") || !strings.Contains(err.Error(), "--data-key") {
		t.Errorf("inspect of a sealed archive without a key: %v", err)
	}
	// With the key it gets to the archive's content (here: not a tar).
	if _, err := inspectArchive(e.Path, keyPath, cfgPath); err == nil || strings.Contains(err.Error(), "sealed") {
		t.Errorf("inspect with the key of a sealed non-archive: %v; want the archive reader's refusal", err)
	}

	c.Store.Plaintext, c.Store.DataKeyFile = true, ""
	logs.Reset()
	st, _, err = openStore(c, log)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sealing() || !strings.Contains(logs.String(), "INSECURE: store.plaintext") {
		t.Errorf("plaintext mode: sealing %v, log %q; want no sealing and an INSECURE warning", st.Sealing(), logs.String())
	}

	c.Store.Plaintext, c.Store.DataKeyFile = false, keyPath
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openStore(c, log); err == nil || !strings.Contains(err.Error(), "0644") || !strings.Contains(err.Error(), keyPath) {
		t.Errorf("data key readable by others: %v; want a refusal naming the file and mode", err)
	}
}
