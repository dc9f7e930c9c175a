package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/archive"
	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/store"
)

// serviceName is the gRPC service: /crfailoverd.peer.v1.Peer/<Method>.
const serviceName = "crfailoverd.peer.v1.Peer"

// chunkSize is the most archive bytes one chunk message carries.
const chunkSize = 256 << 10

// peerService is what serviceDesc's handlers need of the registered value.
type peerService interface {
	push(grpc.ServerStream) error
	fetch(grpc.ServerStream) error
	apply(context.Context, *applyRequest) (*applyReply, error)
	migrate(context.Context, *migrateRequest) (*migrateReply, error)
	identify(context.Context, *identifyRequest) (*identifyReply, error)
}

// Indexes into serviceDesc.Streams.
const (
	pushStream  = 0
	fetchStream = 1
)

// serviceDesc is hand-written in place of generated code.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*peerService)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Apply", Handler: unaryHandler("Apply", peerService.apply)},
		{MethodName: "Migrate", Handler: unaryHandler("Migrate", peerService.migrate)},
		{MethodName: "Identify", Handler: unaryHandler("Identify", peerService.identify)},
	},
	Streams: []grpc.StreamDesc{
		pushStream: {
			StreamName:    "Push",
			Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(peerService).push(ss) },
			ClientStreams: true,
		},
		fetchStream: {
			StreamName:    "Fetch",
			Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(peerService).fetch(ss) },
			ServerStreams: true,
		},
	},
	Metadata: "crfailoverd/internal/peer/service.go",
}

func fullMethod(name string) string { return "/" + serviceName + "/" + name }

// unaryHandler adapts a typed method to grpc.MethodHandler.
func unaryHandler[Req, Resp any](name string, call func(peerService, context.Context, *Req) (*Resp, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		req := new(Req)
		if err := dec(req); err != nil {
			return nil, err
		}
		s := srv.(peerService)
		if icpt == nil {
			return call(s, ctx, req)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod(name)}
		return icpt(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return call(s, ctx, req.(*Req))
		})
	}
}

// Handlers is what the daemon supplies to serve the Peer service. A nil
// field makes the calls that need it fail with codes.Unimplemented.
type Handlers struct {
	// Store receives pushed archives and serves fetched ones.
	Store *store.Store
	// Apply applies a Raft command forwarded by a follower (when this node
	// leads; otherwise it returns an error such as "not the leader; leader
	// is X").
	Apply func(ctx context.Context, cmd []byte) error
	// Migrate moves the workload to node to.
	Migrate func(ctx context.Context, workload, to string) (seq uint64, downtime time.Duration, err error)
	// Node is this node's name, which Identify answers, with
	// HasRaftState (nil: false).
	Node         string
	HasRaftState func() bool
	// Authorize decides every call (nil: every authenticated node may
	// make every call; tests only).
	Authorize Authorizer
	// Log receives failed calls (nil: discarded).
	Log *slog.Logger
	// StreamIdle is how long a push may send nothing before the stream is
	// abandoned (its temporary file removed); 0: DefaultStreamIdle.
	StreamIdle time.Duration
	// MaxPushesPerPeer bounds the pushes one calling node may have in
	// progress (0: DefaultMaxPushesPerPeer).
	MaxPushesPerPeer int
}

// DefaultStreamIdle is how long a push may stall: a peer that sends a
// header and then nothing would otherwise hold a temporary file and a
// goroutine for ever. Chunks are 1 MiB or less, so a healthy sender sends
// one far more often.
const DefaultStreamIdle = 30 * time.Second

// server implements peerService.
type server struct {
	h      Handlers
	pushes pushSlots
}

// NewServer returns a gRPC server for the Peer service, to Serve on
// Mux.GRPCListener. It logs failed calls (keys method, peer, code, err)
// and turns plain errors into gRPC status errors.
func NewServer(h Handlers) *grpc.Server { return newServer(h) }

