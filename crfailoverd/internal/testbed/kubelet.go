package testbed

import (
	"context"
	"errors"
)

// startKubelet starts a real kubelet on node n in standalone mode.
func (b *Bed) startKubelet(ctx context.Context, n *Node) error {
	return errors.New("node " + n.Name + ": kubelet nodes are not built yet")
}
