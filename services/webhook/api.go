package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/webhook/internal/sign"
	"github.com/mailbus/mailbus/services/webhook/internal/store"
)

// api serves WebhookService. The server's interceptor (auth.NewInterceptor)
// authenticates callers; every method authorises by tenant: admins for
// all tenants, tenant admins for their own. Secrets are returned only by
// create and rotate, once.
type api struct {
	mailbusv1.UnimplementedWebhookServiceServer
	s *Service
}

// defaultOverlap is how long a rotated-out secret keeps signing when the
// caller does not say.
const defaultOverlap = 24 * time.Hour

func (a *api) CreateWebhookEndpoint(ctx context.Context, req *mailbusv1.CreateWebhookEndpointRequest) (*mailbusv1.CreateWebhookEndpointResponse, error) {
	in := req.GetEndpoint()
	if err := writer(ctx, in.GetTenantId()); err != nil {
		return nil, err
	}
	if err := a.validate(in); err != nil {
		return nil, err
	}
	id := in.GetId()
	if id == "" {
		id = newID("whe_")
	}
	secret, err := sign.NewSecret()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sealed, err := a.s.sealer.Seal([]byte(secret), secretAAD(id))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "seal webhook secret: %v", err)
	}
	now := time.Now()
	e := store.Endpoint{ID: id, TenantID: in.GetTenantId(), URL: in.GetUrl(), Description: in.GetDescription(),
		EventTypes: in.GetEventTypes(), FinalOnly: in.GetFinalOnly(), Active: in.GetActive(),
		SealedSecret: sealed, Created: now, Updated: now}
	if err := a.s.store.CreateEndpoint(ctx, e); err != nil {
		if _, gerr := a.s.store.GetEndpoint(ctx, id); gerr == nil {
			return nil, status.Errorf(codes.AlreadyExists, "webhook endpoint %q exists", id)
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := a.s.reload(ctx); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &mailbusv1.CreateWebhookEndpointResponse{Endpoint: toProto(e), Secret: secret}, nil
}

func (a *api) GetWebhookEndpoint(ctx context.Context, req *mailbusv1.GetWebhookEndpointRequest) (*mailbusv1.GetWebhookEndpointResponse, error) {
	e, err := a.load(ctx, req.GetId(), false)
	if err != nil {
		return nil, err
	}
	return &mailbusv1.GetWebhookEndpointResponse{Endpoint: toProto(e)}, nil
}

func (a *api) UpdateWebhookEndpoint(ctx context.Context, req *mailbusv1.UpdateWebhookEndpointRequest) (*mailbusv1.UpdateWebhookEndpointResponse, error) {
	in := req.GetEndpoint()
	e, err := a.load(ctx, in.GetId(), true)
	if err != nil {
		return nil, err
	}
	if in.GetTenantId() != "" && in.GetTenantId() != e.TenantID {
		return nil, status.Error(codes.InvalidArgument, "tenant_id of a webhook endpoint cannot change")
	}
	in = proto.CloneOf(in)
	in.TenantId = e.TenantID
	if err := a.validate(in); err != nil {
		return nil, err
	}
	e.URL, e.Description, e.EventTypes = in.GetUrl(), in.GetDescription(), in.GetEventTypes()
	e.FinalOnly, e.Active, e.Updated = in.GetFinalOnly(), in.GetActive(), time.Now()
	if err := a.s.store.UpdateEndpoint(ctx, e); err != nil {
		return nil, storeErr(err)
	}
	if err := a.s.reload(ctx); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &mailbusv1.UpdateWebhookEndpointResponse{Endpoint: toProto(e)}, nil
}

func (a *api) DeleteWebhookEndpoint(ctx context.Context, req *mailbusv1.DeleteWebhookEndpointRequest) (*mailbusv1.DeleteWebhookEndpointResponse, error) {
	if _, err := a.load(ctx, req.GetId(), true); err != nil {
		return nil, err
	}
	if err := a.s.store.DeleteEndpoint(ctx, req.GetId()); err != nil {
		return nil, storeErr(err)
	}
	if err := a.s.reload(ctx); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &mailbusv1.DeleteWebhookEndpointResponse{}, nil
}

func (a *api) ListWebhookEndpoints(ctx context.Context, req *mailbusv1.ListWebhookEndpointsRequest) (*mailbusv1.ListWebhookEndpointsResponse, error) {
	tenant, err := readerScope(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	eps, err := a.s.store.ListEndpoints(ctx, tenant)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &mailbusv1.ListWebhookEndpointsResponse{}
	for _, e := range eps {
		out.Endpoints = append(out.Endpoints, toProto(e))
	}
	return out, nil
}

func (a *api) RotateWebhookSecret(ctx context.Context, req *mailbusv1.RotateWebhookSecretRequest) (*mailbusv1.RotateWebhookSecretResponse, error) {
	e, err := a.load(ctx, req.GetId(), true)
	if err != nil {
		return nil, err
	}
	if req.GetOverlapSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "overlap_seconds must not be negative")
	}
	overlap := time.Duration(req.GetOverlapSeconds()) * time.Second
	if overlap == 0 {
		overlap = defaultOverlap
	}
	secret, err := sign.NewSecret()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sealed, err := a.s.sealer.Seal([]byte(secret), secretAAD(e.ID))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "seal webhook secret: %v", err)
	}
	now := time.Now()
	// The secret in use until now signs alongside the new one during the
	// overlap, so receivers can switch at any moment within it.
	if err := a.s.store.RotateSecret(ctx, e.ID, sealed, e.SealedSecret, now.Add(overlap), now); err != nil {
		return nil, storeErr(err)
	}
	if err := a.s.reload(ctx); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	e.PreviousExpire, e.Updated = now.Add(overlap), now
	return &mailbusv1.RotateWebhookSecretResponse{Endpoint: toProto(e), Secret: secret}, nil
}

