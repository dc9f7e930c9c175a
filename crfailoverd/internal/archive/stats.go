package archive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"
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
	// The 12-byte image header is checked here, with go-criu's constants:
	// go-criu reads it only in CriuGetDumpStats, which takes the image
	// directory on disk (this is a member of an archive, in memory) and
	// slices the header and the payload without checking their lengths
	// against the file's.
	if len(b) < stats.PayloadOffset {
		return nil, fmt.Errorf("too short (%d bytes)", len(b))
	}
	if m := binary.LittleEndian.Uint32(b[stats.PrimaryMagicOffset:]); m != stats.ImgServiceMagic {
		return nil, fmt.Errorf("bad magic 0x%08x (want 0x%08x)", m, stats.ImgServiceMagic)
	}
	if m := binary.LittleEndian.Uint32(b[stats.SecondaryMagicOffset:]); m != stats.StatsMagic {
		return nil, fmt.Errorf("bad magic 0x%08x (want 0x%08x)", m, stats.StatsMagic)
	}
	size, msg := binary.LittleEndian.Uint32(b[stats.SizeOffset:]), b[stats.PayloadOffset:]
	if uint64(size) != uint64(len(msg)) {
		return nil, fmt.Errorf("bad size %d: %d bytes follow the header", size, len(msg))
	}
	// The message is decoded by go-criu, which checks wire types and the
	// fields that CRIU's stats.proto declares required.
	var e stats.StatsEntry
	if err := e.UnmarshalVT(msg); err != nil {
		return nil, fmt.Errorf("bad protobuf: %w", err)
	}
	d := e.GetDump()
	if d == nil {
		return nil, errors.New("no dump statistics")
	}
	usec := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	return &DumpStats{
		FreezingTime:         usec(d.GetFreezingTime()),
		FrozenTime:           usec(d.GetFrozenTime()),
		MemdumpTime:          usec(d.GetMemdumpTime()),
		MemwriteTime:         usec(d.GetMemwriteTime()),
		PagesScanned:         d.GetPagesScanned(),
		PagesSkippedParent:   d.GetPagesSkippedParent(),
		PagesWritten:         d.GetPagesWritten(),
		PagesLazy:            d.GetPagesLazy(),
		PagePipes:            d.GetPagePipes(),
		PagePipeBufs:         d.GetPagePipeBufs(),
		IrmapResolve:         usec(d.GetIrmapResolve()),
		ShpagesScanned:       d.GetShpagesScanned(),
		ShpagesSkippedParent: d.GetShpagesSkippedParent(),
		ShpagesWritten:       d.GetShpagesWritten(),
	}, nil
}
