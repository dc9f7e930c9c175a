package peer

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
)

// Targets picks the r peers (never self) that should hold replicas of
// workload, by rendezvous hashing: each node gets a score from a hash of
// (workload, node) and the highest scores win. A node joining or leaving
// changes a workload's targets only if it is, or becomes, one of them.
// The result is ordered by score, best first, and is shorter than r when
// there are not enough peers. Duplicate and empty names in alive are
// ignored. Every node computes the same answer from the same inputs.
func Targets(workload string, self string, alive []string, r int) []string {
	type candidate struct {
		node  string
		score uint64
	}
	var cs []candidate
	for _, n := range alive {
		if n == "" || n == self || slices.ContainsFunc(cs, func(c candidate) bool { return c.node == n }) {
			continue
		}
		cs = append(cs, candidate{n, score(workload, n)})
	}
	slices.SortFunc(cs, func(a, b candidate) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return strings.Compare(a.node, b.node)
	})
	var out []string
	for _, c := range cs[:min(max(r, 0), len(cs))] {
		out = append(out, c.node)
	}
	return out
}

// score is the rendezvous weight of node for workload: the first 8 bytes
// of sha256(workload NUL node), stable across processes and versions.
func score(workload, node string) uint64 {
	h := sha256.New()
	h.Write([]byte(workload))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return binary.BigEndian.Uint64(h.Sum(nil))
}