func (a *api) ListDeadLetters(ctx context.Context, req *mailbusv1.ListDeadLettersRequest) (*mailbusv1.ListDeadLettersResponse, error) {
	tenant, err := readerScope(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	case size == 0:
		size = 100
	case size > 1000:
		size = 1000
	}
	var after int64
	if t := req.GetPageToken(); t != "" {
		if after, err = strconv.ParseInt(t, 10, 64); err != nil {
			return nil, status.Error(codes.InvalidArgument, "page_token is not valid")
		}
	}
	dls, err := a.s.store.ListDead(ctx, tenant, req.GetEndpointId(), after, size+1)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &mailbusv1.ListDeadLettersResponse{}
	if len(dls) > size {
		dls = dls[:size]
		out.NextPageToken = strconv.FormatInt(dls[size-1].Seq, 10)
	}
	for _, d := range dls {
		ev := &mailbusv1.DeliveryEvent{}
		if err := proto.Unmarshal(d.Event, ev); err != nil {
			return nil, status.Errorf(codes.Internal, "decode dead letter %s: %v", d.WebhookID, err)
		}
		out.DeadLetters = append(out.DeadLetters, &mailbusv1.WebhookDeadLetter{
			WebhookId: d.WebhookID, EndpointId: d.EndpointID, TenantId: d.TenantID, Event: ev,
			Attempts: int32(d.Attempts), LastError: d.Error,
			CreateTime: timestamppb.New(d.Created), DeadTime: timestamppb.New(d.Dead),
		})
	}
	return out, nil
}

func (a *api) ReplayDeadLetters(ctx context.Context, req *mailbusv1.ReplayDeadLettersRequest) (*mailbusv1.ReplayDeadLettersResponse, error) {
	id, err := auth.Require(ctx)
	if err != nil {
		return nil, err
	}
	tenant := req.GetTenantId()
	if tenant == "" && id.Role == auth.RoleTenantAdmin {
		tenant = id.TenantID
	}
	if tenant == "" && !id.IsAdmin() {
		return nil, auth.PermissionDenied(id, "may not replay every tenant's dead letters")
	}
	if tenant != "" && !id.CanWriteTenant(tenant) {
		return nil, auth.PermissionDenied(id, "may not replay dead letters of tenant %q", tenant)
	}
	n, err := a.s.store.Replay(ctx, tenant, req.GetEndpointId(), req.GetWebhookIds(), time.Now())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	a.s.mu.Lock()
	for _, l := range a.s.lanes {
		l.wake()
	}
	a.s.mu.Unlock()
	return &mailbusv1.ReplayDeadLettersResponse{Replayed: n}, nil
}

