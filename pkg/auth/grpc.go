package auth

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MetadataKey is the gRPC metadata key that carries the bearer token.
const MetadataKey = "authorization"

// Authenticator maps a bearer token to an identity. *Tokens is one.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// IsPublic reports whether a method may be called without a token. The
// default lets only the standard health service through, so that load
// balancers and Kubernetes probes need no credentials.
func IsPublic(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}

// Interceptor authenticates calls for a gRPC server.
type Interceptor struct {
	auth   Authenticator
	public func(fullMethod string) bool
}

// NewInterceptor returns an interceptor that authenticates with auth and
// lets the methods that public accepts through without a token (nil means
// IsPublic). A nil auth refuses every non-public call.
func NewInterceptor(auth Authenticator, public func(fullMethod string) bool) *Interceptor {
	if public == nil {
		public = IsPublic
	}
	return &Interceptor{auth: auth, public: public}
}

// Unary returns the unary server interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := i.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream returns the stream server interceptor.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := i.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
	}
}

// ServerOptions returns the interceptors as server options, for a server
// that has no other interceptors.
func (i *Interceptor) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(i.Unary()), grpc.ChainStreamInterceptor(i.Stream())}
}

func (i *Interceptor) authenticate(ctx context.Context, fullMethod string) (context.Context, error) {
	if i.public(fullMethod) {
		return ctx, nil
	}
	token, err := bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	if i.auth == nil {
		return nil, status.Error(codes.Unauthenticated, "no API tokens are configured on this server; every call is refused")
	}
	id, err := i.auth.Authenticate(ctx, token)
	if err != nil {
		// Never echo the token: it may be a real token for another server.
		return nil, status.Error(codes.Unauthenticated, "invalid bearer token")
	}
	return NewContext(ctx, id), nil
}

func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(MetadataKey)
	if len(values) == 0 {
		return "", status.Error(codes.Unauthenticated, `missing bearer token: send metadata "authorization: Bearer <token>"`)
	}
	if len(values) > 1 {
		return "", status.Error(codes.Unauthenticated, "more than one authorization value")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", status.Error(codes.Unauthenticated, `malformed authorization metadata: want "Bearer <token>"`)
	}
	return strings.TrimSpace(token), nil
}

// contextStream replaces a server stream's context with the authenticated one.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// StaticToken is client credentials.PerRPCCredentials that send one bearer
// token with every call:
//
//	grpc.NewClient(addr,
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithPerRPCCredentials(auth.StaticToken{Token: tok, AllowInsecure: true}))
//
// The token is refused over a connection without transport security unless
// AllowInsecure is set (loopback and in-cluster plaintext set it).
type StaticToken struct {
	Token         string
	AllowInsecure bool
}

var _ credentials.PerRPCCredentials = StaticToken{}

// GetRequestMetadata returns the authorization metadata.
func (t StaticToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{MetadataKey: "Bearer " + t.Token}, nil
}

// RequireTransportSecurity reports whether the token needs TLS.
func (t StaticToken) RequireTransportSecurity() bool { return !t.AllowInsecure }
