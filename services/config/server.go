package config

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/config/internal/dnscheck"
	"github.com/mailbus/mailbus/services/config/internal/store"
)

// server implements ConfigService: it authorises, validates, calls the store
// and maps errors. The behaviour lives in the store and in validate.go.
type server struct {
	pb.UnimplementedConfigServiceServer

	store        *store.Store
	log          *slog.Logger
	pollInterval time.Duration
	// stopping is closed when the service shuts down, to end watch streams
	// (GracefulStop waits for every stream to finish).
	stopping <-chan struct{}
	tester   relayTester
	checker  *dnscheck.Checker
}

func newID() string { return strings.ToLower(ulid.Make().String()) }

func (s *server) fail(ctx context.Context, err error) error { return toStatus(ctx, s.log, err) }

// identity returns the caller, or Unauthenticated.
func identity(ctx context.Context) (auth.Identity, error) { return auth.Require(ctx) }

func canReadTenant(ctx context.Context, tenantID string) (auth.Identity, error) {
	id, err := identity(ctx)
	if err != nil {
		return id, err
	}
	if !id.CanReadTenant(tenantID) {
		return id, auth.PermissionDenied(id, "cannot read tenant %q", tenantID)
	}
	return id, nil
}

func canWriteTenant(ctx context.Context, tenantID string) (auth.Identity, error) {
	id, err := identity(ctx)
	if err != nil {
		return id, err
	}
	if !id.CanWriteTenant(tenantID) {
		return id, auth.PermissionDenied(id, "cannot change tenant %q", tenantID)
	}
	return id, nil
}

func requireAdmin(ctx context.Context, what string) error {
	id, err := identity(ctx)
	if err != nil {
		return err
	}
	if !id.IsAdmin() {
		return auth.PermissionDenied(id, "only an admin can %s", what)
	}
	return nil
}

func requireReadAll(ctx context.Context, what string) (auth.Identity, error) {
	id, err := identity(ctx)
	if err != nil {
		return id, err
	}
	if !id.CanReadAll() {
		return id, auth.PermissionDenied(id, "only admin and pipeline callers can %s", what)
	}
	return id, nil
}

// listScope decides which tenant a listing covers: callers that read all
// may list everything; tenant roles list their own tenant.
func listScope(ctx context.Context, tenantID string) (string, error) {
	id, err := identity(ctx)
	if err != nil {
		return "", err
	}
	if id.CanReadAll() {
		return tenantID, nil
	}
	if tenantID == "" {
		tenantID = id.TenantID
	}
	if !id.CanReadTenant(tenantID) {
		return "", auth.PermissionDenied(id, "cannot read tenant %q", tenantID)
	}
	return tenantID, nil
}

func requireID(field, id string) error {
	if id == "" {
		return invalidArgument(violation(field, "required"))
	}
	return nil
}

// Tenants.

func (s *server) CreateTenant(ctx context.Context, req *pb.CreateTenantRequest) (*pb.CreateTenantResponse, error) {
	if err := requireAdmin(ctx, "create tenants"); err != nil {
		return nil, err
	}
	t := clone(req.GetTenant())
	if t == nil {
		return nil, invalidArgument(violation("tenant", "required"))
	}
	if err := validateTenant(t, true); err != nil {
		return nil, err
	}
	if t.Id == "" {
		t.Id = newID()
	}
	out, err := s.store.CreateTenant(ctx, t)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.CreateTenantResponse{Tenant: out}, nil
}

