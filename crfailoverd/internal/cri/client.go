// Package cri is crfailoverd's client of the container runtime through the
// Kubernetes Container Runtime Interface (k8s.io/cri-api, gRPC on the
// runtime's unix socket). It works with containerd and CRI-O. It is the
// concrete runtime; the daemon declares the small interface it needs.
package cri

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ErrUnsupported is returned by calls the runtime does not implement (the
// pod-level CheckpointPod and RestorePod, alpha in cri-api v0.37).
var ErrUnsupported = errors.New("not implemented by the runtime")

// Client talks to one runtime.
type Client struct {
	endpoint string
	timeout  time.Duration
	conn     *grpc.ClientConn
	rt       runtimeapi.RuntimeServiceClient
	img      runtimeapi.ImageServiceClient

	mu   sync.Mutex
	name string // the runtime's name, once asked (runtimeName)
}

// Dial connects (lazily) to the runtime's CRI socket. timeout bounds each
// ordinary call; checkpoint calls get their own timeout.
func Dial(socket string, timeout time.Duration) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("connect to CRI at %s: %w", socket, err)
	}
	return &Client{endpoint: socket, timeout: timeout, conn: conn,
		rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Endpoint is the socket path.
func (c *Client) Endpoint() string { return c.endpoint }

func (c *Client) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// wrap names the call and the runtime in err, and maps Unimplemented to
// ErrUnsupported.
func (c *Client) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("CRI %s at %s: %w", what, c.endpoint, ErrUnsupported)
	}
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("CRI %s at %s: %s", what, c.endpoint, s.Message())
	}
	return fmt.Errorf("CRI %s at %s: %w", what, c.endpoint, err)
}

// Version returns the runtime's name and version, e.g. "containerd 2.1.9".
func (c *Client) Version(ctx context.Context) (string, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", c.wrap("Version", err)
	}
	return strings.TrimSpace(v.RuntimeName + " " + v.RuntimeVersion), nil
}

// ContainerState is the runtime's view of a container.
type ContainerState string

// Container states.
const (
	StateCreated ContainerState = "created"
	StateRunning ContainerState = "running"
	StateExited  ContainerState = "exited"
	StateUnknown ContainerState = "unknown"
)

func stateOf(s runtimeapi.ContainerState) ContainerState {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return StateCreated
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return StateRunning
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return StateExited
	}
	return StateUnknown
}

// Container is one container of a pod.
type Container struct {
	ID        string
	Name      string
	Attempt   uint32
	State     ContainerState
	CreatedAt time.Time
	Image     string
}

// Pod is a ready pod sandbox with its containers.
type Pod struct {
	SandboxID   string
	Name        string
	Namespace   string
	UID         string
	Attempt     uint32
	Labels      map[string]string
	Annotations map[string]string
	CreatedAt   time.Time
	Containers  []Container // newest first
}

// ListPods lists the ready pod sandboxes and their containers.
func (c *Client) ListPods(ctx context.Context) ([]Pod, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	sbs, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, c.wrap("ListPodSandbox", err)
	}
	ctrs, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, c.wrap("ListContainers", err)
	}
	bySandbox := map[string][]Container{}
	for _, x := range ctrs.Containers {
		ct := Container{ID: x.Id, State: stateOf(x.State), CreatedAt: time.Unix(0, x.CreatedAt)}
		if x.Metadata != nil {
			ct.Name, ct.Attempt = x.Metadata.Name, x.Metadata.Attempt
		}
		if x.Image != nil {
			ct.Image = x.Image.Image
		}
		bySandbox[x.PodSandboxId] = append(bySandbox[x.PodSandboxId], ct)
	}
	var pods []Pod
	for _, s := range sbs.Items {
		p := Pod{SandboxID: s.Id, Labels: s.Labels, Annotations: s.Annotations, CreatedAt: time.Unix(0, s.CreatedAt)}
		if s.Metadata != nil {
			p.Name, p.Namespace, p.UID, p.Attempt = s.Metadata.Name, s.Metadata.Namespace, s.Metadata.Uid, s.Metadata.Attempt
		}
		cs := bySandbox[s.Id]
		sortNewestFirst(cs)
		p.Containers = cs
		pods = append(pods, p)
	}
	return pods, nil
}

func sortNewestFirst(cs []Container) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].CreatedAt.After(cs[j-1].CreatedAt); j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// ContainerState returns the state of one container.
func (c *Client) ContainerState(ctx context.Context, id string) (ContainerState, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return StateUnknown, c.wrap("ContainerStatus "+short(id), err)
	}
	return stateOf(st.Status.State), nil
}

// CheckpointContainer checkpoints a running container into the archive
// location (a path that must not exist yet), leaving it running.
func (c *Client) CheckpointContainer(ctx context.Context, id, location string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	_, err := c.rt.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: location, Timeout: int64(timeout.Seconds())})
	return c.wrap("CheckpointContainer "+short(id), err)
}

// CheckpointPod checkpoints the given running containers of a pod as one
// consistent cut into outDir (an existing empty directory). It returns
// ErrUnsupported when the runtime lacks the call.
func (c *Client) CheckpointPod(ctx context.Context, sandboxID string, containerIDs []string, outDir string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := c.rt.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: sandboxID, OutputPath: outDir, ContainerIds: containerIDs})
	return c.wrap("CheckpointPod "+short(sandboxID), err)
}

