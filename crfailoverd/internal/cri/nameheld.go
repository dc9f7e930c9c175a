package cri

import (
	"context"
	"errors"
	"fmt"
	"regexp"

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
//
// Matched on their container-name wording only: a bare "already in use"
// is also CRIU's "Address already in use", which no removal can help.
var (
	containerdConflict = regexp.MustCompile(`failed to reserve container name "[^"]*"`)
	crioConflict       = regexp.MustCompile(`container name "[^"]*" is already in use`)
	reservedFor        = regexp.MustCompile(`is reserved for "([0-9a-zA-Z_.-]+)"`)
	inUseBy            = regexp.MustCompile(`is already in use by ([0-9a-zA-Z_.-]+?)\.? `)
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
	case containerdConflict.MatchString(msg):
		if m := reservedFor.FindStringSubmatch(msg); m != nil {
			holder = m[1]
		}
		return holder, true
	case crioConflict.MatchString(msg):
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
// name and attempt) after a create in the new sandbox sandboxID (of pod
// sb) was refused, so that a restore can create it again: a container
// left behind by a failed or interrupted restore, or by a node boot. The
// holder is the one the refusal names, or else the container of that name
// and attempt in the sandbox, or in an earlier sandbox of the same pod
// (same name and namespace) when the runtime lists them. Only an exited
// holder is removed, or one that was created and never started when a
// second status read right before the removal still says so and its
// sandbox is not ready; a running holder is refused
// (ErrNameHeldByRunning), and so is one in an unknown state, or whose
// metadata does not match, each named.
func (c *Client) freeName(ctx context.Context, sb *runtimeapi.PodSandboxConfig, sandboxID string, ctr *runtimeapi.ContainerConfig, holder string) error {
	name, attempt := ctr.GetMetadata().GetName(), ctr.GetMetadata().GetAttempt()
	holderSandbox := ""
	if holder == "" {
		var err error
		if holder, holderSandbox, err = c.findHolder(ctx, sb, sandboxID, name, attempt); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("remove container %s holding the name %q (attempt %d)", short(holder), name, attempt)
	st, err := c.holderStatus(ctx, holder, name)
	if err != nil {
		return err
	}
	md := st.GetMetadata()
	if md.GetName() != name || md.GetAttempt() != attempt {
		return fmt.Errorf("%s: refused: it is named %q (attempt %d)", what, md.GetName(), md.GetAttempt())
	}
	switch s := st.GetState(); s {
	case runtimeapi.ContainerState_CONTAINER_EXITED:
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return fmt.Errorf("%s: refused: it is running: %w", what, ErrNameHeldByRunning)
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		// Created, never started: it may be about to start. Only when its
		// sandbox is not ready, and it is still created right now.
		if holderSandbox == "" {
			if holderSandbox, err = c.sandboxOf(ctx, holder); err != nil {
				return fmt.Errorf("%s: refused: it is created and its sandbox cannot be told: %w", what, err)
			}
		}
		cctx, cancel := c.call(ctx)
		ps, err := c.rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: holderSandbox})
		cancel()
		switch {
		case err != nil && status.Code(err) != codes.NotFound:
			return fmt.Errorf("%s: refused: it is created and the status of its sandbox %s failed: %w", what, short(holderSandbox), err)
		case err == nil && ps.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_READY:
			return fmt.Errorf("%s: refused: it is created and its sandbox %s is ready (it may be about to start)", what, short(holderSandbox))
		}
		again, err := c.holderStatus(ctx, holder, name)
		if err != nil {
			return err
		}
		if again.GetState() != runtimeapi.ContainerState_CONTAINER_CREATED {
			return fmt.Errorf("%s: refused: it was created and is now %s", what, again.GetState())
		}
	default:
		return fmt.Errorf("%s: refused: its state is %s", what, s)
	}
	cctx, cancel := c.call(ctx)
	_, err = c.rt.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: holder})
	cancel()
	if err != nil && status.Code(err) != codes.NotFound {
		return c.wrap("RemoveContainer "+short(holder)+" (holding the name "+name+")", err)
	}
	return nil
}

// holderStatus is the status of container id, holding the name name.
func (c *Client) holderStatus(ctx context.Context, id, name string) (*runtimeapi.ContainerStatus, error) {
	cctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return nil, c.wrap("ContainerStatus "+short(id)+" (holding the name "+name+")", err)
	}
	return st.GetStatus(), nil
}

// sandboxOf is the sandbox of container id.
func (c *Client) sandboxOf(ctx context.Context, id string) (string, error) {
	cctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: id}})
	if err != nil {
		return "", c.wrap("ListContainers of "+short(id), err)
	}
	for _, ct := range resp.Containers {
		if ct.Id == id {
			return ct.PodSandboxId, nil
		}
	}
	return "", fmt.Errorf("find the sandbox of container %s: not listed", short(id))
}

// findHolder finds the container of name and attempt in sandbox
// sandboxID, or else in an earlier sandbox of pod sb (same name and
// namespace: earlier attempts), when the runtime lists sandboxes.
func (c *Client) findHolder(ctx context.Context, sb *runtimeapi.PodSandboxConfig, sandboxID, name string, attempt uint32) (holder, sandbox string, err error) {
	sandboxes := []string{sandboxID}
	if pod := sb.GetMetadata(); pod.GetName() != "" {
		cctx, cancel := c.call(ctx)
		resp, err := c.rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{})
		cancel()
		if err == nil { // a runtime that cannot list them: the new sandbox only
			for _, s := range resp.Items {
				if s.Id != sandboxID && s.GetMetadata().GetName() == pod.GetName() && s.GetMetadata().GetNamespace() == pod.GetNamespace() &&
					s.GetMetadata().GetUid() == pod.GetUid() { // a recreated pod of that name is another pod
					sandboxes = append(sandboxes, s.Id)
				}
			}
		}
	}
	for _, id := range sandboxes {
		cctx, cancel := c.call(ctx)
		resp, err := c.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: id}})
		cancel()
		if err != nil {
			return "", "", c.wrap("ListContainers of sandbox "+short(id), err)
		}
		for _, ct := range resp.Containers {
			if ct.GetMetadata().GetName() == name && ct.GetMetadata().GetAttempt() == attempt {
				return ct.Id, id, nil
			}
		}
	}
	return "", "", fmt.Errorf("find the container holding the name %q (attempt %d) in sandbox %s or %d earlier sandboxes of its pod: none listed",
		name, attempt, short(sandboxID), len(sandboxes)-1)
}
