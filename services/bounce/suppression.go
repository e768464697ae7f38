package bounce

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
)

// SuppressionStore is what SuppressionService serves (pkg/suppress.Store).
type SuppressionStore interface {
	List(ctx context.Context, tenantID, cursor string, size int) ([]suppress.Entry, string, error)
	Get(ctx context.Context, tenantID, addr string) (suppress.Entry, bool, error)
	Add(ctx context.Context, tenantID string, e suppress.Entry) (suppress.Entry, error)
	Remove(ctx context.Context, tenantID, addr string) (bool, error)
}

// NewSuppressionServer returns SuppressionService over store. Register it
// on a gRPC server whose interceptors authenticate callers (pkg/auth, as
// the config service's ServerOptions do): anyone who may read a tenant's
// configuration may list its suppressions; only who may write it (the
// platform admin, the tenant's admin) may add and remove.
func NewSuppressionServer(store SuppressionStore, log *slog.Logger) mailbusv1.SuppressionServiceServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &suppressionServer{store: store, log: log}
}

type suppressionServer struct {
	mailbusv1.UnimplementedSuppressionServiceServer
	store SuppressionStore
	log   *slog.Logger
}

func (s *suppressionServer) authorize(ctx context.Context, tenantID string, write bool) (auth.Identity, error) {
	id, err := auth.Require(ctx)
	if err != nil {
		return id, err
	}
	if tenantID == "" {
		return id, status.Error(codes.InvalidArgument, "tenant_id is required")
	}
	if write && !id.CanWriteTenant(tenantID) {
		return id, auth.PermissionDenied(id, "may not change the suppression list of tenant %q", tenantID)
	}
	if !write && !id.CanReadTenant(tenantID) {
		return id, auth.PermissionDenied(id, "may not read the suppression list of tenant %q", tenantID)
	}
	return id, nil
}

func (s *suppressionServer) fail(ctx context.Context, err error) error {
	if errors.Is(err, suppress.ErrInvalid) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	s.log.ErrorContext(ctx, "suppression list unavailable", "err", err)
	return status.Error(codes.Unavailable, "suppression list unavailable; try again")
}

func toProto(tenantID string, e suppress.Entry) *mailbusv1.Suppression {
	return &mailbusv1.Suppression{
		TenantId: tenantID, Address: e.Address, Reason: e.Reason, Source: e.Source, Detail: e.Detail,
		CreateTime: timestamppb.New(e.Time),
	}
}

// ListSuppressions pages through a tenant's list, or looks up addresses.
func (s *suppressionServer) ListSuppressions(ctx context.Context, req *mailbusv1.ListSuppressionsRequest) (*mailbusv1.ListSuppressionsResponse, error) {
	if _, err := s.authorize(ctx, req.GetTenantId(), false); err != nil {
		return nil, err
	}
	resp := &mailbusv1.ListSuppressionsResponse{}
	if len(req.GetAddresses()) > 0 {
		if len(req.GetAddresses()) > 1000 {
			return nil, status.Error(codes.InvalidArgument, "at most 1000 addresses per look-up")
		}
		for _, a := range req.GetAddresses() {
			e, ok, err := s.store.Get(ctx, req.GetTenantId(), a)
			if err != nil {
				return nil, s.fail(ctx, err)
			}
			if ok {
				resp.Suppressions = append(resp.Suppressions, toProto(req.GetTenantId(), e))
			}
		}
		return resp, nil
	}
	size := int(req.GetPageSize())
	if size > 1000 {
		size = 1000
	}
	entries, next, err := s.store.List(ctx, req.GetTenantId(), req.GetPageToken(), size)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	for _, e := range entries {
		resp.Suppressions = append(resp.Suppressions, toProto(req.GetTenantId(), e))
	}
	resp.NextPageToken = next
	return resp, nil
}

// AddSuppression puts an address on a tenant's list.
func (s *suppressionServer) AddSuppression(ctx context.Context, req *mailbusv1.AddSuppressionRequest) (*mailbusv1.AddSuppressionResponse, error) {
	in := req.GetSuppression()
	id, err := s.authorize(ctx, in.GetTenantId(), true)
	if err != nil {
		return nil, err
	}
	addr, err := mail.NormalizeMailbox(in.GetAddress())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "suppression.address: %v", err)
	}
	detail := in.GetDetail()
	if detail == "" {
		detail = "added by " + id.String()
	}
	e, err := s.store.Add(ctx, in.GetTenantId(), suppress.Entry{
		Address: addr, Reason: orDefault(in.GetReason(), "manual"), Source: suppress.SourceAPI, Detail: detail,
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &mailbusv1.AddSuppressionResponse{Suppression: toProto(in.GetTenantId(), e)}, nil
}

// RemoveSuppression takes an address off a tenant's list.
func (s *suppressionServer) RemoveSuppression(ctx context.Context, req *mailbusv1.RemoveSuppressionRequest) (*mailbusv1.RemoveSuppressionResponse, error) {
	if _, err := s.authorize(ctx, req.GetTenantId(), true); err != nil {
		return nil, err
	}
	if req.GetAddress() == "" {
		return nil, status.Error(codes.InvalidArgument, "address is required")
	}
	removed, err := s.store.Remove(ctx, req.GetTenantId(), req.GetAddress())
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &mailbusv1.RemoveSuppressionResponse{Removed: removed}, nil
}
