package capability_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/capability"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/cri"
)

// recorded is one runtime's answers, as in testdata (see its README).
type recorded struct {
	Name            string            `json:"runtime_name"`
	Version         string            `json:"runtime_version"`
	RestorePodError string            `json:"restore_pod_error"`
	Info            map[string]string `json:"info"`
}

// fakeRuntime answers as a recorded runtime does.
type fakeRuntime struct {
	name, version string
	versionErr    error
	info          map[string]string
	statusErr     error
	restorePod    bool
	probeErr      error
}

func (f fakeRuntime) RuntimeVersion(context.Context) (string, string, error) {
	return f.name, f.version, f.versionErr
}

func (f fakeRuntime) CheckpointConfig(context.Context) (capability.RuntimeConfig, error) {
	if f.statusErr != nil {
		return capability.RuntimeConfig{}, f.statusErr
	}
	c, err := cri.ParseCheckpointConfig(f.info)
	return capability.RuntimeConfig(c), err
}

func (f fakeRuntime) RestorePodImplemented(context.Context) (bool, error) {
	return f.restorePod, f.probeErr
}

func load(t *testing.T, file string) fakeRuntime {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	var r recorded
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// What cri.Client.RestorePodImplemented makes of the recorded answer.
	implemented := !strings.Contains(r.RestorePodError, "code = Unimplemented")
	return fakeRuntime{name: r.Name, version: r.Version, info: r.Info, restorePod: implemented}
}

type fakeHost struct {
	kernel    string
	cpuinfo   []byte
	criu      string
	kernelErr error
	criuErr   error
}

func (h fakeHost) KernelRelease() (string, error)                  { return h.kernel, h.kernelErr }
func (h fakeHost) CPUInfo() ([]byte, error)                        { return h.cpuinfo, nil }
func (h fakeHost) CRIUVersion(ctx context.Context) (string, error) { return h.criu, h.criuErr }

