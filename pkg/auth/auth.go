// Package auth authenticates and authorises gRPC calls between mailbus
// services and their operators.
//
// Callers present a bearer token in the `authorization` metadata
// ("Bearer <token>"). The server looks the token up in a token table that
// comes from configuration, where tokens may be written in plain text or as
// "sha256:<hex digest>" so that the configuration need not hold them. A
// token maps to an Identity (a role, and for tenant roles the tenant and
// user). The interceptors put the Identity in the call's context, where
// handlers read it with FromContext and check it with the Can* helpers.
//
// Secure by default: a server with an empty token table refuses every call
// except health checks.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Role is what an identity may do.
type Role string

const (
	// RoleAdmin is the platform operator: everything.
	RoleAdmin Role = "admin"
	// RolePipeline is a mailbus service: reads all configuration, including
	// sealed secrets, and writes nothing.
	RolePipeline Role = "pipeline"
	// RoleTenantAdmin administers one tenant.
	RoleTenantAdmin Role = "tenant_admin"
	// RoleUser is a user of one tenant: reads what concerns them.
	RoleUser Role = "user"
)

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool {
	switch r {
	case RoleAdmin, RolePipeline, RoleTenantAdmin, RoleUser:
		return true
	}
	return false
}

// Identity is who a call comes from.
type Identity struct {
	Role Role `yaml:"role" json:"role"`
	// TenantID is required for tenant_admin and user, empty otherwise.
	TenantID string `yaml:"tenant_id,omitempty" json:"tenant_id,omitempty"`
	// UserID is required for user.
	UserID string `yaml:"user_id,omitempty" json:"user_id,omitempty"`
	// Name labels the token in logs ("ops-laptop", "router"); optional.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
}

// Validate checks that the identity's fields fit its role.
func (id Identity) Validate() error {
	switch id.Role {
	case RoleAdmin, RolePipeline:
		if id.TenantID != "" || id.UserID != "" {
			return fmt.Errorf("role %s must not have a tenant_id or user_id", id.Role)
		}
	case RoleTenantAdmin:
		if id.TenantID == "" {
			return errors.New("role tenant_admin needs a tenant_id")
		}
	case RoleUser:
		if id.TenantID == "" || id.UserID == "" {
			return errors.New("role user needs a tenant_id and a user_id")
		}
	case "":
		return errors.New("role is missing (admin, pipeline, tenant_admin or user)")
	default:
		return fmt.Errorf("unknown role %q (admin, pipeline, tenant_admin or user)", id.Role)
	}
	return nil
}

// String describes the identity for logs; it never contains the token.
func (id Identity) String() string {
	s := string(id.Role)
	if id.TenantID != "" {
		s += " tenant=" + id.TenantID
	}
	if id.UserID != "" {
		s += " user=" + id.UserID
	}
	if id.Name != "" {
		s += " name=" + id.Name
	}
	return s
}

// IsAdmin reports whether the identity is the platform admin.
func (id Identity) IsAdmin() bool { return id.Role == RoleAdmin }

// CanReadTenant reports whether the identity may read the configuration of
// a tenant: admin and pipeline read all, tenant roles their own.
func (id Identity) CanReadTenant(tenantID string) bool {
	switch id.Role {
	case RoleAdmin, RolePipeline:
		return true
	case RoleTenantAdmin, RoleUser:
		return tenantID != "" && id.TenantID == tenantID
	}
	return false
}

// CanWriteTenant reports whether the identity may change a tenant's domains,
// relays and keys: admin for all, tenant_admin for its own.
func (id Identity) CanWriteTenant(tenantID string) bool {
	switch id.Role {
	case RoleAdmin:
		return true
	case RoleTenantAdmin:
		return tenantID != "" && id.TenantID == tenantID
	}
	return false
}