func (s *server) GetTenant(ctx context.Context, req *pb.GetTenantRequest) (*pb.GetTenantResponse, error) {
	if _, err := canReadTenant(ctx, req.GetId()); err != nil {
		return nil, err
	}
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	t, err := s.store.GetTenant(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.GetTenantResponse{Tenant: t}, nil
}

func (s *server) UpdateTenant(ctx context.Context, req *pb.UpdateTenantRequest) (*pb.UpdateTenantResponse, error) {
	t := clone(req.GetTenant())
	if t == nil {
		return nil, invalidArgument(violation("tenant", "required"))
	}
	id, err := canWriteTenant(ctx, t.Id)
	if err != nil {
		return nil, err
	}
	if err := validateTenant(t, false); err != nil {
		return nil, err
	}
	if !id.IsAdmin() {
		// A tenant administrator runs their tenant but does not grant
		// themselves a bigger plan.
		old, err := s.store.GetTenant(ctx, t.Id)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		if !proto.Equal(old.GetPlan(), t.GetPlan()) || old.DailyLimit != t.DailyLimit || old.Active != t.Active {
			return nil, auth.PermissionDenied(id, "only an admin can change plan, daily_limit or active")
		}
	}
	out, err := s.store.UpdateTenant(ctx, t)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.UpdateTenantResponse{Tenant: out}, nil
}

func (s *server) DeleteTenant(ctx context.Context, req *pb.DeleteTenantRequest) (*pb.DeleteTenantResponse, error) {
	if err := requireAdmin(ctx, "delete tenants"); err != nil {
		return nil, err
	}
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	if err := s.store.DeleteTenant(ctx, req.GetId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DeleteTenantResponse{}, nil
}

func (s *server) ListTenants(ctx context.Context, req *pb.ListTenantsRequest) (*pb.ListTenantsResponse, error) {
	id, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	p, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if !id.CanReadAll() {
		// A tenant role sees exactly its own tenant.
		if p.After != "" {
			return &pb.ListTenantsResponse{}, nil
		}
		t, err := s.store.GetTenant(ctx, id.TenantID)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		return &pb.ListTenantsResponse{Tenants: []*pb.Tenant{t}}, nil
	}
	items, next, err := s.store.ListTenants(ctx, p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.ListTenantsResponse{Tenants: items, NextPageToken: pageToken(next)}, nil
}

// Domains.

// domainFor loads a domain and checks that the caller may read (or write)
// its tenant.
func (s *server) domainFor(ctx context.Context, domainID string, write bool) (*pb.Domain, error) {
	if _, err := identity(ctx); err != nil {
		return nil, err
	}
	if err := requireID("domain_id", domainID); err != nil {
		return nil, err
	}
	d, err := s.store.GetDomain(ctx, domainID)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	check := canReadTenant
	if write {
		check = canWriteTenant
	}
	if _, err := check(ctx, d.TenantId); err != nil {
		return nil, err
	}
	return d, nil
}

func (s *server) CreateDomain(ctx context.Context, req *pb.CreateDomainRequest) (*pb.CreateDomainResponse, error) {
	d := clone(req.GetDomain())
	if d == nil {
		return nil, invalidArgument(violation("domain", "required"))
	}
	if id, err := identity(ctx); err == nil && d.TenantId == "" && id.TenantID != "" {
		d.TenantId = id.TenantID
	}
	if _, err := canWriteTenant(ctx, d.TenantId); err != nil {
		return nil, err
	}
	keys, err := validateDomain(d, true)
	if err != nil {
		return nil, err
	}
	if d.Id == "" {
		d.Id = newID()
	}
	newKeys := make([]store.NewDKIMKey, len(keys))
	for i, k := range keys {
		newKeys[i] = *k.New
	}
	out, err := s.store.CreateDomain(ctx, d, newKeys)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.CreateDomainResponse{Domain: out}, nil
}

func (s *server) GetDomain(ctx context.Context, req *pb.GetDomainRequest) (*pb.GetDomainResponse, error) {
	d, err := s.domainFor(ctx, req.GetId(), false)
	if err != nil {
		return nil, err
	}
	return &pb.GetDomainResponse{Domain: d}, nil
}

func (s *server) UpdateDomain(ctx context.Context, req *pb.UpdateDomainRequest) (*pb.UpdateDomainResponse, error) {
	d := clone(req.GetDomain())
	if d == nil {
		return nil, invalidArgument(violation("domain", "required"))
	}
	old, err := s.domainFor(ctx, d.Id, true)
	if err != nil {
		return nil, err
	}
	if d.TenantId == "" {
		d.TenantId = old.TenantId
	}
	keys, err := validateDomain(d, false)
	if err != nil {
		return nil, err
	}
	out, err := s.store.UpdateDomain(ctx, d, keys)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.UpdateDomainResponse{Domain: out}, nil
}

func (s *server) DeleteDomain(ctx context.Context, req *pb.DeleteDomainRequest) (*pb.DeleteDomainResponse, error) {
	if _, err := s.domainFor(ctx, req.GetId(), true); err != nil {
		return nil, err
	}
	if err := s.store.DeleteDomain(ctx, req.GetId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DeleteDomainResponse{}, nil
}

func (s *server) ListDomains(ctx context.Context, req *pb.ListDomainsRequest) (*pb.ListDomainsResponse, error) {
	tenantID, err := listScope(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	p, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	items, next, err := s.store.ListDomains(ctx, tenantID, p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.ListDomainsResponse{Domains: items, NextPageToken: pageToken(next)}, nil
}

func (s *server) GenerateDkimKey(ctx context.Context, req *pb.GenerateDkimKeyRequest) (*pb.GenerateDkimKeyResponse, error) {
	d, err := s.domainFor(ctx, req.GetDomainId(), true)
	if err != nil {
		return nil, err
	}
	nk, err := generateKey(req.GetSelector(), req.GetAlgorithm())
	if err != nil {
		return nil, err
	}
	key, err := s.store.PutDKIMKey(ctx, d.Id, *nk)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.GenerateDkimKeyResponse{Key: key}, nil
}

// generateKey validates a key request and makes the key.
func generateKey(selector string, alg pb.DkimAlgorithm) (*store.NewDKIMKey, error) {
	var v violations
	sel := strings.ToLower(strings.TrimSpace(selector))
	if !dkimkey.ValidSelector(sel) {
		v.add("selector", "%q is not a valid selector (DNS labels: letters, digits, '-')", selector)
	}
	switch alg {
	case pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256:
	default:
		v.add("algorithm", "must be RSA_SHA256 or ED25519_SHA256, got %s", alg)
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	signer, err := dkimkey.Generate(alg)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	der, err := dkimkey.MarshalPKCS8(signer)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	pub, err := dkimkey.PublicKeyValue(signer)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &store.NewDKIMKey{Selector: sel, Algorithm: alg, PrivateKey: der, PublicKey: pub, Active: true}, nil
}

func (s *server) DeleteDkimKey(ctx context.Context, req *pb.DeleteDkimKeyRequest) (*pb.DeleteDkimKeyResponse, error) {
	d, err := s.domainFor(ctx, req.GetDomainId(), true)
	if err != nil {
		return nil, err
	}
	if err := requireID("selector", req.GetSelector()); err != nil {
		return nil, err
	}
	if err := s.store.DeleteDKIMKey(ctx, d.Id, strings.ToLower(req.GetSelector())); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DeleteDkimKeyResponse{}, nil
}

// Relays.

func (s *server) relayFor(ctx context.Context, relayID string, write bool) (*pb.Relay, error) {
	if _, err := identity(ctx); err != nil {
		return nil, err
	}
	if err := requireID("id", relayID); err != nil {
		return nil, err
	}
	r, err := s.store.GetRelay(ctx, relayID)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	check := canReadTenant
	if write {
		check = canWriteTenant
	}
	if _, err := check(ctx, r.TenantId); err != nil {
		return nil, err
	}
	return r, nil
}

func (s *server) CreateRelay(ctx context.Context, req *pb.CreateRelayRequest) (*pb.CreateRelayResponse, error) {
	r := clone(req.GetRelay())
	if r == nil {
		return nil, invalidArgument(violation("relay", "required"))
	}
	if id, err := identity(ctx); err == nil && r.TenantId == "" && id.TenantID != "" {
		r.TenantId = id.TenantID
	}
	if _, err := canWriteTenant(ctx, r.TenantId); err != nil {
		return nil, err
	}
	if err := validateRelay(r, "relay", true, false); err != nil {
		return nil, err
	}
	if r.Id == "" {
		r.Id = newID()
	}
	out, err := s.store.CreateRelay(ctx, r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.CreateRelayResponse{Relay: out}, nil
}

func (s *server) GetRelay(ctx context.Context, req *pb.GetRelayRequest) (*pb.GetRelayResponse, error) {
	r, err := s.relayFor(ctx, req.GetId(), false)
	if err != nil {
		return nil, err
	}
	return &pb.GetRelayResponse{Relay: r}, nil
}

func (s *server) UpdateRelay(ctx context.Context, req *pb.UpdateRelayRequest) (*pb.UpdateRelayResponse, error) {
	r := clone(req.GetRelay())
	if r == nil {
		return nil, invalidArgument(violation("relay", "required"))
	}
	old, err := s.relayFor(ctx, r.Id, true)
	if err != nil {
		return nil, err
	}
	if r.TenantId == "" {
		r.TenantId = old.TenantId
	}
	if err := validateRelay(r, "relay", false, false); err != nil {
		return nil, err
	}
	out, err := s.store.UpdateRelay(ctx, r)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.UpdateRelayResponse{Relay: out}, nil
}

func (s *server) DeleteRelay(ctx context.Context, req *pb.DeleteRelayRequest) (*pb.DeleteRelayResponse, error) {
	if _, err := s.relayFor(ctx, req.GetId(), true); err != nil {
		return nil, err
	}
	if err := s.store.DeleteRelay(ctx, req.GetId()); err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DeleteRelayResponse{}, nil
}

func (s *server) ListRelays(ctx context.Context, req *pb.ListRelaysRequest) (*pb.ListRelaysResponse, error) {
	tenantID, err := listScope(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	p, err := page(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	items, next, err := s.store.ListRelays(ctx, tenantID, p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.ListRelaysResponse{Relays: items, NextPageToken: pageToken(next)}, nil
}

// Default server.

func (s *server) GetDefaultServer(ctx context.Context, _ *pb.GetDefaultServerRequest) (*pb.GetDefaultServerResponse, error) {
	if _, err := requireReadAll(ctx, "read the default server"); err != nil {
		return nil, err
	}
	ds, err := s.store.GetDefaultServer(ctx)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.GetDefaultServerResponse{Server: ds}, nil
}

func (s *server) SetDefaultServer(ctx context.Context, req *pb.SetDefaultServerRequest) (*pb.SetDefaultServerResponse, error) {
	if err := requireAdmin(ctx, "set the default server"); err != nil {
		return nil, err
	}
	ds := clone(req.GetServer())
	if ds == nil {
		return nil, invalidArgument(violation("server", "required"))
	}
	if err := validateDefaultServer(ds); err != nil {
		return nil, err
	}
	out, err := s.store.SetDefaultServer(ctx, ds, newID)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.SetDefaultServerResponse{Server: out}, nil
}

// Snapshot and changes.

func (s *server) GetSnapshot(ctx context.Context, _ *pb.GetSnapshotRequest) (*pb.GetSnapshotResponse, error) {
	id, err := requireReadAll(ctx, "read the configuration snapshot")
	if err != nil {
		return nil, err
	}
	snap, err := s.store.Snapshot(ctx, id.ReceivesSealedSecrets())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return snap, nil
}

// watchBatch is how many changes one poll reads.
const watchBatch = 500

func (s *server) WatchChanges(req *pb.WatchChangesRequest, stream grpc.ServerStreamingServer[pb.WatchChangesResponse]) error {
	ctx := stream.Context()
	if _, err := requireReadAll(ctx, "watch changes"); err != nil {
		return err
	}
	since := req.GetSinceRevision()
	if since < 0 {
		return invalidArgument(violation("since_revision", fmt.Sprintf("must not be negative, got %d", since)))
	}
	ticker := time.NewTicker(s.pollInterval)
	defer ticker.Stop()
	for {
		// Take the wakeup channel before reading, so that a commit between
		// the read and the wait is not missed.
		changed := s.store.Changed()
		changes, err := s.store.Changes(ctx, since, watchBatch)
		if err != nil {
			return s.fail(ctx, err)
		}
		for _, c := range changes {
			if err := stream.Send(&pb.WatchChangesResponse{Change: c}); err != nil {
				return err
			}
			since = c.Revision
		}
		if len(changes) == watchBatch {
			continue
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "config service is shutting down; reconnect")
		case <-changed:
		case <-ticker.C:
		}
	}
}
