package archive

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"
)

// Write prints a human-readable report of the archive, as shown by
// `crfailoverd inspect ARCHIVE`: the container's metadata and sizes, then
// the CRIU dump statistics if the archive has them.
func (i *Info) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }

	row("Container", orNone(i.Container))
	row("Image", orNone(i.Image))
	row("Image ref", orNone(i.ImageRef))
	row("ID", orNone(i.ID))
	row("Runtime", orNone(i.Runtime))
	row("Created", formatTime(i.Created))
	row("Checkpointed", formatTime(i.Checkpointed))
	if i.ArchiveSize >= 0 {
		row("Archive size", formatSize(i.ArchiveSize))
	} else {
		row("Archive size", "unknown")
	}
	row("Checkpoint size", formatSize(i.CheckpointSize))
	row("  Memory pages", formatSize(i.PagesSize))
	row("Rootfs diff size", formatSize(i.RootfsDiffSize))
	row("Files", strconv.Itoa(i.Files))

	if s := i.Stats; s != nil {
		fmt.Fprintf(tw, "\nCRIU dump statistics\n")
		row("Freezing time", s.FreezingTime.String())
		row("Frozen time", s.FrozenTime.String())
		row("Memdump time", s.MemdumpTime.String())
		row("Memwrite time", s.MemwriteTime.String())
		row("Pages scanned", strconv.FormatUint(s.PagesScanned, 10))
		row("Pages written", strconv.FormatUint(s.PagesWritten, 10))
		row("Pages skipped (parent)", strconv.FormatUint(s.PagesSkippedParent, 10))
		row("Lazy pages", strconv.FormatUint(s.PagesLazy, 10))
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// formatSize renders n bytes with a binary unit, e.g. "1.2 MiB (1258291 bytes)".
func formatSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB", "PiB", "EiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", v, unit, n)
}

// jsonInfo is the stable JSON form of Info. Durations are in microseconds,
// the unit CRIU records them in.
type jsonInfo struct {
	Container      string     `json:"container"`
	ID             string     `json:"id"`
	Image          string     `json:"image"`
	ImageRef       string     `json:"image_ref"`
	Runtime        string     `json:"runtime"`
	Created        time.Time  `json:"created"`
	Checkpointed   time.Time  `json:"checkpointed"`
	ArchiveSize    int64      `json:"archive_size"`
	CheckpointSize int64      `json:"checkpoint_size"`
	PagesSize      int64      `json:"pages_size"`
	RootfsDiffSize int64      `json:"rootfs_diff_size"`
	Files          int        `json:"files"`
	Stats          *jsonStats `json:"stats"`
	Spec           *Spec      `json:"spec"`
}

type jsonStats struct {
	FreezingTimeUS       int64  `json:"freezing_time_us"`
	FrozenTimeUS         int64  `json:"frozen_time_us"`
	MemdumpTimeUS        int64  `json:"memdump_time_us"`
	MemwriteTimeUS       int64  `json:"memwrite_time_us"`
	IrmapResolveUS       int64  `json:"irmap_resolve_us"`
	PagesScanned         uint64 `json:"pages_scanned"`
	PagesSkippedParent   uint64 `json:"pages_skipped_parent"`
	PagesWritten         uint64 `json:"pages_written"`
	PagesLazy            uint64 `json:"pages_lazy"`
	PagePipes            uint64 `json:"page_pipes"`
	PagePipeBufs         uint64 `json:"page_pipe_bufs"`
	ShpagesScanned       uint64 `json:"shpages_scanned"`
	ShpagesSkippedParent uint64 `json:"shpages_skipped_parent"`
	ShpagesWritten       uint64 `json:"shpages_written"`
}

// JSON returns the report as indented JSON with stable snake_case keys (for
// `crfailoverd inspect -json`). Times are RFC 3339, sizes are bytes,
// durations are integer microseconds (keys ending in "_us"), "stats" is null
// when the archive has no stats-dump, and "spec" uses the OCI key names.
func (i *Info) JSON() ([]byte, error) {
	j := jsonInfo{
		Container:      i.Container,
		ID:             i.ID,
		Image:          i.Image,
		ImageRef:       i.ImageRef,
		Runtime:        i.Runtime,
		Created:        i.Created,
		Checkpointed:   i.Checkpointed,
		ArchiveSize:    i.ArchiveSize,
		CheckpointSize: i.CheckpointSize,
		PagesSize:      i.PagesSize,
		RootfsDiffSize: i.RootfsDiffSize,
		Files:          i.Files,
		Spec:           i.Spec,
	}
	if s := i.Stats; s != nil {
		j.Stats = &jsonStats{
			FreezingTimeUS:       s.FreezingTime.Microseconds(),
			FrozenTimeUS:         s.FrozenTime.Microseconds(),
			MemdumpTimeUS:        s.MemdumpTime.Microseconds(),
			MemwriteTimeUS:       s.MemwriteTime.Microseconds(),
			IrmapResolveUS:       s.IrmapResolve.Microseconds(),
			PagesScanned:         s.PagesScanned,
			PagesSkippedParent:   s.PagesSkippedParent,
			PagesWritten:         s.PagesWritten,
			PagesLazy:            s.PagesLazy,
			PagePipes:            s.PagePipes,
			PagePipeBufs:         s.PagePipeBufs,
			ShpagesScanned:       s.ShpagesScanned,
			ShpagesSkippedParent: s.ShpagesSkippedParent,
			ShpagesWritten:       s.ShpagesWritten,
		}
	}
	return json.MarshalIndent(j, "", "  ")
}
