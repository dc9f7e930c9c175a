package cri

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestMissingMounts(t *testing.T) {
	dumped := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: "/run/x/resolv.conf"},
		{Destination: "/etc/hosts", Type: "bind", Source: "/etc/hosts", Options: []string{"rw", "bind"}},
		{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"ro", "rbind"}},
		{Destination: "/given", Type: "bind", Source: "/srv/given"},
		{Destination: "/gone", Type: "bind", Source: "/srv/gone"},
		{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs"},
	}
	have := []*runtimeapi.Mount{{ContainerPath: "/given", HostPath: "/elsewhere"}}
	exists := func(p string) bool { return p != "/srv/gone" }
	got := missingMounts(dumped, have, exists)
	want := []*runtimeapi.Mount{
		{ContainerPath: "/etc/hosts", HostPath: "/etc/hosts"},
		{ContainerPath: "/data", HostPath: "/srv/data", Readonly: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].ContainerPath != want[i].ContainerPath || got[i].HostPath != want[i].HostPath || got[i].Readonly != want[i].Readonly {
			t.Errorf("mount %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if len(have) != 1 {
		t.Errorf("the request's mounts were changed: %v", have)
	}
}

func TestMakeLogDir(t *testing.T) {
	dir := t.TempDir()
	sb := &runtimeapi.PodSandboxConfig{LogDirectory: filepath.Join(dir, "pods", "default_counter_u")}
	if err := makeLogDir(sb, &runtimeapi.ContainerConfig{LogPath: "counter/0.log"}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(sb.LogDirectory, "counter")); err != nil || !st.IsDir() {
		t.Fatalf("log directory not made: %v", err)
	}
	// An absolute or escaping log path: only the sandbox's directory.
	sb.LogDirectory = filepath.Join(dir, "other")
	if err := makeLogDir(sb, &runtimeapi.ContainerConfig{LogPath: "../../x/0.log"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Errorf("a log path outside the sandbox's directory was created: %v", err)
	}
	if _, err := os.Stat(sb.LogDirectory); err != nil {
		t.Error(err)
	}
	// No log directory: nothing to do.
	if err := makeLogDir(&runtimeapi.PodSandboxConfig{}, &runtimeapi.ContainerConfig{LogPath: "c/0.log"}); err != nil {
		t.Error(err)
	}
}

// writeArchive writes a checkpoint archive with the given members.
func writeArchive(t *testing.T, members map[string]string, order []string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ckpt.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, name := range order {
		body := members[name]
		hdr := &tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg}
		if name[len(name)-1] == '/' {
			hdr = &tar.Header{Name: name, Mode: 0o700, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func crioArchive(t *testing.T) string {
	spec, _ := json.Marshal(specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/hosts", Type: "bind", Source: "/etc/hosts", Options: []string{"rw", "bind"}},
	}})
	return writeArchive(t, map[string]string{
		"config.dump":          `{"id":"abc","name":"k8s_counter","rootfsImageName":"localhost:5000/counter:latest","rootfsImageRef":"196b2f"}`,
		"spec.dump":            string(spec),
		"checkpoint/":          "",
		"checkpoint/pages.img": "pages",
	}, []string{"config.dump", "spec.dump", "checkpoint/", "checkpoint/pages.img"})
}

func TestReadRestoreMetadata(t *testing.T) {
	md, err := readRestoreMetadata(crioArchive(t))
	if err != nil {
		t.Fatal(err)
	}
	if md.image != "localhost:5000/counter:latest" || len(md.mounts) != 2 || md.mounts[1].Destination != "/etc/hosts" {
		t.Errorf("got %+v", md)
	}
	if _, err := readRestoreMetadata(writeArchive(t, map[string]string{"spec.dump": "{}"}, []string{"spec.dump"})); err == nil {
		t.Error("an archive without config.dump was accepted")
	}
	if _, err := readRestoreMetadata(writeArchive(t, map[string]string{"config.dump": "{", "spec.dump": "{}"}, []string{"config.dump", "spec.dump"})); err == nil {
		t.Error("a corrupt config.dump was accepted")
	}
}

// fakeRuntime answers the CRI calls of a restore and records them.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	name string
	have bool // the base image is present

	mu      sync.Mutex
	calls   []string
	created *runtimeapi.ContainerConfig
	// holder, when set, holds the name of the container CreateContainer
	// is asked for, until RemoveContainer removes it; holdMsg is the
	// runtime's refusal (%s: the holder's ID; "" names no ID).
	holder  *runtimeapi.Container
	holdMsg string
	// sandboxes are listed by ListPodSandbox (nil: Unimplemented);
	// sandboxReady is every sandbox's state; startAfter, when > 0, starts
	// the holder at that ContainerStatus call.
	sandboxes    []*runtimeapi.PodSandbox
	sandboxReady bool
	startAfter   int
	statusCalls  int
}

func (f *fakeRuntime) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.record("ListPodSandbox")
	if f.sandboxes == nil {
		return nil, status.Error(codes.Unimplemented, "no listing")
	}
	return &runtimeapi.ListPodSandboxResponse{Items: f.sandboxes}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.record("PodSandboxStatus " + r.PodSandboxId)
	st := runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	if f.sandboxReady {
		st = runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{Id: r.PodSandboxId, State: st}}, nil
}

func (f *fakeRuntime) ListContainers(_ context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.record("ListContainers")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holder == nil || (r.Filter.GetPodSandboxId() != "" && r.Filter.GetPodSandboxId() != f.holder.PodSandboxId) ||
		(r.Filter.GetId() != "" && r.Filter.GetId() != f.holder.Id) {
		return &runtimeapi.ListContainersResponse{}, nil
	}
	return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{f.holder}}, nil
}