// newServer is NewServer with extra options, which tests use to add
// interceptors (they run inside the logging one).
func newServer(h Handlers, opts ...grpc.ServerOption) *grpc.Server {
	if h.Log == nil {
		h.Log = slog.New(slog.DiscardHandler)
	}
	if h.MaxPushesPerPeer <= 0 {
		h.MaxPushesPerPeer = DefaultMaxPushesPerPeer
	}
	s := &server{h: h, pushes: pushSlots{max: h.MaxPushesPerPeer, n: map[string]int{}}}
	g := grpc.NewServer(append([]grpc.ServerOption{
		grpc.Creds(muxCreds{}),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}, opts...)...)
	g.RegisterService(&serviceDesc, s)
	return g
}

// unaryInterceptor is the one place every unary call passes: it binds the
// call to the caller's certificate name, authorizes it, and logs a
// failure.
func (s *server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorizeUnary(ctx, req)
	if err != nil {
		return nil, s.failed(ctx, info.FullMethod, err)
	}
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, s.failed(ctx, info.FullMethod, err)
	}
	return resp, nil
}

// streamInterceptor does the same for streams: the first message is
// authorized before the handler sees it.
func (s *server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ss, err := s.authorizeStream(ss)
	if err != nil {
		return s.failed(ss.Context(), info.FullMethod, err)
	}
	if err := handler(srv, ss); err != nil {
		return s.failed(ss.Context(), info.FullMethod, err)
	}
	return nil
}

// failed logs a failed call and returns err as a status error.
func (s *server) failed(ctx context.Context, method string, err error) error {
	st := toStatus(err)
	s.h.Log.LogAttrs(ctx, slog.LevelWarn, "peer call failed",
		slog.String("method", method), slog.String("peer", PeerName(ctx)),
		slog.String("code", st.Code().String()), slog.String("err", st.Message()))
	return st.Err()
}

// isRefusal reports whether err is the authorizer's refusal (returned as
// it is, so that the caller reads the reason once).
func isRefusal(err error) bool {
	st, ok := status.FromError(err)
	return ok && err != nil && (st.Code() == codes.PermissionDenied || st.Code() == codes.Unauthenticated)
}

// toStatus maps err to a gRPC status, keeping the code of a status it wraps.
func toStatus(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, store.ErrDigest):
		code = codes.DataLoss
	case errors.Is(err, archive.ErrTooLarge), errors.Is(err, store.ErrQuota), errors.As(err, new(tooMuch)):
		code = codes.ResourceExhausted
	case isBadRequest(err), errors.As(err, new(*archive.MemberError)), errors.Is(err, store.ErrSeq):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrPruned):
		code = codes.FailedPrecondition
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		code = codes.ResourceExhausted
	}
	return status.New(code, err.Error())
}

// PeerName returns the node name (certificate CommonName) of the peer
// calling a gRPC handler, or its address if it has no certificate.
func PeerName(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		return ti.State.PeerCertificates[0].Subject.CommonName
	}
	if p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// recvFirst receives a stream's first message (a push header, a fetch
// request), giving up after the stream idle time: a peer that opens a
// stream and sends nothing holds no handler for ever. Returning ends the
// stream, which ends the receive left behind.
func (s *server) recvFirst(ss grpc.ServerStream, m any, what string) error {
	idle := s.h.StreamIdle
	if idle <= 0 {
		idle = DefaultStreamIdle
	}
	done := make(chan error, 1)
	go func() { done <- ss.RecvMsg(m) }()
	t := time.NewTimer(idle)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return status.Errorf(codes.DeadlineExceeded, "%s from %s: nothing received for %s after the stream opened: stream abandoned", what, PeerName(ss.Context()), idle)
	}
}

