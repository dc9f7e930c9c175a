package testbed

import (
	"context"
	"errors"
)

// startCRIO starts the node's CRI-O and waits until its CRI answers.
func (b *Bed) startCRIO(ctx context.Context, n *Node) error {
	return errors.New("node " + n.Name + ": CRI-O nodes are not built yet")
}
