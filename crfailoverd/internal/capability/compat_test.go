package capability

import (
	"strings"
	"testing"
)

var (
	containerd21 = Runtime{Name: "containerd", Version: "2.1.9"}
	containerd24 = Runtime{Name: "containerd", Version: "2.4.2"}
	crio136      = Runtime{Name: "cri-o", Version: "1.36.3"}
	flagsAVX512  = []string{"avx", "avx2", "avx512f", "sse4_2"}
	flagsAVX2    = []string{"avx", "avx2", "sse4_2"}
)

func TestCompatible(t *testing.T) {
	create := func(rt Runtime, flags ...string) Node {
		return Node{Runtime: rt, Checkpoint: true, Restore: RestoreCreate, CPUFlags: flags}
	}
	native24 := Node{Runtime: containerd24, Checkpoint: true, Restore: RestoreNative, CPUFlags: flagsAVX512}
	off23 := Node{Runtime: Runtime{Name: "containerd", Version: "2.3.7"}, Checkpoint: true, Restore: RestoreNone,
		RestoreReason: "enable_experimental_restore_via_create is off", CPUFlags: flagsAVX512}
	for _, tc := range []struct {
		name string
		node Node
		need Needs
		want string // "" compatible; else a part of why not
	}{
		{"same runtime and flags", create(containerd21, flagsAVX512...), Needs{Runtime: containerd21, CPUFlags: flagsAVX512}, ""},
		{"a superset of the flags", create(containerd21, flagsAVX512...), Needs{Runtime: containerd21, CPUFlags: flagsAVX2}, ""},
		{"a CPU lacking avx512f", create(containerd21, flagsAVX2...), Needs{Runtime: containerd21, CPUFlags: flagsAVX512},
			"its CPU lacks avx512f (a restored process would crash with SIGILL)"},
		{"a CRI-O archive on a containerd node", create(containerd21, flagsAVX512...), Needs{Runtime: crio136},
			"it runs containerd 2.1.9, the checkpoint was taken by cri-o 1.36.3"},
		{"a containerd archive on a CRI-O node", create(crio136, flagsAVX512...), Needs{Runtime: containerd21},
			"it runs cri-o 1.36.3, the checkpoint was taken by containerd 2.1.9"},
		{"containerd 2.4 native node, 2.1 archive", native24, Needs{Runtime: containerd21, CPUFlags: flagsAVX2}, ""},
		{"runtime names compare without case", create(Runtime{Name: "CRI-O", Version: "1.36.3"}), Needs{Runtime: crio136}, ""},
		{"restore turned off", off23, Needs{Runtime: containerd21},
			"its runtime containerd 2.3.7 cannot restore: enable_experimental_restore_via_create is off"},
		{"restore path unknown", Node{Runtime: containerd21}, Needs{}, "cannot restore: no restore path found"},
		{"runtime unknown", Node{Restore: RestoreCreate}, Needs{Runtime: containerd21}, "its runtime is unknown"},
		{"no flags recorded on the node, none needed", create(containerd21), Needs{Runtime: containerd21}, ""},
		{"no flags recorded on the node, some needed", create(containerd21), Needs{Runtime: containerd21, CPUFlags: flagsAVX2},
			"its CPU features are unknown, the checkpoint needs 3 of them"},
		{"a checkpoint recording nothing", create(crio136), Needs{}, ""},
		{"many flags missing are summed up", create(containerd21, "sse"), Needs{CPUFlags: []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}},
			"lacks a, b, c, d, e, f, g, h and 2 more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := Compatible(tc.node, tc.need)
			if tc.want == "" {
				if !ok || why != "" {
					t.Fatalf("Compatible = %t, %q; want compatible", ok, why)
				}
				return
			}
			if ok || !strings.Contains(why, tc.want) {
				t.Fatalf("Compatible = %t, %q; want incompatible saying %q", ok, why, tc.want)
			}
		})
	}
}

func TestFlagsDigest(t *testing.T) {
	a := FlagsDigest([]string{"sse4_2", "avx", "avx2", "avx"})
	if a != FlagsDigest(flagsAVX2) {
		t.Fatalf("order and duplicates change the digest: %s vs %s", a, FlagsDigest(flagsAVX2))
	}
	if len(a) != 32 {
		t.Fatalf("digest %q is not 32 hex digits", a)
	}
	if a == FlagsDigest(flagsAVX512) {
		t.Fatal("two flag sets have one digest")
	}
	// One flag "ab" is not the flags "a" and "b".
	if FlagsDigest([]string{"ab"}) == FlagsDigest([]string{"a", "b"}) {
		t.Fatal("flag boundaries do not count")
	}
	if FlagsDigest(nil) != "" {
		t.Fatal("no flags have a digest")
	}
}