// push receives an archive into the store. The header's size is checked
// against the store's max_archive_bytes before any chunk is read; the
// archive is walked (archive.Walker) while it streams, and the store
// verifies the digest, fsyncs and renames only after the walk has accepted
// it, before the reply is sent. On any error nothing new is visible.
func (s *server) push(ss grpc.ServerStream) error {
	if s.h.Store == nil {
		return status.Error(codes.Unimplemented, "push: this node has no store")
	}
	var h header
	if err := s.recvFirst(ss, &h, "push"); errors.Is(err, io.EOF) {
		return invalid("push: stream ended before the header")
	} else if isRefusal(err) {
		return err
	} else if err != nil {
		return fmt.Errorf("push: receive header: %w", err)
	}
	w, meta, err := h.entry()
	if err != nil {
		return fmt.Errorf("push %s seq %d: %w", h.Workload, h.Seq, err)
	}
	caller := Caller(ss.Context())
	if caller != "" {
		// The checkpoint's source is the authenticated caller, whatever the
		// header says.
		meta.Source = caller
	} else {
		caller = PeerName(ss.Context())
	}
	from := fmt.Sprintf("push %s seq %d from %s", w, h.Seq, caller)
	limit := maxArchiveBytes(s.h.Store)
	if err := checkAnnounced(h, limit); err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	release, err := s.pushes.acquire(caller)
	if err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	r := &chunkReader{stream: ss, size: h.Size}
	r.touch()
	type result struct {
		e   store.Entry
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The slot is the import's: it may outlive the handler by a
		// receive when the stream is abandoned.
		defer release()
		walked := newWalkingReader(r, archive.Options{Context: ss.Context(), MaxTotalBytes: limit})
		defer walked.Close()
		e, err := s.h.Store.Import(ss.Context(), w, walked, meta)
		done <- result{e, err}
	}()
	idle := s.h.StreamIdle
	if idle <= 0 {
		idle = DefaultStreamIdle
	}
	tick := time.NewTicker(min(idle/4, time.Second))
	defer tick.Stop()
	for {
		select {
		case res := <-done:
			if res.err != nil {
				return fmt.Errorf("%s: %w", from, res.err)
			}
			return ss.SendMsg(&pushReply{Seq: res.e.Seq, SHA256: res.e.SHA256, Size: res.e.Size})
		case <-tick.C:
			if quiet := r.quiet(); quiet >= idle {
				// Returning ends the stream: the import's next receive
				// fails, and the store removes its temporary file.
				return status.Errorf(codes.DeadlineExceeded, "%s: no data for %s after %d of %d bytes: stream abandoned",
					from, quiet.Round(time.Millisecond), r.got(), h.Size)
			}
		}
	}
}

