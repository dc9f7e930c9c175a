package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CheckpointConfig is what a runtime's verbose Status says about its
// checkpoint and restore settings. A nil pointer means the runtime did not
// report that setting (an older release without it, or another runtime).
type CheckpointConfig struct {
	// Reported: the status info carried a configuration that was read.
	Reported bool
	// EnableCRIU is containerd's enable_criu (JSON enableCRIU; 2.2.7,
	// 2.3.4 and 2.4 on): false turns off both checkpoint and restore.
	EnableCRIU *bool
	// RestoreViaCreate is containerd's
	// enable_experimental_restore_via_create (JSON
	// enableExperimentalRestoreViaCreate; 2.2.7 and 2.3.4 on, false by
	// default; gone in 2.4).
	RestoreViaCreate *bool
	// CRIUSupport is CRI-O's [crio.runtime] enable_criu_support as in
	// effect (CRI-O turns it off at start when it finds no criu binary).
	CRIUSupport *bool
	// ContainerLevel is CRI-O's [crio.checkpoint_restore]
	// container_level_enabled ("none", "checkpoint_only",
	// "checkpoint_restore") when the status reports it; CRI-O v1.36.3
	// has no such table, and its development branch does not put it in
	// the status, so it is "" there.
	ContainerLevel string
}

// RuntimeVersion returns the runtime's name and version as its CRI
// Version call reports them, e.g. "containerd" and "2.1.9+unknown".
func (c *Client) RuntimeVersion(ctx context.Context) (name, version string, err error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", "", c.wrap("Version", err)
	}
	return v.RuntimeName, v.RuntimeVersion, nil
}

// CheckpointConfig asks the runtime for its verbose status and reads the
// checkpoint settings from its configuration (info["config"]).
func (c *Client) CheckpointConfig(ctx context.Context) (CheckpointConfig, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return CheckpointConfig{}, c.wrap("Status", err)
	}
	cfg, err := ParseCheckpointConfig(st.Info)
	if err != nil {
		return CheckpointConfig{}, fmt.Errorf("CRI Status at %s: %w", c.endpoint, err)
	}
	return cfg, nil
}

// RestorePodImplemented reports whether the runtime implements the CRI
// RestorePod call (cri-api v0.37, alpha). It asks with an empty request,
// which a runtime that has the call refuses as invalid without doing
// anything; Unimplemented means it has not.
func (c *Client) RestorePodImplemented(ctx context.Context) (bool, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	_, err := c.rt.RestorePod(ctx, &runtimeapi.RestorePodRequest{})
	switch status.Code(err) {
	case codes.Unimplemented:
		return false, nil
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.Unknown:
		// The call exists and refused the empty request (runtimes return
		// their own errors as Unknown).
		return true, nil
	case codes.OK:
		return true, nil
	}
	// Anything else (unavailable, denied by a proxy, out of resources)
	// says nothing about the call.
	return false, c.wrap("RestorePod (probe)", err)
}

// ParseCheckpointConfig reads the checkpoint settings from a verbose
// status's info. containerd puts its CRI configuration there as JSON
// under "config" (the runtime plugin's fields at the top level); CRI-O
// puts {"sandboxImage": ..., "crio": its [crio.runtime] fields by Go name}.
// An info without "config" is not an error: Reported stays false.
func ParseCheckpointConfig(info map[string]string) (CheckpointConfig, error) {
	raw, ok := info["config"]
	if !ok || strings.TrimSpace(raw) == "" {
		return CheckpointConfig{}, nil
	}
	var v struct {
		EnableCRIU       *bool `json:"enableCRIU"`
		RestoreViaCreate *bool `json:"enableExperimentalRestoreViaCreate"`
		CRIO             *struct {
			EnableCriuSupport     *bool  `json:"EnableCriuSupport"`
			ContainerLevelEnabled string `json:"ContainerLevelEnabled"`
		} `json:"crio"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return CheckpointConfig{}, fmt.Errorf("read the runtime's configuration from its status info: %w", err)
	}
	cfg := CheckpointConfig{Reported: true, EnableCRIU: v.EnableCRIU, RestoreViaCreate: v.RestoreViaCreate}
	if v.CRIO != nil {
		cfg.CRIUSupport, cfg.ContainerLevel = v.CRIO.EnableCriuSupport, v.CRIO.ContainerLevelEnabled
	}
	return cfg, nil
}
