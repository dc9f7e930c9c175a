package nativerestore

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// The registration goes into the container as an extension (as
// WithContainerExtension marshals it) and comes back whole: the sandbox's
// annotations with the epoch, which a label could not hold past 4 KiB.
func TestRegistrationExtensionRoundTrip(t *testing.T) {
	big := make([]byte, 8<<10)
	for i := range big {
		big[i] = 'x'
	}
	reg := restorecfg.Config{
		Sandbox: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "counter", Namespace: "default", Uid: "u"},
			Annotations: map[string]string{"crfailoverd.io/epoch": "4", "big": string(big)}},
		Container: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}, Image: &runtimeapi.ImageSpec{Image: "localhost:5000/counter"}},
	}
	ext, err := registrationExtension(reg)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := typeurl.MarshalAny(ext) // what WithContainerExtension does
	if err != nil {
		t.Fatal(err)
	}
	got, err := registrationOf(map[string]typeurl.Any{ExtensionRegistration: stored})
	if err != nil {
		t.Fatal(err)
	}
	if got.Sandbox.GetAnnotations()["crfailoverd.io/epoch"] != "4" || len(got.Sandbox.GetAnnotations()["big"]) != len(big) ||
		got.Container.GetImage().GetImage() != "localhost:5000/counter" || got.Sandbox.GetMetadata().GetUid() != "u" {
		t.Errorf("registration back from the extension: %v", got)
	}
	if _, err := registrationOf(nil); !errors.Is(err, ErrNoRegistration) {
		t.Errorf("no extension: %v, want ErrNoRegistration", err)
	}
	other, _ := typeurl.MarshalAny(&runtimeapi.ImageSpec{Image: "x"})
	if _, err := registrationOf(map[string]typeurl.Any{ExtensionRegistration: other}); err == nil {
		t.Error("an extension of another type was taken for a registration")
	}
}

func TestCgroupsPath(t *testing.T) {
	withParent := func(p string) restorecfg.Config {
		return restorecfg.Config{Sandbox: &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: p}}}
	}
	for _, tc := range []struct {
		parent string
		reg    restorecfg.Config
		want   string
	}{
		{"/crfailoverd", restorecfg.Config{}, "/crfailoverd/c1"},
		{"/crfailoverd/", withParent(""), "/crfailoverd/c1"},
		{"/crfailoverd", withParent("/crfbed/n1/podu1"), "/crfbed/n1/podu1/c1"},
		{"/crfailoverd", withParent("kubepods-besteffort.slice"), "/crfailoverd/c1"}, // a systemd slice is not a cgroupfs path
	} {
		if got := cgroupsPath(tc.parent, tc.reg, "c1"); got != tc.want {
			t.Errorf("cgroupsPath(%q, %q) = %q, want %q", tc.parent, tc.reg.Sandbox.GetLinux().GetCgroupParent(), got, tc.want)
		}
	}
}

// The archive holds the work directory's files and directories by
// relative name, is 0600, never replaces a file, and refuses a link.
func TestWriteArchive(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "work", "checkpoint"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "work", "checkpoint", "pages-1.img"), []byte("pages"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "work", "spec.dump"), []byte("{}"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "work", "rootfs-diff.tar"), []byte("diff"), 0o600))
	loc := filepath.Join(dir, "out.tar")
	n, err := writeArchive(context.Background(), filepath.Join(dir, "work"), loc)
	must(err)
	fi, err := os.Stat(loc)
	must(err)
	if fi.Size() != n || fi.Mode().Perm() != 0o600 {
		t.Errorf("archive of %d bytes, mode %v; reported %d bytes", fi.Size(), fi.Mode().Perm(), n)
	}
	f, err := os.Open(loc)
	must(err)
	defer f.Close()
	var names []string
	contents := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err)
		names = append(names, h.Name)
		b, _ := io.ReadAll(tr)
		contents[h.Name] = string(b)
	}
	slices.Sort(names)
	want := []string{"checkpoint/", "checkpoint/pages-1.img", "rootfs-diff.tar", "spec.dump"}
	if !slices.Equal(names, want) || contents["checkpoint/pages-1.img"] != "pages" {
		t.Errorf("members %v (want %v), contents %v", names, want, contents)
	}
	// Extraction (what Restore does with it) takes it.
	d, err := extract(context.Background(), loc, filepath.Join(dir, "x"), Options{}.Limits)
	must(err)
	if !d.RootfsDiff {
		t.Error("extract does not find the rootfs diff of a written archive")
	}

	if _, err := writeArchive(context.Background(), filepath.Join(dir, "work"), loc); err == nil {
		t.Error("an existing archive was overwritten")
	}
	must(os.Symlink("/etc/passwd", filepath.Join(dir, "work", "link")))
	bad := filepath.Join(dir, "bad.tar")
	if _, err := writeArchive(context.Background(), filepath.Join(dir, "work"), bad); err == nil {
		t.Error("a symbolic link went into the archive")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a refused archive was left behind: %v", err)
	}
}