// fetch sends a header and the chunks of a stored archive.
func (s *server) fetch(ss grpc.ServerStream) error {
	if s.h.Store == nil {
		return status.Error(codes.Unimplemented, "fetch: this node has no store")
	}
	var req fetchRequest
	if err := s.recvFirst(ss, &req, "fetch"); isRefusal(err) {
		return err
	} else if err != nil {
		return fmt.Errorf("fetch: receive request: %w", err)
	}
	w, err := store.ParseWorkload(req.Workload)
	if err != nil {
		return fmt.Errorf("fetch: %w", badRequest{err})
	}
	e, err := s.lookup(w, req.Seq)
	if err != nil {
		return fmt.Errorf("fetch %s seq %d: %w", w, req.Seq, err)
	}
	f, err := s.h.Store.OpenArchive(e)
	if errors.Is(err, fs.ErrNotExist) { // deleted by retention since lookup
		return fmt.Errorf("fetch %s seq %d: %w", w, e.Seq, store.ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("fetch %s seq %d: %w", w, e.Seq, err)
	}
	defer f.Close()
	h := headerOf(e)
	if err := ss.SendMsg(&h); err != nil {
		return fmt.Errorf("fetch %s seq %d: send header: %w", w, e.Seq, err)
	}
	if _, err := sendChunks(ss, io.LimitReader(f, e.Size), nil); err != nil {
		return fmt.Errorf("fetch %s seq %d: %w", w, e.Seq, err)
	}
	return nil
}

// lookup returns entry seq of w, or the newest good one for seq 0.
func (s *server) lookup(w store.Workload, seq uint64) (store.Entry, error) {
	if seq != 0 {
		return s.h.Store.Get(w, seq)
	}
	e, ok, err := s.h.Store.Latest(w)
	if err == nil && !ok {
		err = store.ErrNotFound
	}
	return e, err
}

func (s *server) apply(ctx context.Context, req *applyRequest) (*applyReply, error) {
	if s.h.Apply == nil {
		return nil, status.Error(codes.Unimplemented, "apply: not served by this node")
	}
	if err := s.h.Apply(ctx, req.Command); err != nil {
		return &applyReply{Error: err.Error()}, nil
	}
	return &applyReply{}, nil
}

func (s *server) identify(context.Context, *identifyRequest) (*identifyReply, error) {
	r := &identifyReply{Node: s.h.Node}
	if s.h.HasRaftState != nil {
		r.RaftState = s.h.HasRaftState()
	}
	return r, nil
}

func (s *server) migrate(ctx context.Context, req *migrateRequest) (*migrateReply, error) {
	if s.h.Migrate == nil {
		return nil, status.Error(codes.Unimplemented, "migrate: not served by this node")
	}
	seq, downtime, err := s.h.Migrate(ctx, req.Workload, req.To)
	reply := &migrateReply{Seq: seq, DowntimeMS: downtime.Milliseconds()}
	if err != nil {
		reply.Error = err.Error()
	}
	return reply, nil
}

// chunkReader reads the archive bytes of a stream of chunks, which must
// total exactly size bytes before the stream ends.
type chunkReader struct {
	stream   interface{ RecvMsg(any) error }
	size     int64
	received atomic.Int64
	last     atomic.Int64 // unix nanoseconds of the last chunk (touch)
	buf      chunk
	off      int
}

func (r *chunkReader) touch()               { r.last.Store(time.Now().UnixNano()) }
func (r *chunkReader) quiet() time.Duration { return time.Since(time.Unix(0, r.last.Load())) }
func (r *chunkReader) got() int64           { return r.received.Load() }

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf.Data) {
		r.off = 0
		r.buf.Data = r.buf.Data[:0]
		err := r.stream.RecvMsg(&r.buf)
		received := r.received.Load()
		if errors.Is(err, io.EOF) {
			if received < r.size {
				return 0, badRequest{fmt.Errorf("truncated: stream ended after %d of the %d bytes announced: %w", received, r.size, io.ErrUnexpectedEOF)}
			}
			return 0, io.EOF
		} else if err != nil {
			return 0, fmt.Errorf("receive chunk after %d of %d bytes: %w", received, r.size, err)
		}
		if int64(len(r.buf.Data)) > r.size-received {
			return 0, invalid("stream carries more than the announced %d bytes: %d bytes with this chunk: cut off", r.size, received+int64(len(r.buf.Data)))
		}
		r.received.Add(int64(len(r.buf.Data)))
		r.touch()
	}
	n := copy(p, r.buf.Data[r.off:])
	r.off += n
	return n, nil
}

// sendChunks sends r in chunks, reporting the running total to progress
// (if not nil). An error from SendMsg is returned as is (io.EOF: the other
// side has ended the stream; its status follows on the receive side).
func sendChunks(s interface{ SendMsg(any) error }, r io.Reader, progress func(int64)) (int64, error) {
	buf := make([]byte, chunkSize)
	var sent int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if err := s.SendMsg(&chunk{Data: buf[:n]}); err != nil {
				return sent, err
			}
			sent += int64(n)
			if progress != nil {
				progress(sent)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return sent, nil
		} else if err != nil {
			return sent, fmt.Errorf("read archive after %d bytes: %w", sent, err)
		}
	}
}

// Client calls the Peer service of one peer. It connects on first use,
// reconnects as needed and is safe for concurrent use.
type Client struct {
	name     string
	conn     *grpc.ClientConn
	archives ArchiveOpener // nil: plaintext entries only
}

// RemoteError is an error the peer's handler returned (as opposed to a
// failure to reach it), such as "not the leader; leader is X".
type RemoteError struct {
	Peer   string // node name
	Method string // "apply", "migrate"
	Msg    string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("peer %s: %s: %s", e.Peer, e.Method, e.Msg)
}

