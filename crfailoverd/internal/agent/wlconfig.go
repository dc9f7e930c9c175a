package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// workloadConfig is what a restore needs besides the archive: the sandbox
// and container configuration the workload ran with. It is kept in
// <data dir>/workloads/<namespace>_<pod>_<container>.json.
type workloadConfig struct {
	Sandbox   *runtimeapi.PodSandboxConfig
	Container *runtimeapi.ContainerConfig
}

type workloadConfigFile struct {
	Sandbox   json.RawMessage `json:"sandbox"`
	Container json.RawMessage `json:"container"`
}

func workloadConfigPath(dataDir string, id store.Workload) string {
	return filepath.Join(dataDir, "workloads", id.Namespace+"_"+id.Pod+"_"+id.Container+".json")
}

func saveWorkloadConfig(ctx context.Context, rt Runtime, dataDir string, id store.Workload, sandboxID, containerID string) error {
	sb, err := rt.SandboxConfig(ctx, sandboxID)
	if err != nil {
		return err
	}
	ctr, err := rt.ContainerConfig(ctx, containerID)
	if err != nil {
		return err
	}
	var f workloadConfigFile
	if f.Sandbox, err = protojson.Marshal(sb); err != nil {
		return err
	}
	if f.Container, err = protojson.Marshal(ctr); err != nil {
		return err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(workloadConfigPath(dataDir, id), b)
}

func loadWorkloadConfig(dataDir string, id store.Workload) (workloadConfig, error) {
	var c workloadConfig
	p := workloadConfigPath(dataDir, id)
	b, err := os.ReadFile(p)
	if err != nil {
		return c, err
	}
	var f workloadConfigFile
	if err := json.Unmarshal(b, &f); err != nil {
		return c, fmt.Errorf("read %s: %w", p, err)
	}
	c.Sandbox, c.Container = &runtimeapi.PodSandboxConfig{}, &runtimeapi.ContainerConfig{}
	if err := protojson.Unmarshal(f.Sandbox, c.Sandbox); err != nil {
		return c, fmt.Errorf("read %s: sandbox: %w", p, err)
	}
	if err := protojson.Unmarshal(f.Container, c.Container); err != nil {
		return c, fmt.Errorf("read %s: container: %w", p, err)
	}
	return c, nil
}

func cloneSandbox(s *runtimeapi.PodSandboxConfig) *runtimeapi.PodSandboxConfig {
	return proto.Clone(s).(*runtimeapi.PodSandboxConfig)
}

// writeFileAtomic writes b to path (0600), creating its directory.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, b, 0o600)
}
