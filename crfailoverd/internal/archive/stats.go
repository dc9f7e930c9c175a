package archive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Magic numbers at the head of CRIU's stats-dump image (criu/include/magic.h).
const (
	imgServiceMagic = 0x55105940 // IMG_SERVICE_MAGIC: service (non-image) file
	statsMagic      = 0x57093306 // STATS_MAGIC
)

// DumpStats are the statistics CRIU records about a dump (CRIU's
// dump_stats_entry in images/stats.proto). Times are stored by CRIU in
// microseconds. During a dump, memory writing happens inside the memory dump
// phase, which happens while the tasks are frozen, so normally
// FrozenTime >= MemdumpTime >= MemwriteTime.
type DumpStats struct {
	FreezingTime time.Duration // time taken to freeze the tasks
	FrozenTime   time.Duration // time the tasks stayed frozen
	MemdumpTime  time.Duration // time spent dumping memory (includes MemwriteTime)
	MemwriteTime time.Duration // time spent writing pages to the images

	PagesScanned       uint64 // memory pages scanned
	PagesSkippedParent uint64 // pages found unchanged in a parent (pre-dump) image
	PagesWritten       uint64 // pages written to pages-*.img
	PagesLazy          uint64 // pages left for lazy migration
	PagePipes          uint64 // page pipes used
	PagePipeBufs       uint64 // page pipe buffers used

	IrmapResolve time.Duration // time spent resolving inotify/fanotify paths

	ShpagesScanned       uint64 // shared memory pages scanned
	ShpagesSkippedParent uint64 // shared memory pages found unchanged in a parent image
	ShpagesWritten       uint64 // shared memory pages written
}

// ParseStatsDump decodes the contents of a stats-dump file: the
// little-endian uint32 magics 0x55105940 and 0x57093306, the little-endian
// uint32 length of the protobuf message that follows, and a stats_entry
// message whose dump field (1) holds a dump_stats_entry. The length must
// cover exactly the rest of the file, and the message must contain the dump
// statistics with all of their required fields.
func ParseStatsDump(b []byte) (*DumpStats, error) {
	s, err := parseStatsDump(b)
	if err != nil {
		return nil, fmt.Errorf("stats-dump: %w", err)
	}
	return s, nil
}

func parseStatsDump(b []byte) (*DumpStats, error) {
	if len(b) < 12 {
		return nil, fmt.Errorf("too short (%d bytes)", len(b))
	}
	if m := binary.LittleEndian.Uint32(b); m != imgServiceMagic {
		return nil, fmt.Errorf("bad magic 0x%08x (want 0x%08x)", m, imgServiceMagic)
	}
	if m := binary.LittleEndian.Uint32(b[4:]); m != statsMagic {
		return nil, fmt.Errorf("bad magic 0x%08x (want 0x%08x)", m, statsMagic)
	}
	size, msg := binary.LittleEndian.Uint32(b[8:]), b[12:]
	if uint64(size) != uint64(len(msg)) {
		return nil, fmt.Errorf("bad size %d: %d bytes follow the header", size, len(msg))
	}

	var (
		s       DumpStats
		hasDump bool
		seen    uint32 // bit n set when dump field n was present
	)
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, fmt.Errorf("bad protobuf: %w", protowire.ParseError(n))
		}
		msg = msg[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(msg)
			if n < 0 {
				return nil, fmt.Errorf("bad protobuf: dump: %w", protowire.ParseError(n))
			}
			// Repeated occurrences of a message field are merged.
			if err := s.unmarshal(v, &seen); err != nil {
				return nil, fmt.Errorf("bad protobuf: dump: %w", err)
			}
			hasDump = true
			msg = msg[n:]
			continue
		}
		if num == 1 {
			return nil, fmt.Errorf("bad protobuf: dump has wire type %d", typ)
		}
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return nil, fmt.Errorf("bad protobuf: field %d: %w", num, protowire.ParseError(n))
		}
		msg = msg[n:]
	}
	if !hasDump {
		return nil, errors.New("no dump statistics")
	}
	// Fields declared required in dump_stats_entry.
	for _, f := range []struct {
		num  protowire.Number
		name string
	}{
		{1, "freezing_time"}, {2, "frozen_time"}, {3, "memdump_time"}, {4, "memwrite_time"},
		{5, "pages_scanned"}, {6, "pages_skipped_parent"}, {7, "pages_written"}, {9, "pages_lazy"},
	} {
		if seen&(1<<f.num) == 0 {
			return nil, fmt.Errorf("bad protobuf: dump: missing required field %s", f.name)
		}
	}
	return &s, nil
}

// unmarshal merges the dump_stats_entry message b into s, recording the
// field numbers present in seen.
func (s *DumpStats) unmarshal(b []byte, seen *uint32) error {
	usec := func(v uint64) time.Duration {
		return time.Duration(uint32(v)) * time.Microsecond // uint32 fields
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if num > 14 {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		if typ != protowire.VarintType {
			return fmt.Errorf("field %d has wire type %d, want varint", num, typ)
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		*seen |= 1 << num
		switch num {
		case 1:
			s.FreezingTime = usec(v)
		case 2:
			s.FrozenTime = usec(v)
		case 3:
			s.MemdumpTime = usec(v)
		case 4:
			s.MemwriteTime = usec(v)
		case 5:
			s.PagesScanned = v
		case 6:
			s.PagesSkippedParent = v
		case 7:
			s.PagesWritten = v
		case 8:
			s.IrmapResolve = usec(v)
		case 9:
			s.PagesLazy = v
		case 10:
			s.PagePipes = v
		case 11:
			s.PagePipeBufs = v
		case 12:
			s.ShpagesScanned = v
		case 13:
			s.ShpagesSkippedParent = v
		case 14:
			s.ShpagesWritten = v
		}
	}
	return nil
}
