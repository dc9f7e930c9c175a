package peer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Request is one thing a peer asks of this node, as the Authorizer sees
// it: the method and what the request is about.
type Request struct {
	Method   string // "Apply", "Migrate", "Push" or "Fetch"
	Command  []byte // Apply: the encoded Raft command
	Workload string // Push, Fetch, Migrate: "namespace/pod/container"
	Seq      uint64 // Push, Fetch
	SHA256   string // Push: the archive's announced digest
	Size     int64  // Push: its announced size
	To       string // Migrate: the target node
}

// Authorizer decides whether caller, the node its certificate names, may
// make req. It returns nil, or an error that says what was refused and
// why; the caller gets it as PermissionDenied.
type Authorizer interface {
	Authorize(ctx context.Context, caller string, req Request) error
}

type callerKey struct{}

// Caller is the authenticated node name the server bound to a request
// (empty outside a served request).
func Caller(ctx context.Context) string {
	s, _ := ctx.Value(callerKey{}).(string)
	return s
}

// NodeName is the node a certificate names: its common name, which must
// also be one of its DNS names (as crfailoverd tls cert writes them).
func NodeName(cert *x509.Certificate) (string, error) {
	cn := cert.Subject.CommonName
	switch {
	case cn == "":
		return "", errors.New("the certificate has no common name (a node certificate names its node)")
	case !slices.Contains(cert.DNSNames, cn):
		return "", fmt.Errorf("the certificate's common name %q is not among its DNS names %q", cn, cert.DNSNames)
	}
	return cn, nil
}

// identity returns the node name of the peer of a served call.
func identity(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errors.New("no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	return NodeName(ti.State.PeerCertificates[0])
}

// authorizeUnary binds the call to the caller's identity and authorizes
// it; it is part of the server's one interceptor.
func (s *server) authorizeUnary(ctx context.Context, req any) (context.Context, error) {
	name, err := identity(ctx)
	if err != nil {
		return ctx, status.Error(codes.Unauthenticated, "peer identity: "+err.Error())
	}
	ctx = context.WithValue(ctx, callerKey{}, name)
	var r Request
	switch x := req.(type) {
	case *applyRequest:
		r = Request{Method: "Apply", Command: x.Command}
	case *migrateRequest:
		r = Request{Method: "Migrate", Workload: x.Workload, To: x.To}
	case *identifyRequest:
		return ctx, nil // every authenticated node may ask a node's name
	default:
		return ctx, status.Errorf(codes.PermissionDenied, "%s may not call %T: no rule admits it", name, req)
	}
	return ctx, s.authorize(ctx, name, r)
}

func (s *server) authorize(ctx context.Context, caller string, r Request) error {
	if s.h.Authorize == nil {
		return nil
	}
	if err := s.h.Authorize.Authorize(ctx, caller, r); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

// authStream binds a stream to the caller's identity and authorizes its
// first message (a push header or a fetch request) before the handler
// sees it.
type authStream struct {
	grpc.ServerStream
	s       *server
	ctx     context.Context
	caller  string
	checked bool
}

func (a *authStream) Context() context.Context { return a.ctx }

func (a *authStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if a.checked {
		return nil
	}
	a.checked = true
	var r Request
	switch x := m.(type) {
	case *header:
		r = Request{Method: "Push", Workload: x.Workload, Seq: x.Seq, SHA256: x.SHA256, Size: x.Size}
	case *fetchRequest:
		r = Request{Method: "Fetch", Workload: x.Workload, Seq: x.Seq}
	default:
		return status.Errorf(codes.PermissionDenied, "%s may not send %T first: no rule admits it", a.caller, m)
	}
	return a.s.authorize(a.ctx, a.caller, r)
}

func (s *server) authorizeStream(ss grpc.ServerStream) (grpc.ServerStream, error) {
	name, err := identity(ss.Context())
	if err != nil {
		return ss, status.Error(codes.Unauthenticated, "peer identity: "+err.Error())
	}
	return &authStream{ServerStream: ss, s: s, ctx: context.WithValue(ss.Context(), callerKey{}, name), caller: name}, nil
}