func (f *fakeRuntime) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	f.record("ContainerStatus " + r.ContainerId)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holder == nil || f.holder.Id != r.ContainerId {
		return nil, status.Errorf(codes.NotFound, "container %q not found", r.ContainerId)
	}
	if f.statusCalls++; f.startAfter > 0 && f.statusCalls >= f.startAfter {
		f.holder.State = runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: f.holder.Id, Metadata: f.holder.Metadata, State: f.holder.State}}, nil
}

func (f *fakeRuntime) RemoveContainer(_ context.Context, r *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	f.record("RemoveContainer " + r.ContainerId)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holder != nil && f.holder.Id == r.ContainerId {
		f.holder = nil
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (f *fakeRuntime) StopPodSandbox(context.Context, *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	f.record("StopPodSandbox")
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (f *fakeRuntime) RemovePodSandbox(context.Context, *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	f.record("RemovePodSandbox")
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (f *fakeRuntime) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	f.record("Version")
	return &runtimeapi.VersionResponse{RuntimeName: f.name, RuntimeVersion: "1"}, nil
}

func (f *fakeRuntime) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	f.record("ImageStatus " + r.Image.Image)
	if f.have {
		return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: "x"}}, nil
	}
	return &runtimeapi.ImageStatusResponse{}, nil
}

func (f *fakeRuntime) PullImage(_ context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	f.record("PullImage " + r.Image.Image)
	return &runtimeapi.PullImageResponse{ImageRef: "x"}, nil
}

func (f *fakeRuntime) RunPodSandbox(context.Context, *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	f.record("RunPodSandbox")
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: "sb"}, nil
}

func (f *fakeRuntime) CreateContainer(_ context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	f.record("CreateContainer")
	f.mu.Lock()
	defer f.mu.Unlock()
	if h := f.holder; h != nil && h.Metadata.GetName() == r.Config.GetMetadata().GetName() && h.Metadata.GetAttempt() == r.Config.GetMetadata().GetAttempt() {
		msg := f.holdMsg
		if strings.Contains(msg, "%s") {
			msg = fmt.Sprintf(msg, h.Id)
		}
		return nil, status.Error(codes.Unknown, msg)
	}
	f.created = r.Config
	return &runtimeapi.CreateContainerResponse{ContainerId: "ctr"}, nil
}

func (f *fakeRuntime) StartContainer(context.Context, *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	f.record("StartContainer")
	return &runtimeapi.StartContainerResponse{}, nil
}

