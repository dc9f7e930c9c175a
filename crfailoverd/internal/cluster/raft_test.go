package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
)

// A power cut can leave the newest segment file of the Raft log cut at
// any byte. The log must open again and keep every entry written wholly
// before the cut, and take new entries after them.
func TestRaftLogReopensAfterTailTruncation(t *testing.T) {
	const n, size = 200, 300
	data := func(i uint64) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	rng := rand.New(rand.NewPCG(15, 1))
	for round := range 8 {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			dir := t.TempDir()
			log := slog.New(slog.DiscardHandler)
			ls, _, err := openStores(dir, log)
			if err != nil {
				t.Fatal(err)
			}
			for i := uint64(1); i <= n; i++ {
				if err := ls.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data(i)}); err != nil {
					t.Fatalf("store entry %d: %v", i, err)
				}
			}
			if err := ls.Close(); err != nil {
				t.Fatal(err)
			}

			segs, err := filepath.Glob(filepath.Join(dir, "wal", "*.wal"))
			if err != nil || len(segs) == 0 {
				t.Fatalf("segment files: %v %v", segs, err)
			}
			slices.Sort(segs)
			tail := segs[len(segs)-1]
			b, err := os.ReadFile(tail)
			if err != nil {
				t.Fatal(err)
			}
			end := len(b)
			for end > 0 && b[end-1] == 0 {
				end-- // the written part of a preallocated file
			}
			const fileHeader = 32
			cut := fileHeader + 1 + rng.IntN(end-fileHeader-1)
			if err := os.Truncate(tail, int64(cut)); err != nil {
				t.Fatal(err)
			}

			ls, _, err = openStores(dir, log)
			if err != nil {
				t.Fatalf("reopen after cutting %s at byte %d of %d: %v", filepath.Base(tail), cut, end, err)
			}
			defer ls.Close()
			first, _ := ls.FirstIndex()
			last, err := ls.LastIndex()
			if err != nil {
				t.Fatal(err)
			}
			// Every entry has the same frame (same data size): those that
			// end before the cut are the first (cut-header)/frame.
			if (end-fileHeader)%n != 0 {
				t.Fatalf("%d bytes written after the header are not %d equal frames", end-fileHeader, n)
			}
			minKept := uint64((cut - fileHeader) / ((end - fileHeader) / n))
			t.Logf("cut at byte %d of %d: entries %d..%d kept (at least %d expected)", cut, end, first, last, minKept)
			if last < minKept || last > n {
				t.Fatalf("last index %d after a cut at byte %d, want %d..%d", last, cut, minKept, n)
			}
			for i := max(first, 1); i <= last && last > 0; i++ {
				var l raft.Log
				if err := ls.GetLog(i, &l); err != nil {
					t.Fatalf("entry %d of %d..%d: %v", i, first, last, err)
				}
				if l.Index != i || !bytes.Equal(l.Data, data(i)) {
					t.Fatalf("entry %d: index %d, data %d bytes of %d: not what was written", i, l.Index, len(l.Data), l.Data[0])
				}
			}
			if err := ls.StoreLog(&raft.Log{Index: last + 1, Term: 2, Type: raft.LogCommand, Data: data(last + 1)}); err != nil {
				t.Fatalf("append entry %d after the reopen: %v", last+1, err)
			}
		})
	}
}
