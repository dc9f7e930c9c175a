package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
)

// ReadStats returns the CRIU dump statistics of the plain (uncompressed)
// archive at path without reading the rest: the tar reader seeks past the
// other members, so this is cheap for large archives. It does not check
// the archive as a whole (Read does). It returns nil, nil when the archive
// has no stats-dump.
func ReadStats(path string) (*DumpStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("archive %s: %w", path, err)
		}
		name, err := memberName(h.Name)
		if err != nil || name != "stats-dump" {
			continue
		}
		b, err := readMember(tr, name, h.Size)
		if err != nil {
			return nil, fmt.Errorf("archive %s: %w", path, err)
		}
		s, err := ParseStatsDump(b)
		if err != nil {
			return nil, fmt.Errorf("archive %s: stats-dump: %w", path, err)
		}
		return s, nil
	}
}