func serveFake(t *testing.T, f *fakeRuntime) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	runtimeapi.RegisterImageServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRestoreContainerPerRuntime(t *testing.T) {
	archive := crioArchive(t)
	for _, tc := range []struct {
		name  string
		have  bool
		calls []string
		mount bool
	}{
		{"cri-o", false, []string{"Version", "ImageStatus localhost:5000/counter:latest", "PullImage localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "StartContainer"}, true},
		{"cri-o", true, []string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "StartContainer"}, true},
		// containerd pulls the base image and sets up the mounts itself.
		{"containerd", false, []string{"Version", "RunPodSandbox", "CreateContainer", "StartContainer"}, false},
	} {
		f := &fakeRuntime{name: tc.name, have: tc.have}
		c := serveFake(t, f)
		logDir := filepath.Join(t.TempDir(), "pods", "p")
		sb := &runtimeapi.PodSandboxConfig{LogDirectory: logDir}
		ctr := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}, LogPath: "counter/0.log"}
		sbID, ctrID, err := c.RestoreContainer(context.Background(), sb, ctr, archive)
		if err != nil || sbID != "sb" || ctrID != "ctr" {
			t.Fatalf("%s: %q %q %v", tc.name, sbID, ctrID, err)
		}
		if !slices.Equal(f.calls, tc.calls) {
			t.Errorf("%s (image present %v): calls %v, want %v", tc.name, tc.have, f.calls, tc.calls)
		}
		hasHosts := slices.ContainsFunc(f.created.Mounts, func(m *runtimeapi.Mount) bool { return m.ContainerPath == "/etc/hosts" })
		if hasHosts != tc.mount {
			t.Errorf("%s: /etc/hosts mount in the request: %v, want %v (%v)", tc.name, hasHosts, tc.mount, f.created.Mounts)
		}
		if f.created.Image.GetImage() != archive {
			t.Errorf("%s: created from %q, want the archive", tc.name, f.created.Image.GetImage())
		}
		if len(ctr.Mounts) != 0 || ctr.Image != nil {
			t.Errorf("%s: the caller's container config was changed: %v", tc.name, ctr)
		}
		if _, err := os.Stat(filepath.Join(logDir, "counter")); err != nil {
			t.Errorf("%s: log directory: %v", tc.name, err)
		}
	}
}

func TestNamespaceOptionsFromSpec(t *testing.T) {
	// A CRI-O container of a host-network pod with its own PID namespace.
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace, Path: "/run/ns/ipc"}, {Type: specs.MountNamespace},
	}}}
	got := namespaceOptions(spec)
	if got.Network != runtimeapi.NamespaceMode_NODE || got.Pid != runtimeapi.NamespaceMode_CONTAINER || got.Ipc != runtimeapi.NamespaceMode_POD {
		t.Errorf("got %v", got)
	}
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}, {Type: specs.NetworkNamespace, Path: "/run/ns/net"}}
	got = namespaceOptions(spec)
	if got.Network != runtimeapi.NamespaceMode_POD || got.Pid != runtimeapi.NamespaceMode_POD || got.Ipc != runtimeapi.NamespaceMode_NODE {
		t.Errorf("got %v", got)
	}
	if namespaceOptions(&specs.Spec{}) != nil {
		t.Error("a spec without linux gave namespace options")
	}
	info := map[string]string{"info": `{"sandboxID":"s","runtimeSpec":{"annotations":{"io.kubernetes.cri-o.LogPath":"/x/pods/p/s.log"}}}`}
	if s := specFromInfo(info); s == nil || s.Annotations[crioLogPath] != "/x/pods/p/s.log" {
		t.Errorf("specFromInfo: %v", s)
	}
	if specFromInfo(map[string]string{"info": "not json"}) != nil || specFromInfo(nil) != nil {
		t.Error("specFromInfo of no spec is not nil")
	}
}

// The runtimes' refusals of a taken container name, as they word them.
const (
	containerdHeld = `failed to reserve container name "counter_p_default_uid_0": name "counter_p_default_uid_0" is reserved for "%s"`
	crioHeld       = `the container name "k8s_counter_p_default_uid_0" is already in use by %s. You have to remove that container to be able to reuse that name: that name is already in use`
)

