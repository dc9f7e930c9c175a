package main

import (
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/config"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// openStore opens the node's checkpoint store as the [store] table says:
// archives sealed with the data key (unless store.plaintext, which is
// logged as INSECURE at every start), and the replica limits. It returns
// the data key too (nil in plaintext mode), for the image endpoint's
// layer cache.
func openStore(c config.Config, log *slog.Logger) (*store.Store, *seal.Key, error) {
	root := filepath.Join(c.Node.DataDir, "checkpoints")
	var key *seal.Key
	if c.Store.Plaintext {
		log.Warn("INSECURE: store.plaintext = true: checkpoint archives, which hold the protected containers' memory (secrets included), are kept unencrypted on disk; set store.data_key_file (crfailoverd keygen --data-key FILE)",
			"data_dir", c.Node.DataDir)
	} else {
		k, err := seal.Load(c.Store.DataKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("open checkpoint store %s: store.data_key_file: %w", root, err)
		}
		key = k
	}
	l := store.Limits{
		MaxArchiveBytes: c.Store.MaxArchiveBytes,
		WorkloadQuota:   c.Store.WorkloadQuota,
		NodeQuota:       c.Store.NodeQuota,
		MinFree:         c.Store.MinFree,
	}
	st, err := store.OpenWith(root, store.Options{Retention: c.Checkpoint.Retention, Key: key, Limits: l, Node: c.Node.Name})
	if err != nil {
		return nil, nil, fmt.Errorf("open checkpoint store: %w", err)
	}
	attrs := []any{"root", root, "sealed", key != nil, "max_archive_bytes", l.MaxArchiveBytes,
		"workload_quota", l.WorkloadQuota, "node_quota", l.NodeQuota, "min_free", l.MinFree}
	if key != nil {
		attrs = append(attrs, "data_key_file", c.Store.DataKeyFile, "data_key_recipient", key.Recipient())
	}
	log.Info("checkpoint store open", attrs...)
	return st, key, nil
}
