package testbed

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI is a client of a node's container runtime over its unix socket.
type CRI struct {
	conn    *grpc.ClientConn
	Runtime runtimeapi.RuntimeServiceClient
	Image   runtimeapi.ImageServiceClient
}

// DialCRI connects to the CRI endpoint at socket (a path). The connection
// is lazy: errors show on the first call.
func DialCRI(socket string) (*CRI, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("connect to CRI at %s: %w", socket, err)
	}
	return &CRI{conn: conn, Runtime: runtimeapi.NewRuntimeServiceClient(conn), Image: runtimeapi.NewImageServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *CRI) Close() error { return c.conn.Close() }

// Labels kubelet puts on every sandbox and container; the kubelet emulator
// and crfailoverd find pods and containers by them.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
)

// findRunningContainer returns the running container of pod namespace/pod
// named container, as kubelet would find it. found is false when there is
// none.
func findRunningContainer(ctx context.Context, rt runtimeapi.RuntimeServiceClient, namespace, pod, container string) (id string, found bool, err error) {
	resp, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{
			LabelPodNamespace:  namespace,
			LabelPodName:       pod,
			LabelContainerName: container,
		},
	}})
	if err != nil {
		return "", false, fmt.Errorf("list containers: %w", err)
	}
	var newest *runtimeapi.Container
	for _, c := range resp.Containers {
		if newest == nil || c.CreatedAt > newest.CreatedAt {
			newest = c
		}
	}
	if newest == nil {
		return "", false, nil
	}
	return newest.Id, true, nil
}

// PingCRI asks the runtime at socket for its version.
func PingCRI(ctx context.Context, socket string) error {
	cri, err := DialCRI(socket)
	if err != nil {
		return err
	}
	defer cri.Close()
	if _, err := cri.Runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		return fmt.Errorf("CRI at %s: %w", socket, err)
	}
	return nil
}