func TestRestoreContainerNameHeld(t *testing.T) {
	archive := crioArchive(t)
	exited, running := runtimeapi.ContainerState_CONTAINER_EXITED, runtimeapi.ContainerState_CONTAINER_RUNNING
	created := runtimeapi.ContainerState_CONTAINER_CREATED
	noID := `the container name "k8s_counter_p_default_uid_0" is already in use`
	earlier := []*runtimeapi.PodSandbox{{Id: "other", Metadata: &runtimeapi.PodSandboxMetadata{Name: "q", Namespace: "default"}},
		{Id: "earlier", Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default", Attempt: 0}}}
	// A recreated pod of the same name (another UID) is another pod: its
	// container is no holder of this pod's name.
	recreated := []*runtimeapi.PodSandbox{{Id: "earlier", Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default", Uid: "another-pod"}}}
	for _, tc := range []struct {
		name    string
		runtime string
		msg     string
		state   runtimeapi.ContainerState
		holder  string // the holder's metadata name ("": the restored container's)
		calls   []string
		ok      bool
		running bool // the refusal is ErrNameHeldByRunning
		// in: the holder's sandbox ("": sb, the new one); sandboxes: what
		// ListPodSandbox lists; ready: sandboxes are ready; startAfter:
		// the holder starts at that status read; refusal: the error says it.
		in         string
		sandboxes  []*runtimeapi.PodSandbox
		ready      bool
		startAfter int
		refusal    string
	}{
		{"created holder, sandbox ready: refused", "containerd", containerdHeld, created, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "ListContainers", "PodSandboxStatus sb", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "", nil, true, 0, "its sandbox sb is ready"},
		{"created holder started between the reads: refused", "containerd", containerdHeld, created, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "ListContainers", "PodSandboxStatus sb", "ContainerStatus old", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "", nil, false, 2, "is now CONTAINER_RUNNING"},
		{"unknown holder: refused, named", "containerd", containerdHeld, runtimeapi.ContainerState_CONTAINER_UNKNOWN, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "", nil, false, 0, "container old holding the name \"counter\" (attempt 0): refused: its state is CONTAINER_UNKNOWN"},
		{"holder not named: found in an earlier sandbox of the pod", "cri-o", noID, exited, "",
			[]string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "ListPodSandbox", "ListContainers", "ListContainers",
				"ContainerStatus old", "RemoveContainer old", "CreateContainer", "StartContainer"},
			true, false, "earlier", earlier, false, 0, ""},
		{"holder not named: a same-named container of another pod (UID) is left alone", "cri-o", noID, exited, "",
			[]string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "ListPodSandbox", "ListContainers", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "earlier", recreated, false, 0, "none listed"},
		{"holder not named, sandboxes not listed, not in the new one", "cri-o", noID, exited, "",
			[]string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "ListPodSandbox", "ListContainers", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "earlier", nil, false, 0, "none listed"},
		{"CRIU's address already in use is no name conflict", "containerd", "criu failed: bind: Address already in use", exited, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "StopPodSandbox", "RemovePodSandbox"},
			false, false, "", nil, false, 0, "Address already in use"},
		{"containerd exited holder", "containerd", containerdHeld, exited, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "RemoveContainer old", "CreateContainer", "StartContainer"}, true, false, "", nil, false, 0, ""},
		{"cri-o exited holder", "cri-o", crioHeld, exited, "",
			[]string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "RemoveContainer old", "CreateContainer", "StartContainer"}, true, false, "", nil, false, 0, ""},
		{"created (never started) holder, sandbox not ready", "containerd", containerdHeld, created, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "ListContainers", "PodSandboxStatus sb", "ContainerStatus old", "RemoveContainer old", "CreateContainer", "StartContainer"}, true, false,
			"", nil, false, 0, ""},
		{"holder not named in the refusal: found in the sandbox", "containerd", noID, exited, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ListContainers", "ContainerStatus old", "RemoveContainer old", "CreateContainer", "StartContainer"}, true, false, "", nil, false, 0, ""},
		{"running holder: refused, not removed", "containerd", containerdHeld, running, "",
			[]string{"Version", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "StopPodSandbox", "RemovePodSandbox"}, false, true, "", nil, false, 0, ""},
		{"cri-o running holder: refused", "cri-o", crioHeld, running, "",
			[]string{"Version", "ImageStatus localhost:5000/counter:latest", "RunPodSandbox", "CreateContainer", "ContainerStatus old", "StopPodSandbox", "RemovePodSandbox"}, false, true, "", nil, false, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in == "" {
				in = "sb"
			}
			f := &fakeRuntime{name: tc.runtime, have: true, holdMsg: tc.msg, sandboxes: tc.sandboxes, sandboxReady: tc.ready, startAfter: tc.startAfter,
				holder: &runtimeapi.Container{Id: "old", PodSandboxId: in, State: tc.state,
					Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}}}
			c := serveFake(t, f)
			sb := &runtimeapi.PodSandboxConfig{LogDirectory: filepath.Join(t.TempDir(), "pods", "p")}
			if tc.in != "" {
				sb.Metadata = &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default", Attempt: 1}
			}
			ctr := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}, LogPath: "counter/0.log"}
			sbID, ctrID, err := c.RestoreContainer(context.Background(), sb, ctr, archive)
			switch {
			case tc.ok && (err != nil || sbID != "sb" || ctrID != "ctr"):
				t.Fatalf("restore: %q %q %v", sbID, ctrID, err)
			case !tc.ok && err == nil:
				t.Fatalf("restore over a %s holder succeeded", tc.state)
			}
			if tc.refusal != "" && (err == nil || !strings.Contains(err.Error(), tc.refusal)) {
				t.Errorf("error %v does not say %q", err, tc.refusal)
			}
			if got := errors.Is(err, ErrNameHeldByRunning); got != tc.running {
				t.Errorf("error %v: ErrNameHeldByRunning %v, want %v", err, got, tc.running)
			}
			if tc.running && !strings.Contains(err.Error(), "old") {
				t.Errorf("the refusal does not name the running holder: %v", err)
			}
			if !slices.Equal(f.calls, tc.calls) {
				t.Errorf("calls\n%v\nwant\n%v", f.calls, tc.calls)
			}
			if removed := f.holder == nil; removed != tc.ok {
				t.Errorf("holder removed: %v, want %v", removed, tc.ok)
			}
		})
	}
}

