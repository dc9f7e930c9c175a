package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// EnsureBaseImage pulls the base image of the checkpoint archive at
// archivePath (a file on this node) unless the runtime has it, on CRI-O:
// CRI-O restores a checkpoint, from an archive or from a checkpoint image
// that kubelet has it pull, only when the checkpoint's base image is in its
// store already, and does not pull it. containerd pulls it itself; there
// the call does nothing.
func (c *Client) EnsureBaseImage(ctx context.Context, sb *runtimeapi.PodSandboxConfig, archivePath string) error {
	name, err := c.runtimeName(ctx)
	if err != nil || name != RuntimeCRIO {
		return err
	}
	md, err := readRestoreMetadata(archivePath)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", archivePath, err)
	}
	if md.image == "" {
		return fmt.Errorf("checkpoint %s: config.dump names no base image", archivePath)
	}
	if err := c.ensureImage(ctx, sb, md.image); err != nil {
		return fmt.Errorf("checkpoint %s: its base image: %w", archivePath, err)
	}
	return nil
}
