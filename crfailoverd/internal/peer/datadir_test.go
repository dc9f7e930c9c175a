package peer

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/seal"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// mountTmpfs mounts a tmpfs of size on a fresh directory, or skips the
// test.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a %s tmpfs at %s (needs root or CAP_SYS_ADMIN): %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func newSealKey(t *testing.T) *seal.Key {
	t.Helper()
	id, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	k, err := seal.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// usage returns the bytes of the regular files under root: all of them,
// and those of each top-level directory (a workload's).
func usage(t *testing.T, root string) (total int64, byDir map[string]int64) {
	t.Helper()
	byDir = map[string]int64{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		total += fi.Size()
		byDir[strings.SplitN(rel, string(filepath.Separator), 2)[0]] += fi.Size()
		return nil
	})
	return total, byDir
}

// The data directory on a small tmpfs, behind a real peer server: a peer
// pushes replicas until the store refuses them. Every refusal names the
// quota or min_free it hit, leaves no file behind, and the directory never
// grows past the caps.
func TestDataDirectoryBounded(t *testing.T) {
	const mib = 1 << 20
	mnt := mountTmpfs(t, "64m")
	root := filepath.Join(mnt, "checkpoints")
	limits := store.Limits{MaxArchiveBytes: 8 * mib, WorkloadQuota: 10 * mib, NodeQuota: 48 * mib, MinFree: 24 * mib}
	st, err := store.OpenWith(root, store.Options{Retention: 10, Key: newSealKey(t), Limits: limits, Node: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	ca := newCA(t, "cluster-ca")
	a := ca.nodeTLS(t, "node-a")
	done := make(chan error, 1)
	b := startPeer(t, ca, "node-b", Handlers{Store: st}, streamDone(done))

	// The sender keeps its archives sealed too, and sends their plaintext.
	src, err := store.OpenWith(t.TempDir(), store.Options{Retention: 10, Key: newSealKey(t), Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(b.name, b.addr, a, WithArchives(src))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	archive := tarOf(t, 4*mib)

	refused := map[string]int{}
	var stored int
	for i := 0; i < 10 && refused["min_free"]+refused["node_quota"] < 2; i++ {
		w := mustWorkload(t, fmt.Sprintf("ns/pod%d/ctr", i))
		for range 3 {
			e, err := src.Import(context.Background(), w, bytes.NewReader(archive), store.Entry{Method: "cri", Source: "node-a"})
			if err != nil {
				t.Fatal(err)
			}
			before, err := st.List(w)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Push(context.Background(), e, nil)
			recvTimeout(t, done, "server handler")
			if err == nil {
				stored++
			} else {
				limit := ""
				for _, l := range []string{"workload_quota", "node_quota", "min_free"} {
					if strings.Contains(err.Error(), "store."+l) {
						limit = l
					}
				}
				if status.Code(err) != codes.ResourceExhausted || limit == "" || !strings.Contains(err.Error(), fmt.Sprintf("%s seq %d", w, e.Seq)) {
					t.Fatalf("push %d of %s: %v, want ResourceExhausted naming the workload, seq and the limit", e.Seq, w, err)
				}
				if refused[limit] == 0 {
					t.Logf("refused: %v", err)
				}
				refused[limit]++
				after, err := st.List(w)
				if err != nil {
					t.Fatal(err)
				}
				if len(after) != len(before) {
					t.Errorf("refused push of %s seq %d changed its entries from %d to %d", w, e.Seq, len(before), len(after))
				}
				if tmp := tempFiles(root); len(tmp) != 0 {
					t.Errorf("temporary files after a refused push: %v", tmp)
				}
			}

			// The caps hold after every push: per workload, per node, and
			// the free space (with a little slack for the entries' records
			// and the age headers and tags of the sealed archives).
			const slack = 256 << 10
			total, byDir := usage(t, root)
			for dir, n := range byDir {
				if n > limits.WorkloadQuota+slack {
					t.Errorf("%s holds %d bytes, above workload_quota %d", dir, n, limits.WorkloadQuota)
				}
			}
			if total > limits.NodeQuota+slack {
				t.Errorf("the store holds %d bytes, above node_quota %d", total, limits.NodeQuota)
			}
			var sfs syscall.Statfs_t
			if err := syscall.Statfs(mnt, &sfs); err != nil {
				t.Fatal(err)
			}
			if free := int64(sfs.Bavail) * sfs.Bsize; free < limits.MinFree-slack {
				t.Errorf("%d bytes free on the tmpfs after %d pushes, below min_free %d", free, stored, limits.MinFree)
			}
		}
	}
	t.Logf("stored %d replicas of %d bytes; refused %v", stored, len(archive), refused)
	if refused["workload_quota"] == 0 {
		t.Error("no push was refused for workload_quota")
	}
	if refused["min_free"]+refused["node_quota"] == 0 {
		t.Error("no push was refused for min_free or node_quota")
	}
	if stored == 0 {
		t.Error("nothing was stored")
	}
}
