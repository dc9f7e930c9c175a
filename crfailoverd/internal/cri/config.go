package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	if s.Linux != nil && s.Linux.Namespaces != nil && s.Linux.Namespaces.Options != nil {
		cfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: s.Linux.Namespaces.Options}
	}
	// CRI-O records the rest in its annotations of the sandbox's spec.
	if spec := specFromInfo(st.Info); spec != nil {
		a := spec.Annotations
		if lp := a[crioLogPath]; filepath.IsAbs(lp) {
			cfg.LogDirectory = filepath.Dir(lp)
		}
		cfg.Linux.CgroupParent = a[crioCgroupParent]
		cfg.Hostname = a[crioHostName]
	}
	return cfg, nil
}

// Annotations CRI-O puts on the runtime specs of sandboxes and containers.
const (
	crioLogPath      = "io.kubernetes.cri-o.LogPath"
	crioCgroupParent = "io.kubernetes.cri-o.CgroupParent"
	crioHostName     = "io.kubernetes.cri-o.HostName"
)

// specFromInfo decodes the runtime spec CRI-O reports in a verbose status
// (info["info"].runtimeSpec); nil when there is none.
func specFromInfo(info map[string]string) *specs.Spec {
	var v struct {
		RuntimeSpec *specs.Spec `json:"runtimeSpec"`
	}
	if raw, ok := info["info"]; !ok || json.Unmarshal([]byte(raw), &v) != nil {
		return nil
	}
	return v.RuntimeSpec
}

// namespaceOptions reads a container's namespace modes from its runtime
// spec: no namespace of a type is the node's, one with a path is joined
// (the pod's), one without a path is the container's own.
func namespaceOptions(spec *specs.Spec) *runtimeapi.NamespaceOption {
	if spec.Linux == nil {
		return nil
	}
	mode := func(t specs.LinuxNamespaceType) runtimeapi.NamespaceMode {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == t {
				if ns.Path == "" {
					return runtimeapi.NamespaceMode_CONTAINER
				}
				return runtimeapi.NamespaceMode_POD
			}
		}
		return runtimeapi.NamespaceMode_NODE
	}
	net := mode(specs.NetworkNamespace)
	if net == runtimeapi.NamespaceMode_CONTAINER {
		net = runtimeapi.NamespaceMode_POD
	}
	ipc := mode(specs.IPCNamespace)
	if ipc == runtimeapi.NamespaceMode_CONTAINER {
		ipc = runtimeapi.NamespaceMode_POD
	}
	return &runtimeapi.NamespaceOption{Network: net, Pid: mode(specs.PIDNamespace), Ipc: ipc}
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
	cfg = &runtimeapi.ContainerConfig{Metadata: s.Metadata, Image: s.Image, Labels: s.Labels, Annotations: s.Annotations, LogPath: s.LogPath, Mounts: s.Mounts}
	// CRI-O: the namespaces from the container's runtime spec, and the log
	// path relative to the sandbox's log directory, as kubelet gives it.
	if spec := specFromInfo(st.Info); spec != nil {
		if ns := namespaceOptions(spec); ns != nil {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: ns}}
		}
		var v struct {
			SandboxID string `json:"sandboxID"`
		}
		if json.Unmarshal([]byte(st.Info["info"]), &v) == nil && v.SandboxID != "" && filepath.IsAbs(cfg.LogPath) {
			if sb, err := c.SandboxConfig(ctx, v.SandboxID); err == nil && sb.LogDirectory != "" {
				if rel, err := filepath.Rel(sb.LogDirectory, cfg.LogPath); err == nil && filepath.IsLocal(rel) {
					cfg.LogPath = rel
				}
			}
		}
	}
	return cfg, nil
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
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	if err := opts.Unmarshal(v.Config, m); err != nil {
		// containerd marshals the config with encoding/json, whose field
		// names are the protobuf JSON names too. A runtime built with an
		// older CRI API, where KeyValue.value (the environment) was a
		// string, writes it as text, not as the base64 of the bytes it is
		// now; anything else is a format we do not know.
		fixed, ok := envValuesAsBase64(v.Config)
		if !ok || opts.Unmarshal(fixed, m) != nil {
			return false, fmt.Errorf("decode runtime's recorded config: %w", err)
		}
	}
	// Either way the text may have been taken for base64 or the other way
	// round: the runtime spec's environment says what the values are.
	if cc, ok := m.(*runtimeapi.ContainerConfig); ok {
		if env := runtimeEnv(info); env != nil {
			envFromSpec(cc, env)
		} else {
			envFromJSON(cc, v.Config)
		}
	}
	return true, nil
}