// A holder the refusal names but whose metadata is of another container
// (a misread ID) is not removed.
func TestFreeNameRefusesAnotherContainer(t *testing.T) {
	f := &fakeRuntime{name: "containerd",
		holder: &runtimeapi.Container{Id: "old", PodSandboxId: "sb", State: runtimeapi.ContainerState_CONTAINER_EXITED,
			Metadata: &runtimeapi.ContainerMetadata{Name: "counter"}}}
	c := serveFake(t, f)
	for _, md := range []*runtimeapi.ContainerMetadata{{Name: "other"}, {Name: "counter", Attempt: 1}} {
		err := c.freeName(context.Background(), &runtimeapi.PodSandboxConfig{}, "sb", &runtimeapi.ContainerConfig{Metadata: md}, "old")
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("freeName for %v: %v, want a refusal", md, err)
		}
	}
	if f.holder == nil {
		t.Fatal("a container of another name or attempt was removed")
	}
}

func TestNameConflict(t *testing.T) {
	for _, tc := range []struct {
		err    error
		holder string
		ok     bool
	}{
		{status.Error(codes.Unknown, fmt.Sprintf(containerdHeld, "0123abcd")), "0123abcd", true},
		{status.Error(codes.Unknown, fmt.Sprintf(crioHeld, "0123abcd")), "0123abcd", true},
		{status.Error(codes.AlreadyExists, "exists"), "", true},
		{status.Error(codes.Unknown, "image not known"), "", false},
		{status.Error(codes.Unknown, "criu: restore failed: bind: Address already in use"), "", false},
		{status.Error(codes.Unknown, "that name is already in use"), "", false},
		{status.Error(codes.Unknown, `the container name "k8s_c_p_ns_uid_0" is already in use`), "", true},
		{nil, "", false},
	} {
		holder, ok := nameConflict(tc.err)
		if holder != tc.holder || ok != tc.ok {
			t.Errorf("nameConflict(%v) = %q %v, want %q %v", tc.err, holder, ok, tc.holder, tc.ok)
		}
	}
}