// Dial returns a client for the peer nodeName at addr ("host:port"). It
// does not connect yet. The peer's certificate must be signed by the
// cluster CA and valid for nodeName. WithNetwork chooses the network it
// connects through; without it, the host's (as gRPC dials by default).
func Dial(nodeName, addr string, t *TLS, opts ...Option) (*Client, error) {
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(t.ClientConfig(nodeName, alpnGRPC))),
		grpc.WithDefaultCallOptions(grpc.CallContentSubtype(codecName)),
	}
	o := buildOptions(opts)
	if nw := o.network; nw != nil {
		dopts = append(dopts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return nw.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(addr, dopts...)
	if err != nil {
		return nil, fmt.Errorf("peer: dial %s at %s: %w", nodeName, addr, err)
	}
	return &Client{name: nodeName, conn: conn, archives: o.archives}, nil
}

// Name returns the peer's node name.
func (c *Client) Name() string { return c.name }

// Close closes the connection; calls in progress fail.
func (c *Client) Close() error { return c.conn.Close() }

// Push sends the archive of e to the peer, which stores it under e's
// workload and sequence number once its sha256 checks out. progress (if
// not nil) is called with the bytes sent so far after each chunk.
//
// The archive is read through the store given to Dial (WithArchives), as
// its plaintext; without one only an entry kept in plaintext can be sent.
func (c *Client) Push(ctx context.Context, e store.Entry, progress func(sent int64)) error {
	f, err := c.openArchive(e)
	if err != nil {
		return fmt.Errorf("peer %s: push %s seq %d: %w", c.name, e.Workload, e.Seq, err)
	}
	defer f.Close()
	if err := c.push(ctx, headerOf(e), f, progress); err != nil {
		return fmt.Errorf("peer %s: push %s seq %d: %w", c.name, e.Workload, e.Seq, err)
	}
	return nil
}

// openArchive opens the plaintext of e's archive for sending.
func (c *Client) openArchive(e store.Entry) (io.ReadCloser, error) {
	if c.archives != nil {
		return c.archives.OpenArchive(e)
	}
	if e.Sealed {
		return nil, errors.New("the archive is sealed and this client has no store to decrypt it with (peer.WithArchives)")
	}
	return os.Open(e.Path)
}

// push sends h and then h.Size bytes of r.
func (c *Client) push(ctx context.Context, h header, r io.Reader, progress func(int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // on an early return, aborts the stream: the peer keeps nothing
	stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[pushStream], fullMethod("Push"))
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	// io.EOF means the peer ended the stream early (with an error, or
	// because it already has the entry); RecvMsg returns its answer.
	if err := sendArchive(stream, h, r, progress); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	var reply pushReply
	if err := stream.RecvMsg(&reply); err != nil {
		return err
	}
	if reply.Seq != h.Seq || !strings.EqualFold(reply.SHA256, h.SHA256) {
		return fmt.Errorf("peer acknowledged seq %d sha256 %s, sent seq %d sha256 %s", reply.Seq, reply.SHA256, h.Seq, h.SHA256)
	}
	return nil
}

// sendArchive sends h, then h.Size bytes of r, then closes the sending side.
func sendArchive(stream grpc.ClientStream, h header, r io.Reader, progress func(int64)) error {
	if err := stream.SendMsg(&h); err != nil {
		return err
	}
	sent, err := sendChunks(stream, io.LimitReader(r, h.Size), progress)
	if err != nil {
		return err
	}
	if sent != h.Size {
		return fmt.Errorf("local archive has %d bytes, entry says %d", sent, h.Size)
	}
	return stream.CloseSend()
}

// Apply forwards a Raft command to the peer (normally the leader). An
// error from the peer's handler is a *RemoteError.
func (c *Client) Apply(ctx context.Context, cmd []byte) error {
	var reply applyReply
	if err := c.conn.Invoke(ctx, fullMethod("Apply"), &applyRequest{Command: cmd}, &reply); err != nil {
		return fmt.Errorf("peer %s: apply: %w", c.name, err)
	}
	if reply.Error != "" {
		return &RemoteError{Peer: c.name, Method: "apply", Msg: reply.Error}
	}
	return nil
}

// Identify asks the peer for its node name and whether it has Raft state
// (it belongs to a formed cluster). The TLS handshake has proven by then
// that the peer holds a certificate of the cluster CA for the name this
// client was dialed for; the answer must be that name.
func (c *Client) Identify(ctx context.Context) (hasRaftState bool, err error) {
	var reply identifyReply
	if err := c.conn.Invoke(ctx, fullMethod("Identify"), &identifyRequest{}, &reply); err != nil {
		return false, fmt.Errorf("peer %s: identify: %w", c.name, err)
	}
	if reply.Node != c.name {
		return false, fmt.Errorf("peer %s: identify: it says it is %q", c.name, reply.Node)
	}
	return reply.RaftState, nil
}

// Migrate asks the peer to migrate workload to node to, returning the
// checkpoint it restored from and the downtime (millisecond resolution).
// An error from the peer's handler is a *RemoteError.
func (c *Client) Migrate(ctx context.Context, workload, to string) (uint64, time.Duration, error) {
	var reply migrateReply
	if err := c.conn.Invoke(ctx, fullMethod("Migrate"), &migrateRequest{Workload: workload, To: to}, &reply); err != nil {
		return 0, 0, fmt.Errorf("peer %s: migrate %s to %s: %w", c.name, workload, to, err)
	}
	downtime := time.Duration(reply.DowntimeMS) * time.Millisecond
	if reply.Error != "" {
		return reply.Seq, downtime, &RemoteError{Peer: c.name, Method: "migrate", Msg: reply.Error}
	}
	return reply.Seq, downtime, nil
}

// Expect is what a fetched archive must be: the sha256 and size the
// cluster records for it. The zero Expect takes the sender's word (tools,
// tests).
type Expect struct {
	SHA256 string
	Size   int64
}

// Fetch pulls the peer's entry seq of w (0: its newest good one) into st,
// verifying its sha256, and returns the local entry. With want set, a
// header announcing another digest or size is refused before any chunk
// is read, and the content is checked against want, not against the
// header: nothing that is not the recorded archive is stored. The entry's
// source is the peer, its method "replica", whatever the header says.
func (c *Client) Fetch(ctx context.Context, st *store.Store, w store.Workload, seq uint64, want Expect) (store.Entry, error) {
	e, err := c.fetch(ctx, st, w, seq, want)
	if err != nil {
		return store.Entry{}, fmt.Errorf("peer %s: fetch %s seq %d: %w", c.name, w, seq, err)
	}
	return e, nil
}

func (c *Client) fetch(ctx context.Context, st *store.Store, w store.Workload, seq uint64, want Expect) (store.Entry, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if the import stops early
	stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[fetchStream], fullMethod("Fetch"))
	if err != nil {
		return store.Entry{}, fmt.Errorf("open stream: %w", err)
	}
	if err := stream.SendMsg(&fetchRequest{Workload: w.String(), Seq: seq}); err != nil && !errors.Is(err, io.EOF) {
		return store.Entry{}, fmt.Errorf("send request: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return store.Entry{}, fmt.Errorf("close stream: %w", err)
	}
	var h header
	if err := stream.RecvMsg(&h); err != nil {
		return store.Entry{}, err
	}
	hw, meta, err := h.entry()
	if err != nil {
		return store.Entry{}, err
	}
	if hw != w || (seq != 0 && h.Seq != seq) {
		return store.Entry{}, fmt.Errorf("peer sent %s seq %d", hw, h.Seq)
	}
	if want.SHA256 != "" {
		if !strings.EqualFold(h.SHA256, want.SHA256) || h.Size != want.Size {
			return store.Entry{}, fmt.Errorf("%w: the peer announced sha256 %s and %d bytes, the cluster records sha256 %s and %d bytes: refused before reading it",
				store.ErrDigest, h.SHA256, h.Size, want.SHA256, want.Size)
		}
		meta.SHA256, meta.Size = strings.ToLower(want.SHA256), want.Size
	}
	meta.Source, meta.Method = c.name, "replica"
	limit := maxArchiveBytes(st)
	if err := checkAnnounced(h, limit); err != nil {
		return store.Entry{}, err
	}
	// Walked as it streams, as a push is: nothing is committed before the
	// walk has accepted the whole archive.
	walked := newWalkingReader(&chunkReader{stream: stream, size: h.Size}, archive.Options{Context: ctx, MaxTotalBytes: limit})
	defer walked.Close()
	return st.Import(ctx, w, walked, meta)
}
