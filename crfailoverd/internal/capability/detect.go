package capability

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RuntimeConfig is what the runtime reports of its checkpoint and
// restore settings (from the CRI Status call's verbose info). A nil
// pointer: not reported.
type RuntimeConfig struct {
	// Reported: the runtime's status carried a configuration.
	Reported bool
	// EnableCRIU: containerd's enable_criu (2.2.7, 2.3.4, 2.4 on).
	EnableCRIU *bool
	// RestoreViaCreate: containerd's enable_experimental_restore_via_create
	// (2.2.7 and 2.3.4 on).
	RestoreViaCreate *bool
	// CRIUSupport: CRI-O's enable_criu_support as in effect.
	CRIUSupport *bool
	// ContainerLevel: CRI-O's container_level_enabled, "" when not reported.
	ContainerLevel string
}

// RuntimeAsker is what Detect asks of the container runtime (the CRI client).
type RuntimeAsker interface {
	// RuntimeVersion: the CRI Version call's runtime name and version.
	RuntimeVersion(ctx context.Context) (name, version string, err error)
	// CheckpointConfig: the checkpoint settings of the runtime's
	// configuration, from its verbose CRI Status.
	CheckpointConfig(ctx context.Context) (RuntimeConfig, error)
	// RestorePodImplemented: whether the runtime answers CRI RestorePod
	// (false when it returns Unimplemented).
	RestorePodImplemented(ctx context.Context) (bool, error)
}

// Host is what Detect asks of the machine.
type Host interface {
	// KernelRelease: uname's release.
	KernelRelease() (string, error)
	// CPUInfo: the contents of /proc/cpuinfo.
	CPUInfo() ([]byte, error)
	// CRIUVersion: CRIU's version ("4.2.1"), "" when there is no CRIU to
	// ask (none configured or found).
	CRIUVersion(ctx context.Context) (string, error)
}

// Deps are Detect's inputs.
type Deps struct {
	Runtime RuntimeAsker
	Host    Host
	// NativeRestore: this daemon has the native restore path
	// (containerd's own client API, for containerd 2.4 and later).
	NativeRestore bool
	// Kubelet: a kubelet manages this node's pods. The native path makes
	// containers the CRI and kubelet do not see, so it is for nodes
	// without kubelet only.
	Kubelet bool
	// Now: the clock (time.Now when nil).
	Now func() time.Time
}

// Detect finds out what the node's runtime can do. It always returns a
// Node describing what it found: an unreachable runtime is a node that
// can neither checkpoint nor restore, with the reason. The error joins
// whatever could not be asked (the runtime, uname, /proc/cpuinfo, CRIU),
// for the caller to log; the Node is still the best answer.
func Detect(ctx context.Context, d Deps) (Node, error) {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	var errs []error
	var in Inputs
	in.NativeRestore, in.Kubelet = d.NativeRestore, d.Kubelet
	name, version, err := d.Runtime.RuntimeVersion(ctx)
	if err != nil {
		in.RuntimeErr = err
		errs = append(errs, fmt.Errorf("ask the runtime its version: %w", err))
	} else {
		in.Name, in.Version = name, version
		if in.Config, err = d.Runtime.CheckpointConfig(ctx); err != nil {
			in.ConfigErr = err
			errs = append(errs, fmt.Errorf("read the runtime's checkpoint configuration: %w", err))
		}
		if in.RestorePod, err = d.Runtime.RestorePodImplemented(ctx); err != nil {
			errs = append(errs, fmt.Errorf("probe the runtime's RestorePod: %w", err))
		}
	}
	n := Decide(in)
	if n.Kernel, err = d.Host.KernelRelease(); err != nil {
		errs = append(errs, fmt.Errorf("read the kernel release: %w", err))
	}
	if info, err := d.Host.CPUInfo(); err != nil {
		errs = append(errs, fmt.Errorf("read the CPU flags: %w", err))
	} else {
		n.CPUFlags = ParseCPUFlags(info)
	}
	if n.CRIU, err = d.Host.CRIUVersion(ctx); err != nil {
		errs = append(errs, fmt.Errorf("ask CRIU its version: %w", err))
	}
	n.Checked = now()
	return n, errors.Join(errs...)
}
