package capability

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseCPUFlags(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"one processor, duplicates and order", "processor\t: 0\nflags\t\t: sse2 fpu avx2 fpu\n", []string{"avx2", "fpu", "sse2"}},
		{"the intersection of two processors", "processor\t: 0\nflags\t\t: fpu sse2 avx512f\n\nprocessor\t: 1\nflags\t\t: sse2 fpu\n", []string{"fpu", "sse2"}},
		{"other lines that mention flags are not flags", "vmx flags\t: ept vpid\nflags\t\t: fpu\nbugs\t\t: spectre_v1\n", []string{"fpu"}},
		{"no flags line (arm64)", "processor\t: 0\nFeatures\t: fp asimd\n", nil},
		{"empty", "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseCPUFlags([]byte(tc.in)); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The development machine's /proc/cpuinfo, recorded: both processors
// have the same flags, the result is sorted and has no duplicates.
func TestParseCPUFlagsRecorded(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "cpuinfo-2cpu.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got := ParseCPUFlags(b)
	if len(got) < 20 || !slices.Contains(got, "sse2") || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Fatalf("flags = %v", got)
	}
	var first []string
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			first = strings.Fields(v)
			break
		}
	}
	if !slices.Equal(got, NormalFlags(first)) {
		t.Errorf("flags of identical processors = %d flags, want the first processor's %d", len(got), len(NormalFlags(first)))
	}
}

func TestParseCRIUVersion(t *testing.T) {
	cases := map[string]string{
		"Version: 4.2.1\n":                    "4.2.1",
		"Version: 3.17.1\nGitID: v3.17.1-1\n": "3.17.1",
		"criu: command not found\n":           "",
		"":                                    "",
	}
	for in, want := range cases {
		if got := ParseCRIUVersion([]byte(in)); got != want {
			t.Errorf("ParseCRIUVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

// SystemHost asks a real criu-like program; "" skips CRIU.
func TestSystemHostCRIU(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "criu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n[ \"$1\" = --version ] && printf 'Version: 4.2.1\\n'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	v, err := SystemHost{CRIU: fake}.CRIUVersion(context.Background())
	if err != nil || v != "4.2.1" {
		t.Errorf("CRIUVersion = %q, %v", v, err)
	}
	if v, err := (SystemHost{}).CRIUVersion(context.Background()); v != "" || err != nil {
		t.Errorf("without CRIU: %q, %v", v, err)
	}
	if _, err := (SystemHost{CRIU: filepath.Join(dir, "missing")}).CRIUVersion(context.Background()); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing criu: err = %v, want it named", err)
	}
	k, err := SystemHost{}.KernelRelease()
	if err != nil || k == "" {
		t.Errorf("KernelRelease = %q, %v", k, err)
	}
}

func TestSummary(t *testing.T) {
	can := Node{Runtime: Runtime{Name: "containerd", Version: "2.1.9"}, Checkpoint: true, Restore: RestoreCreate,
		Kernel: "6.18.44", CRIU: "4.2.1", CPUFlags: []string{"a", "b", "c"}}
	if got, want := can.Summary(), "containerd 2.1.9, checkpoint yes, restore create, kernel 6.18.44, CRIU 4.2.1, 3 CPU flags"; got != want {
		t.Errorf("Summary = %q\nwant      %q", got, want)
	}
	if got := can.CannotRestore(); got != "" {
		t.Errorf("CannotRestore of a capable node = %q", got)
	}
	cannot := Node{Runtime: Runtime{Name: "containerd", Version: "2.3.4"}, Checkpoint: true, Restore: RestoreNone, RestoreReason: "R", Kernel: "6.1"}
	if got, want := cannot.Summary(), "containerd 2.3.4, checkpoint yes, restore none, kernel 6.1, CRIU unknown, 0 CPU flags: R"; got != want {
		t.Errorf("Summary = %q\nwant      %q", got, want)
	}
	if got := cannot.CannotRestore(); got != "cannot restore: R" {
		t.Errorf("CannotRestore = %q", got)
	}
	off := Node{Runtime: Runtime{Name: "cri-o", Version: "1.36.3"}, CheckpointReason: "ZZ", Restore: RestoreNone, RestoreReason: "ZZ"}
	if got := off.Summary(); !strings.HasPrefix(got, "cri-o 1.36.3, checkpoint no, restore none,") || !strings.HasSuffix(got, ": ZZ") || strings.Count(got, "ZZ") != 1 {
		t.Errorf("Summary = %q, want the shared reason once", got)
	}
	if got := (Node{}).CannotRestore(); got != "cannot restore: unknown" {
		t.Errorf("CannotRestore of the zero node = %q", got)
	}
}
