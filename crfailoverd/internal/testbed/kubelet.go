package testbed

import (
	"context"
	"errors"
	"io"
)

// EnsureKubelet builds kubelet once, cached beside the root file systems.
func EnsureKubelet(ctx context.Context, c Config, log io.Writer) error {
	return errors.New("kubelet nodes are not built yet")
}

// startKubelet starts a real kubelet on node n in standalone mode.
func (b *Bed) startKubelet(ctx context.Context, n *Node) error {
	return errors.New("node " + n.Name + ": kubelet nodes are not built yet")
}