func TestDetectRecordedRuntimes(t *testing.T) {
	cases := []struct {
		name          string
		file          string
		edit          func(*fakeRuntime)
		native        bool
		kubelet       bool
		wantRuntime   capability.Runtime
		wantCkpt      bool
		wantRestore   capability.RestorePath
		reasonHas     []string // in RestoreReason (all of them)
		ckptReasonHas string
	}{
		{name: "containerd 2.1.9 restores via create", file: "containerd-2.1.9.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.1.9"}, wantCkpt: true, wantRestore: capability.RestoreCreate},
		{name: "containerd 2.3.4 with restore via create on", file: "containerd-2.3.4-restore-on.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.3.4"}, wantCkpt: true, wantRestore: capability.RestoreCreate},
		{name: "containerd 2.3.4 with restore via create off (default)", file: "containerd-2.3.4-restore-off.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.3.4"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{`[plugins."io.containerd.cri.v1.runtime"] enable_experimental_restore_via_create = true`}},
		{name: "containerd 2.3.7 with restore via create on (recorded)", file: "containerd-2.3.7-restore-on.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.3.7"}, wantCkpt: true, wantRestore: capability.RestoreCreate},
		{name: "containerd 2.3.7 with restore via create off (recorded)", file: "containerd-2.3.7-restore-off.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.3.7"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{`[plugins."io.containerd.cri.v1.runtime"] enable_experimental_restore_via_create = true`}},
		{name: "containerd 2.3.4, configuration unreadable", file: "containerd-2.3.4-restore-on.json",
			edit:        func(f *fakeRuntime) { f.statusErr = errors.New("CRI Status: deadline exceeded") },
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.3.4"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{"cannot tell", "deadline exceeded"}},
		{name: "containerd 2.2.3 predates the option: create", file: "containerd-2.1.9.json",
			edit:        func(f *fakeRuntime) { f.version = "2.2.3" },
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.2.3"}, wantCkpt: true, wantRestore: capability.RestoreCreate},
		{name: "containerd 2.4.2 without the native path", file: "containerd-2.4.2.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{"containerd 2.4 removed restore via CreateContainer"}},
		{name: "containerd 2.4.2 with the native path, no kubelet", file: "containerd-2.4.2.json", native: true,
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, wantCkpt: true, wantRestore: capability.RestoreNative},
		{name: "containerd 2.4.2 with the native path on a kubelet node", file: "containerd-2.4.2.json", native: true, kubelet: true,
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{"containerd 2.4 removed restore via CreateContainer", "without kubelet"}},
		{name: "containerd 2.4.2 with enable_criu = false", file: "containerd-2.4.2.json", native: true,
			edit: func(f *fakeRuntime) {
				f.info = map[string]string{"config": strings.Replace(f.info["config"], `"enableCRIU":true`, `"enableCRIU":false`, 1)}
			},
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{"enable_criu = true"}, ckptReasonHas: "enable_criu = false"},
		{name: "containerd answering RestorePod", file: "containerd-2.4.2.json",
			edit:        func(f *fakeRuntime) { f.restorePod = true },
			wantRuntime: capability.Runtime{Name: "containerd", Version: "2.4.2"}, wantCkpt: true, wantRestore: capability.RestorePod},
		{name: "containerd 1.6 (Debian 12) cannot checkpoint", file: "containerd-1.6.20.json",
			wantRuntime: capability.Runtime{Name: "containerd", Version: "1.6.20~ds1"}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{"no CRI checkpoint or restore"}, ckptReasonHas: "no CRI checkpoint"},
		{name: "CRI-O 1.36.3 restores via create", file: "crio-1.36.3.json",
			wantRuntime: capability.Runtime{Name: "cri-o", Version: "1.36.3"}, wantCkpt: true, wantRestore: capability.RestoreCreate},
		{name: "CRI-O 1.36.3 with CRIU support off", file: "crio-1.36.3-criu-off.json",
			wantRuntime: capability.Runtime{Name: "cri-o", Version: "1.36.3"}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{"[crio.runtime] enable_criu_support = true"}, ckptReasonHas: "enable_criu_support = false"},
		{name: "CRI-O reporting checkpoint_only", file: "crio-1.36.3.json",
			edit: func(f *fakeRuntime) {
				f.version = "1.37.0"
				f.info = map[string]string{"config": `{"crio":{"EnableCriuSupport":true,"ContainerLevelEnabled":"checkpoint_only"}}`}
			},
			wantRuntime: capability.Runtime{Name: "cri-o", Version: "1.37.0"}, wantCkpt: true, wantRestore: capability.RestoreNone,
			reasonHas: []string{`[crio.checkpoint_restore] container_level_enabled = "checkpoint_restore"`}},
		{name: "CRI-O reporting level none", file: "crio-1.36.3.json",
			edit: func(f *fakeRuntime) {
				f.info = map[string]string{"config": `{"crio":{"EnableCriuSupport":true,"ContainerLevelEnabled":"none"}}`}
			},
			wantRuntime: capability.Runtime{Name: "cri-o", Version: "1.36.3"}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{`container_level_enabled = "checkpoint_restore"`}, ckptReasonHas: `"none"`},
		{name: "unknown runtime", file: "crio-1.36.3.json",
			edit:        func(f *fakeRuntime) { f.name, f.version = "kata", "3.0" },
			wantRuntime: capability.Runtime{Name: "kata", Version: "3.0"}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{`unknown runtime "kata"`}},
		{name: "runtime unreachable", file: "containerd-2.1.9.json",
			edit:        func(f *fakeRuntime) { f.versionErr = errors.New("connection refused") },
			wantRuntime: capability.Runtime{}, wantCkpt: false, wantRestore: capability.RestoreNone,
			reasonHas: []string{"runtime unreachable", "connection refused"}, ckptReasonHas: "connection refused"},
	}
	host := fakeHost{kernel: "6.18.44", cpuinfo: []byte("processor\t: 0\nflags\t\t: sse2 avx2 fpu\n"), criu: "4.2.1"}
	at := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := load(t, tc.file)
			if tc.edit != nil {
				tc.edit(&rt)
			}
			n, err := capability.Detect(context.Background(), capability.Deps{Runtime: rt, Host: host,
				NativeRestore: tc.native, Kubelet: tc.kubelet, Now: func() time.Time { return at }})
			if (rt.versionErr != nil || rt.statusErr != nil) != (err != nil) {
				t.Errorf("Detect error = %v", err)
			}
			if n.Runtime != tc.wantRuntime {
				t.Errorf("runtime = %+v, want %+v", n.Runtime, tc.wantRuntime)
			}
			if n.Checkpoint != tc.wantCkpt {
				t.Errorf("checkpoint = %v (%s), want %v", n.Checkpoint, n.CheckpointReason, tc.wantCkpt)
			}
			if n.Checkpoint && n.CheckpointReason != "" {
				t.Errorf("checkpoint reason %q on a node that checkpoints", n.CheckpointReason)
			}
			if !strings.Contains(n.CheckpointReason, tc.ckptReasonHas) || (!n.Checkpoint && n.CheckpointReason == "") {
				t.Errorf("checkpoint reason = %q, want it to say %q", n.CheckpointReason, tc.ckptReasonHas)
			}
			if n.Restore != tc.wantRestore {
				t.Errorf("restore = %q (%s), want %q", n.Restore, n.RestoreReason, tc.wantRestore)
			}
			if n.CanRestore() != (n.RestoreReason == "") {
				t.Errorf("restore %q with reason %q: a reason goes with none and only with none", n.Restore, n.RestoreReason)
			}
			for _, s := range tc.reasonHas {
				if !strings.Contains(n.RestoreReason, s) {
					t.Errorf("restore reason = %q, want it to contain %q", n.RestoreReason, s)
				}
			}
			if n.Kernel != "6.18.44" || n.CRIU != "4.2.1" || !slices.Equal(n.CPUFlags, []string{"avx2", "fpu", "sse2"}) || !n.Checked.Equal(at) {
				t.Errorf("host facts = kernel %q criu %q flags %v checked %v", n.Kernel, n.CRIU, n.CPUFlags, n.Checked)
			}
		})
	}
}

