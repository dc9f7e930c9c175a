package cri

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// statusRuntime answers Version, Status and RestorePod as a recorded
// runtime did.
type statusRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	name, version string
	info          map[string]string
	restorePod    codes.Code  // what RestorePod answers (Unimplemented: the embedded default)
	verbose       atomic.Bool // Status was asked verbose
}

func (f *statusRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: f.name, RuntimeVersion: f.version}, nil
}

func (f *statusRuntime) Status(_ context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	f.verbose.Store(r.Verbose)
	resp := &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{}}
	if r.Verbose {
		resp.Info = f.info
	}
	return resp, nil
}

func (f *statusRuntime) RestorePod(ctx context.Context, r *runtimeapi.RestorePodRequest) (*runtimeapi.RestorePodResponse, error) {
	if f.restorePod == codes.Unimplemented {
		return f.UnimplementedRuntimeServiceServer.RestorePod(ctx, r)
	}
	return nil, status.Error(f.restorePod, "checkpoint path is required")
}

func serveStatus(t *testing.T, f *statusRuntime) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recordedInfo reads a recorded runtime answer (../capability/testdata).
func recordedInfo(t *testing.T, file string) (name, version string, info map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "capability", "testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Name    string            `json:"runtime_name"`
		Version string            `json:"runtime_version"`
		Info    map[string]string `json:"info"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r.Name, r.Version, r.Info
}

func ptr(b bool) *bool { return &b }

func eqPtr(a, b *bool) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func TestParseCheckpointConfigRecorded(t *testing.T) {
	cases := []struct {
		file string
		want CheckpointConfig
	}{
		{"containerd-2.1.9.json", CheckpointConfig{Reported: true}},
		{"containerd-2.3.4-restore-off.json", CheckpointConfig{Reported: true, EnableCRIU: ptr(true), RestoreViaCreate: ptr(false)}},
		{"containerd-2.3.4-restore-on.json", CheckpointConfig{Reported: true, EnableCRIU: ptr(true), RestoreViaCreate: ptr(true)}},
		{"containerd-2.3.7-restore-off.json", CheckpointConfig{Reported: true, EnableCRIU: ptr(true), RestoreViaCreate: ptr(false)}},
		{"containerd-2.3.7-restore-on.json", CheckpointConfig{Reported: true, EnableCRIU: ptr(true), RestoreViaCreate: ptr(true)}},
		{"containerd-2.4.2.json", CheckpointConfig{Reported: true, EnableCRIU: ptr(true)}},
		{"containerd-1.6.20.json", CheckpointConfig{Reported: true}},
		{"crio-1.36.3.json", CheckpointConfig{Reported: true, CRIUSupport: ptr(true)}},
		{"crio-1.36.3-criu-off.json", CheckpointConfig{Reported: true, CRIUSupport: ptr(false)}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			_, _, info := recordedInfo(t, tc.file)
			got, err := ParseCheckpointConfig(info)
			if err != nil {
				t.Fatal(err)
			}
			if got.Reported != tc.want.Reported || !eqPtr(got.EnableCRIU, tc.want.EnableCRIU) || !eqPtr(got.RestoreViaCreate, tc.want.RestoreViaCreate) ||
				!eqPtr(got.CRIUSupport, tc.want.CRIUSupport) || got.ContainerLevel != tc.want.ContainerLevel {
				t.Errorf("got %s, want %s", show(got), show(tc.want))
			}
		})
	}
}

func show(c CheckpointConfig) string {
	b, _ := json.Marshal(c)
	return string(b)
}

func TestParseCheckpointConfigEdges(t *testing.T) {
	if c, err := ParseCheckpointConfig(nil); err != nil || c.Reported {
		t.Errorf("no info: %+v, %v; want not reported, no error", c, err)
	}
	if _, err := ParseCheckpointConfig(map[string]string{"config": "{not json"}); err == nil {
		t.Error("a corrupt config was accepted")
	}
	c, err := ParseCheckpointConfig(map[string]string{"config": `{"crio":{"EnableCriuSupport":true,"ContainerLevelEnabled":"checkpoint_only"}}`})
	if err != nil || c.ContainerLevel != "checkpoint_only" || !eqPtr(c.CRIUSupport, ptr(true)) {
		t.Errorf("CRI-O level: %s, %v", show(c), err)
	}
}

// Through a real gRPC server: the verbose Status is asked, the version is
// split, and RestorePod's answer decides whether the runtime has it.
func TestClientStatusCalls(t *testing.T) {
	name, version, info := recordedInfo(t, "containerd-2.3.4-restore-on.json")
	for _, tc := range []struct {
		code codes.Code
		want bool
	}{{codes.Unimplemented, false}, {codes.InvalidArgument, true}, {codes.Unknown, true}} {
		f := &statusRuntime{name: name, version: version, info: info, restorePod: tc.code}
		c := serveStatus(t, f)
		ctx := context.Background()
		n, v, err := c.RuntimeVersion(ctx)
		if err != nil || n != "containerd" || v != "v2.3.4" {
			t.Errorf("RuntimeVersion = %q %q %v", n, v, err)
		}
		cfg, err := c.CheckpointConfig(ctx)
		if err != nil || !f.verbose.Load() || !eqPtr(cfg.RestoreViaCreate, ptr(true)) {
			t.Errorf("CheckpointConfig = %s, %v (verbose asked: %v)", show(cfg), err, f.verbose.Load())
		}
		got, err := c.RestorePodImplemented(ctx)
		if err != nil || got != tc.want {
			t.Errorf("RestorePod answering %v: implemented = %v, %v; want %v", tc.code, got, err, tc.want)
		}
	}
	// A refusal that says nothing about the call (a proxy's) is an error,
	// not "implemented".
	f := &statusRuntime{name: name, version: version, info: info, restorePod: codes.PermissionDenied}
	c := serveStatus(t, f)
	if got, err := c.RestorePodImplemented(context.Background()); got || err == nil {
		t.Errorf("RestorePod answering PermissionDenied: implemented = %v, %v; want false and an error", got, err)
	}
}

// A runtime that does not answer is an error, not "no RestorePod".
func TestRestorePodProbeUnreachable(t *testing.T) {
	c, err := Dial(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.RestorePodImplemented(context.Background()); err == nil {
		t.Error("no error from an unreachable runtime")
	}
}
