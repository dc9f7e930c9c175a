package peer

import (
	"fmt"
	"slices"
	"testing"
)

func nodes(n int) []string {
	var ns []string
	for i := range n {
		ns = append(ns, fmt.Sprintf("node-%d", i))
	}
	return ns
}

func TestTargetsBasics(t *testing.T) {
	all := []string{"a", "b", "c", "b", ""}
	got := Targets("ns/pod/ctr", "a", all, 5)
	slices.Sort(got)
	if want := []string{"b", "c"}; !slices.Equal(got, want) {
		t.Errorf("Targets = %v, want %v (self, duplicates and empty names left out)", got, want)
	}
	if got := Targets("ns/pod/ctr", "a", all, 0); len(got) != 0 {
		t.Errorf("r = 0: %v", got)
	}
	if got := Targets("ns/pod/ctr", "a", []string{"a"}, 2); len(got) != 0 {
		t.Errorf("no peers: %v", got)
	}
	// The order of alive does not matter.
	ns := nodes(8)
	rev := slices.Clone(ns)
	slices.Reverse(rev)
	if a, b := Targets("ns/x/y", "node-0", ns, 3), Targets("ns/x/y", "node-0", rev, 3); !slices.Equal(a, b) {
		t.Errorf("Targets depends on the order of alive: %v vs %v", a, b)
	}
}

func TestTargetsStable(t *testing.T) {
	ns := nodes(10)
	const r = 2
	for i := range 1000 {
		w := fmt.Sprintf("ns/pod-%d/ctr", i)
		before := Targets(w, "node-0", ns, r)
		for _, gone := range ns[1:] {
			after := Targets(w, "node-0", slices.DeleteFunc(slices.Clone(ns), func(n string) bool { return n == gone }), r)
			if !slices.Contains(before, gone) && !slices.Equal(before, after) {
				t.Fatalf("%s: removing unrelated %s changed targets %v to %v", w, gone, before, after)
			}
			if slices.Contains(before, gone) && (len(after) != r || !slices.Contains(after, otherThan(before, gone))) {
				t.Fatalf("%s: removing target %s: %v -> %v, want the other target kept", w, gone, before, after)
			}
		}
		// A node joining displaces at most one target.
		after := Targets(w, "node-0", append(slices.Clone(ns), "node-new"), r)
		if n := len(slices.DeleteFunc(slices.Clone(after), func(s string) bool { return slices.Contains(before, s) })); n > 1 {
			t.Fatalf("%s: a joining node changed %d targets: %v -> %v", w, n, before, after)
		}
	}
}

func otherThan(pair []string, s string) string {
	if pair[0] == s {
		return pair[1]
	}
	return pair[0]
}

func TestTargetsDistribution(t *testing.T) {
	ns := nodes(8)
	const workloads, r = 4000, 2
	count := map[string]int{}
	for i := range workloads {
		for _, n := range Targets(fmt.Sprintf("ns%d/pod/ctr", i), "node-0", ns, r) {
			count[n]++
		}
	}
	mean := float64(workloads*r) / float64(len(ns)-1)
	for _, n := range ns[1:] {
		if c := float64(count[n]); c < 0.85*mean || c > 1.15*mean {
			t.Errorf("%s holds %v replicas, mean %v: %v", n, c, mean, count)
		}
	}
}
