package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// raftTimings are tuned for a LAN: a new leader within about a second of
// the old one failing, well inside the fencing lease.
func raftConfig(node string, log *slog.Logger) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(node)
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 20 * time.Millisecond
	c.SnapshotThreshold = 2048
	c.SnapshotInterval = 30 * time.Second
	c.TrailingLogs = 4096
	c.Logger = hclogOf(log, "raft")
	return c
}

// logStore is the durable Raft log and stable store (raft-wal). Close
// closes the WAL and its metadata database: raft-wal v0.4.0's own Close
// leaves the database (and its file lock) open, so a node restarted in
// the same process (the in-process test cluster) could not reopen it.
type logStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

func (l *logStore) Close() error {
	return errors.Join(l.WAL.Close(), l.meta.Close())
}

// openStores opens the durable log and stable store and the snapshot
// store under dir.
func openStores(dir string, log *slog.Logger) (*logStore, *raft.FileSnapshotStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "wal"), 0o700); err != nil {
		return nil, nil, fmt.Errorf("raft directory: %w", err)
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.WithMetaStore(meta))
	if err != nil {
		_ = meta.Close()
		return nil, nil, fmt.Errorf("open raft log %s: %w", filepath.Join(dir, "wal"), err)
	}
	ls := &logStore{WAL: w, meta: meta}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, hclogOf(log, "raft-snapshots"))
	if err != nil {
		_ = ls.Close()
		return nil, nil, fmt.Errorf("open raft snapshots in %s: %w", dir, err)
	}
	return ls, snaps, nil
}

// hclogOf routes hashicorp's logger into slog, at warning level and above
// (raft's info lines are chatty), with a component key.
func hclogOf(log *slog.Logger, component string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:            component,
		Level:           hclog.Info,
		Output:          &hclogWriter{log: log.With("component", component)},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

type hclogWriter struct{ log *slog.Logger }

func (w *hclogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERROR]"):
		w.log.Error(line)
	case strings.Contains(line, "[WARN]"):
		w.log.Warn(line)
	case strings.Contains(line, "[INFO]"):
		w.log.Info(line)
	default:
		w.log.Debug(line)
	}
	return len(p), nil
}

var _ io.Writer = (*hclogWriter)(nil)
