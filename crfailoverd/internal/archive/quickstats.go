package archive

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/checkpoint-restore/go-criu/v8/stats"
)

// errFound stops a walk once the member looked for was read.
var errFound = errors.New("found")

// ReadStats returns the CRIU dump statistics of the archive at path without
// reading the rest: for a plain (uncompressed) archive the walk seeks past
// the other members, so this is cheap for large archives. The members up
// to stats-dump are checked as Read checks them, but the archive as a whole
// is not (Read does). It returns nil, nil when the archive has no
// stats-dump.
func ReadStats(path string) (*DumpStats, error) { return ReadStatsWith(path, Options{}) }

// ReadStatsWith is ReadStats with Options (limits and a context).
func ReadStatsWith(path string, opts Options) (*DumpStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	return ReadStatsFrom(f, path, opts)
}

// ReadStatsFrom is ReadStats of the archive read from r (an io.Seeker, such
// as the store's decrypting reader, lets the walk skip the members it does
// not read); name is used in error messages.
func ReadStatsFrom(r io.Reader, name string, opts Options) (*DumpStats, error) {
	var s *DumpStats
	err := WalkWith(r, opts, func(m *Member) error {
		if m.Dir || m.Name != stats.StatsDump {
			return nil
		}
		b, err := readMember(m)
		if err != nil {
			return err
		}
		if s, err = ParseStatsDump(b); err != nil {
			return err
		}
		return errFound
	})
	if err != nil && err != errFound {
		return nil, fmt.Errorf("archive %s: %w", name, err)
	}
	return s, nil
}