// RestorePod restores a pod checkpoint directory made by CheckpointPod
// into a new sandbox and starts its containers. It returns ErrUnsupported
// when the runtime lacks the call.
func (c *Client) RestorePod(ctx context.Context, dir string, sb *runtimeapi.PodSandboxConfig, ctrs []*runtimeapi.ContainerConfig) (sandboxID string, containerIDs []string, err error) {
	cctx, cancel := context.WithTimeout(ctx, 4*c.timeout)
	defer cancel()
	resp, err := c.rt.RestorePod(cctx, &runtimeapi.RestorePodRequest{CheckpointPath: dir, Config: sb, ContainerConfigs: ctrs})
	if err != nil {
		return "", nil, c.wrap("RestorePod", err)
	}
	defer func() {
		if err != nil {
			_ = c.RemovePod(context.WithoutCancel(ctx), resp.PodSandboxId)
		}
	}()
	for _, rc := range resp.RestoredContainers {
		if err := c.start(ctx, rc.ContainerId); err != nil {
			return resp.PodSandboxId, containerIDs, err
		}
		containerIDs = append(containerIDs, rc.ContainerId)
	}
	return resp.PodSandboxId, containerIDs, nil
}

// RestoreContainer restores a container archive (a path on this node, or a
// checkpoint image name) into a new pod: RunPodSandbox, CreateContainer with
// the archive as its image, StartContainer. Before that it does what the
// runtime needs done (see prepareRestore: on CRI-O, the base image pulled
// and the checkpoint's mounts carried). When the runtime refuses the
// container's name because a container that is not running holds it (one
// left by a failed or interrupted restore, or by a node boot), that
// container is removed and the create tried once more; a running holder
// is never removed (ErrNameHeldByRunning, naming it). On failure it
// removes the sandbox it made.
func (c *Client) RestoreContainer(ctx context.Context, sb *runtimeapi.PodSandboxConfig, ctr *runtimeapi.ContainerConfig, archive string) (sandboxID, containerID string, err error) {
	cc := cloneProto(ctr)
	if err := c.prepareRestore(ctx, sb, cc, archive); err != nil {
		return "", "", err
	}
	cctx, cancel := c.call(ctx)
	resp, err := c.rt.RunPodSandbox(cctx, &runtimeapi.RunPodSandboxRequest{Config: sb})
	cancel()
	if err != nil {
		return "", "", c.wrap("RunPodSandbox", err)
	}
	sandboxID = resp.PodSandboxId
	defer func() {
		if err != nil {
			_ = c.RemovePod(context.WithoutCancel(ctx), sandboxID)
		}
	}()
	cc.Image = &runtimeapi.ImageSpec{Image: archive}
	// Restore can take longer than an ordinary call: CRIU restores memory.
	create := func() (*runtimeapi.CreateContainerResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, 4*c.timeout)
		defer cancel()
		return c.rt.CreateContainer(cctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandboxID, Config: cc, SandboxConfig: sb})
	}
	cr, err := create()
	if holder, held := nameConflict(err); held {
		// An exited copy left by a failed or interrupted restore, or by a
		// node boot, holds the name: remove it (never a running one) and
		// try once more.
		if ferr := c.freeName(ctx, sb, sandboxID, cc, holder); ferr != nil {
			return sandboxID, "", fmt.Errorf("%w; %w", c.wrap("CreateContainer from "+archive, err), ferr)
		}
		cr, err = create()
	}
	if err != nil {
		return sandboxID, "", c.wrap("CreateContainer from "+archive, err)
	}
	if err := c.start(ctx, cr.ContainerId); err != nil {
		return sandboxID, cr.ContainerId, err
	}
	return sandboxID, cr.ContainerId, nil
}

func (c *Client) start(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 4*c.timeout)
	defer cancel()
	_, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id})
	return c.wrap("StartContainer "+short(id), err)
}

// RemovePod stops and removes a pod sandbox and its containers. A sandbox
// that no longer exists is not an error.
func (c *Client) RemovePod(ctx context.Context, sandboxID string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandboxID}); err != nil && status.Code(err) != codes.NotFound {
		return c.wrap("StopPodSandbox "+short(sandboxID), err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandboxID}); err != nil && status.Code(err) != codes.NotFound {
		return c.wrap("RemovePodSandbox "+short(sandboxID), err)
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// PodNetwork returns the pod's IP address and whether it shares the node's
// network namespace.
func (c *Client) PodNetwork(ctx context.Context, sandboxID string) (ip string, hostNetwork bool, err error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandboxID})
	if err != nil {
		return "", false, c.wrap("PodSandboxStatus "+short(sandboxID), err)
	}
	s := st.Status
	if s.Network != nil {
		ip = s.Network.Ip
	}
	if s.Linux != nil && s.Linux.Namespaces != nil && s.Linux.Namespaces.Options != nil {
		hostNetwork = s.Linux.Namespaces.Options.Network == runtimeapi.NamespaceMode_NODE
	}
	return ip, hostNetwork, nil
}