// load reads an endpoint the caller may read (or, with write, change); an
// endpoint of another tenant is NotFound, not PermissionDenied, so ids of
// other tenants' endpoints cannot be probed.
func (a *api) load(ctx context.Context, id string, write bool) (store.Endpoint, error) {
	who, err := auth.Require(ctx)
	if err != nil {
		return store.Endpoint{}, err
	}
	if id == "" {
		return store.Endpoint{}, status.Error(codes.InvalidArgument, "id is required")
	}
	e, err := a.s.store.GetEndpoint(ctx, id)
	if err != nil {
		return e, storeErr(err)
	}
	if !who.CanReadTenant(e.TenantID) {
		return e, status.Errorf(codes.NotFound, "webhook endpoint %q not found", id)
	}
	if write && !who.CanWriteTenant(e.TenantID) {
		return e, auth.PermissionDenied(who, "may not change webhook endpoints of tenant %q", e.TenantID)
	}
	return e, nil
}

func (a *api) validate(e *mailbusv1.WebhookEndpoint) error {
	if e.GetTenantId() == "" {
		return status.Error(codes.InvalidArgument, "tenant_id is required")
	}
	if err := ValidURL(e.GetUrl(), a.s.cfg.AllowHTTP); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	for _, t := range e.GetEventTypes() {
		if !slices.Contains(EventTypes, t) {
			return status.Errorf(codes.InvalidArgument, "unknown event type %q (one of %s)", t, strings.Join(EventTypes, ", "))
		}
	}
	return nil
}

// ValidURL checks an endpoint URL: absolute, https (http only when
// allowHTTP, in development), with a host and no user information (a
// password in a URL would be stored and shown in plain text).
func ValidURL(raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTP:
	case u.Scheme == "http":
		return errors.New("url must be https:// (http:// is allowed only in development)")
	default:
		return fmt.Errorf("url must be https://, not %q", raw)
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("url has no host")
	}
	if u.User != nil {
		return errors.New("url must not carry user information")
	}
	return nil
}

// writer checks that the caller may change a tenant's endpoints.
func writer(ctx context.Context, tenant string) error {
	id, err := auth.Require(ctx)
	if err != nil {
		return err
	}
	if tenant != "" && !id.CanWriteTenant(tenant) {
		return auth.PermissionDenied(id, "may not change webhook endpoints of tenant %q", tenant)
	}
	return nil
}

// readerScope is the tenant a read is limited to: the one asked for, if
// the caller may read it; a tenant admin's own when none is asked for; all
// ("") only for admins.
func readerScope(ctx context.Context, tenant string) (string, error) {
	id, err := auth.Require(ctx)
	if err != nil {
		return "", err
	}
	switch id.Role {
	case auth.RoleAdmin:
		return tenant, nil
	case auth.RoleTenantAdmin:
		if tenant == "" {
			return id.TenantID, nil
		}
		if id.CanReadTenant(tenant) {
			return tenant, nil
		}
		return "", auth.PermissionDenied(id, "may not read webhooks of tenant %q", tenant)
	}
	return "", auth.PermissionDenied(id, "may not use WebhookService")
}

func storeErr(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return status.Error(codes.NotFound, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func toProto(e store.Endpoint) *mailbusv1.WebhookEndpoint {
	out := &mailbusv1.WebhookEndpoint{
		Id: e.ID, TenantId: e.TenantID, Url: e.URL, Description: e.Description, EventTypes: e.EventTypes,
		FinalOnly: e.FinalOnly, Active: e.Active,
		CreateTime: timestamppb.New(e.Created), UpdateTime: timestamppb.New(e.Updated),
	}
	if !e.PreviousExpire.IsZero() {
		out.PreviousSecretExpireTime = timestamppb.New(e.PreviousExpire)
	}
	return out
}