// CanReadAll reports whether the identity may read configuration across
// tenants: the snapshot, the change stream, the default server.
func (id Identity) CanReadAll() bool { return id.Role == RoleAdmin || id.Role == RolePipeline }

// ReceivesSealedSecrets reports whether responses to the identity may carry
// sealed secrets. Only the pipeline needs them; an admin writes secrets but
// never reads them back, so a leaked admin token does not leak them (even
// sealed).
func (id Identity) ReceivesSealedSecrets() bool { return id.Role == RolePipeline }

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity the interceptors put in ctx.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Require returns the identity in ctx, or a codes.Unauthenticated error when
// there is none (a handler reached without the interceptors).
func Require(ctx context.Context) (Identity, error) {
	id, ok := FromContext(ctx)
	if !ok {
		return Identity{}, status.Error(codes.Unauthenticated, "no authenticated identity")
	}
	return id, nil
}

// PermissionDenied returns a codes.PermissionDenied error naming the identity.
func PermissionDenied(id Identity, format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, "%s: %s", id.Role, fmt.Sprintf(format, args...))
}

// TokenPrefix starts every token made by NewToken, so that tokens are
// recognisable in leaks and secret scanners.
const TokenPrefix = "mbt_"

// NewToken returns a new random token with 256 bits of entropy.
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating token: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// HashToken returns the form of a token to put in configuration instead of
// the token itself: "sha256:<hex>". SHA-256 without salt is enough because
// tokens are long random strings, not passwords.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Tokens is a token table. It is safe for concurrent use; it never changes
// after NewTokens.
type Tokens struct {
	byDigest map[[sha256.Size]byte]Identity
}

// NewTokens builds a token table from a map of token to identity. A key is
// either the token itself or "sha256:<hex>" (see HashToken).
func NewTokens(table map[string]Identity) (*Tokens, error) {
	t := &Tokens{byDigest: make(map[[sha256.Size]byte]Identity, len(table))}
	for key, id := range table {
		if err := t.add(key, id); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Tokens) add(key string, id Identity) error {
	label := id.Name
	if label == "" {
		label = string(id.Role)
	}
	if err := id.Validate(); err != nil {
		return fmt.Errorf("token %q: %w", label, err)
	}
	var digest [sha256.Size]byte
	if hexDigest, ok := strings.CutPrefix(key, "sha256:"); ok {
		b, err := hex.DecodeString(hexDigest)
		if err != nil || len(b) != sha256.Size {
			return fmt.Errorf("token %q: sha256: needs 64 hex digits", label)
		}
		copy(digest[:], b)
	} else {
		if len(key) < 16 {
			return fmt.Errorf("token %q: tokens must be at least 16 characters", label)
		}
		digest = sha256.Sum256([]byte(key))
	}
	if prev, dup := t.byDigest[digest]; dup && prev != id {
		return fmt.Errorf("token %q: the same token is given for two identities", label)
	}
	t.byDigest[digest] = id
	return nil
}

// Merge returns a table with the entries of t and of table; t is unchanged.
func (t *Tokens) Merge(table map[string]Identity) (*Tokens, error) {
	out := &Tokens{byDigest: make(map[[sha256.Size]byte]Identity, len(t.byDigest)+len(table))}
	for k, v := range t.byDigest {
		out.byDigest[k] = v
	}
	for key, id := range table {
		if err := out.add(key, id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Len returns the number of tokens.
func (t *Tokens) Len() int { return len(t.byDigest) }

// ErrInvalidToken is returned for a token that is not in the table.
var ErrInvalidToken = errors.New("invalid token")

// Authenticate returns the identity of a token.
func (t *Tokens) Authenticate(_ context.Context, token string) (Identity, error) {
	// Looking up a digest leaks nothing useful through timing: an attacker
	// controls the token, not its digest.
	id, ok := t.byDigest[sha256.Sum256([]byte(token))]
	if !ok {
		return Identity{}, ErrInvalidToken
	}
	return id, nil
}