// A host fact that cannot be found out is reported, and the rest of the
// node still is.
func TestDetectHostErrors(t *testing.T) {
	rt := load(t, "containerd-2.1.9.json")
	n, err := capability.Detect(context.Background(), capability.Deps{Runtime: rt,
		Host: fakeHost{kernelErr: errors.New("uname refused"), criuErr: errors.New("criu: exec format error"), cpuinfo: []byte("flags: a b\n")}})
	if err == nil || !strings.Contains(err.Error(), "uname refused") || !strings.Contains(err.Error(), "exec format error") {
		t.Fatalf("err = %v, want both host failures named", err)
	}
	if n.Restore != capability.RestoreCreate || !n.Checkpoint || !slices.Equal(n.CPUFlags, []string{"a", "b"}) {
		t.Errorf("node = %+v, want the runtime's capabilities and flags despite the host errors", n)
	}
	if n.Checked.IsZero() {
		t.Error("Checked not set")
	}
}

// A probe of RestorePod that fails (not Unimplemented: the runtime did not
// answer) is named, and the node keeps its per-container path.
func TestDetectRestorePodProbeError(t *testing.T) {
	rt := load(t, "containerd-2.1.9.json")
	rt.probeErr = errors.New("RestorePod (probe): unavailable")
	n, err := capability.Detect(context.Background(), capability.Deps{Runtime: rt, Host: fakeHost{}})
	if err == nil || !strings.Contains(err.Error(), "RestorePod") {
		t.Errorf("err = %v", err)
	}
	if n.Restore != capability.RestoreCreate {
		t.Errorf("restore = %q, want create", n.Restore)
	}
}
