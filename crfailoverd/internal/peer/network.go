package peer

import (
	"context"
	"net"
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
	network Network // nil: the host's
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
