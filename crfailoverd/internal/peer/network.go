package peer

import (
	"context"
	"net"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// Network is the network a Mux listens on and a node dials its peers
// through (the Raft stream and the gRPC client). The default is the host's
// network (net.Listen and a net.Dialer). Tests pass another one, such as a
// faultnet.Switch, to cut a node off; network is always "tcp".
type Network interface {
	Listen(network, addr string) (net.Listener, error)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// hostNetwork is the host's network.
type hostNetwork struct{}

func (hostNetwork) Listen(network, addr string) (net.Listener, error) {
	return net.Listen(network, addr)
}

func (hostNetwork) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// Option configures Listen and Dial.
type Option func(*options)

type options struct {
	network  Network       // nil: the host's
	archives ArchiveOpener // nil: plaintext entries only, by path
}

func buildOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithNetwork makes Listen listen on n, and the Mux's RaftStream dial
// through it; given to Dial, the client connects through n. nil means the
// host's network, as without the option.
func WithNetwork(n Network) Option {
	return func(o *options) { o.network = n }
}

// ArchiveOpener opens the plaintext of a stored entry's archive
// (*store.Store: decrypting a sealed one as it reads).
type ArchiveOpener interface {
	OpenArchive(e store.Entry) (*store.Archive, error)
}

// WithArchives makes the client that Dial returns read the archives it
// pushes through o, the node's store, so that sealed archives are sent as
// their plaintext. Without it, a client pushes only entries kept in
// plaintext. Listen ignores it.
func WithArchives(o ArchiveOpener) Option {
	if st, ok := o.(*store.Store); ok && st == nil {
		o = nil // a node without a store: as without the option
	}
	return func(opts *options) { opts.archives = o }
}
