package cri

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func cloneProto[T proto.Message](m T) T { return proto.Clone(m).(T) }

// SandboxConfig returns the configuration a pod sandbox was created with,
// which is what a restore needs to make an equivalent sandbox. containerd
// and CRI-O return it in the verbose status ("info" -> "config"); where a
// runtime does not, it is rebuilt from the status.
func (c *Client) SandboxConfig(ctx context.Context, id string) (*runtimeapi.PodSandboxConfig, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return nil, c.wrap("PodSandboxStatus "+short(id), err)
	}
	cfg := &runtimeapi.PodSandboxConfig{}
	if ok, err := configFromInfo(st.Info, cfg); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", short(id), err)
	} else if ok {
		return cfg, nil
	}
	s := st.Status
	cfg = &runtimeapi.PodSandboxConfig{Metadata: s.Metadata, Labels: s.Labels, Annotations: s.Annotations}
	if s.Linux != nil && s.Linux.Namespaces != nil && s.Linux.Namespaces.Options != nil {
		cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: s.Linux.Namespaces.Options}}
	}
	return cfg, nil
}

// ContainerConfig returns the configuration a container was created with
// (from the verbose status, or rebuilt from the status).
func (c *Client) ContainerConfig(ctx context.Context, id string) (*runtimeapi.ContainerConfig, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return nil, c.wrap("ContainerStatus "+short(id), err)
	}
	cfg := &runtimeapi.ContainerConfig{}
	if ok, err := configFromInfo(st.Info, cfg); err != nil {
		return nil, fmt.Errorf("container %s: %w", short(id), err)
	} else if ok {
		return cfg, nil
	}
	s := st.Status
	return &runtimeapi.ContainerConfig{Metadata: s.Metadata, Image: s.Image, Labels: s.Labels, Annotations: s.Annotations, LogPath: s.LogPath}, nil
}

// configFromInfo decodes info["info"].config into m. ok is false when the
// runtime does not report it.
func configFromInfo(info map[string]string, m proto.Message) (bool, error) {
	raw, found := info["info"]
	if !found {
		return false, nil
	}
	var v struct {
		Config json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil || len(v.Config) == 0 {
		return false, nil
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(v.Config, m); err != nil {
		// containerd marshals the config with encoding/json, whose field
		// names are the protobuf JSON names too; a failure here means a
		// format we do not know.
		return false, fmt.Errorf("decode runtime's recorded config: %w", err)
	}
	return true, nil
}
