package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/atomicfile"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// workloadConfig is what a restore needs besides the archive: the sandbox
// and container configuration the workload ran with (restorecfg). It is
// kept in <data dir>/workloads/<namespace>_<pod>_<container>.json.
type workloadConfig = restorecfg.Config

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
	b, err := restorecfg.Marshal(sb, ctr)
	if err != nil {
		return err
	}
	return writeFileAtomic(workloadConfigPath(dataDir, id), b)
}

func loadWorkloadConfig(dataDir string, id store.Workload) (workloadConfig, error) {
	p := workloadConfigPath(dataDir, id)
	b, err := os.ReadFile(p)
	if err != nil {
		return workloadConfig{}, err
	}
	c, err := restorecfg.Parse(b)
	if err != nil {
		return c, fmt.Errorf("read %s: %w", p, err)
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
