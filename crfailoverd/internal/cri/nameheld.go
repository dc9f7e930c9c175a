package cri

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ErrNameHeldByRunning is returned (wrapped) by RestoreContainer when the
// restored container's name is held by a container that is running: it
// is never removed to make room.
var ErrNameHeldByRunning = errors.New("the container name is held by a running container")

// The two runtimes' words for a container name that is taken:
//
//	containerd: failed to reserve container name "N": name "N" is reserved for "ID"
//	CRI-O:      the container name "N" is already in use by ID. You have to remove that container ...
var (
	reservedFor = regexp.MustCompile(`is reserved for "([0-9a-zA-Z_.-]+)"`)
	inUseBy     = regexp.MustCompile(`already in use by ([0-9a-zA-Z_.-]+?)\.? `)
)

// nameConflict reports whether err is a runtime's refusal to create a
// container because its name is taken, and the holder's ID when the
// message names it.
func nameConflict(err error) (holder string, ok bool) {
	if err == nil {
		return "", false
	}
	msg := err.Error()
	if s, isStatus := status.FromError(err); isStatus {
		msg = s.Message()
	}
	switch {
	case strings.Contains(msg, "is reserved for"):
		if m := reservedFor.FindStringSubmatch(msg); m != nil {
			holder = m[1]
		}
		return holder, true
	case strings.Contains(msg, "already in use"):
		if m := inUseBy.FindStringSubmatch(msg + " "); m != nil {
			holder = m[1]
		}
		return holder, true
	case status.Code(err) == codes.AlreadyExists:
		return "", true
	}
	return "", false
}

// freeName removes the container that holds the name of ctr (metadata
// name and attempt) after createErr refused it, so that a restore can
// create it again: a container left behind by a failed or interrupted
// restore, or by a node boot, exited in the sandbox. The holder is the
// one createErr names, or else the container of that name and attempt in
// the sandbox. A running holder is never removed (ErrNameHeldByRunning,
// naming it); nor is one whose metadata does not match.
func (c *Client) freeName(ctx context.Context, sandboxID string, ctr *runtimeapi.ContainerConfig, holder string) error {
	name, attempt := ctr.GetMetadata().GetName(), ctr.GetMetadata().GetAttempt()
	if holder == "" {
		cctx, cancel := c.call(ctx)
		resp, err := c.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandboxID}})
		cancel()
		if err != nil {
			return c.wrap("ListContainers of sandbox "+short(sandboxID), err)
		}
		for _, ct := range resp.Containers {
			if ct.GetMetadata().GetName() == name && ct.GetMetadata().GetAttempt() == attempt {
				holder = ct.Id
				break
			}
		}
		if holder == "" {
			return fmt.Errorf("find the container holding the name %q (attempt %d) in sandbox %s: none listed", name, attempt, short(sandboxID))
		}
	}
	cctx, cancel := c.call(ctx)
	st, err := c.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: holder})
	cancel()
	if err != nil {
		return c.wrap("ContainerStatus "+short(holder)+" (holding the name "+name+")", err)
	}
	md := st.GetStatus().GetMetadata()
	if md.GetName() != name || md.GetAttempt() != attempt {
		return fmt.Errorf("remove container %s holding the name %q (attempt %d): refused: it is named %q (attempt %d)", short(holder), name, attempt, md.GetName(), md.GetAttempt())
	}
	if s := st.GetStatus().GetState(); s == runtimeapi.ContainerState_CONTAINER_RUNNING {
		return fmt.Errorf("remove container %s holding the name %q: refused: it is running: %w", short(holder), name, ErrNameHeldByRunning)
	}
	cctx, cancel = c.call(ctx)
	_, err = c.rt.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: holder})
	cancel()
	if err != nil && status.Code(err) != codes.NotFound {
		return c.wrap("RemoveContainer "+short(holder)+" (holding the name "+name+")", err)
	}
	return nil
}
