// Package messagesvc serves the gRPC MessageService from the tracker's
// message log: it decodes a call, checks who may see what, calls the store
// and maps its errors to status codes.
//
// Who sees what: an admin sees every message; a tenant_admin the messages
// of their tenant; a user the messages of their tenant that they sent
// (user_id). The pipeline role and unknown roles get PermissionDenied. A
// message that exists but is not the caller's is reported exactly like one
// that does not exist (NotFound), so that ids cannot be probed. A listing
// that asks for another tenant or user than the caller may see is refused
// with PermissionDenied, which says nothing about any message.
//
// RetryMessage and CancelMessage record the caller's intent in the log as
// events of stage "tracker" (see store.RetryEvent and store.CancelEvent),
// which the log folds like any other event. Both are idempotent: a repeat
// finds nothing left to retry or cancel and returns the message as it is.
// Retrying also needs the message sent again: a Resubmitter, given by the
// service wiring, does it (the tracker's sends the stored submission to
// the router). Cancelling also needs the pipeline to stop the message's
// deliveries: a Canceller sets the marker that quota, the signer and the
// sender check (pkg/cancelled) before the log records it. A cancelled
// message is not retried.
//
// RetryMessages and CancelMessages do the same for every message that
// matches a filter, one bounded page per call, and count what they did;
// the caller pages on with next_page_token. A refusal (a message past its
// retention, a cancelled one) is counted with its reason and the page goes
// on; an error that a repeat can fix (the broker or Redis away) ends the
// call, and the repeat finds done what was done.
package messagesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Resubmitter sends a message again to some of its recipients; the service
// wiring implements it (for example by republishing the original
// submission to mail.submit).
//
// RetryMessage calls Resubmit before it records the retry, so that a
// recipient is never shown queued when nothing was sent again. If Resubmit
// succeeds but recording fails, the caller's repeat calls Resubmit again
// with the same Resubmission.ID: implementations should drop repeats of an
// ID they have already handled (for example by using it as the
// submission's idempotency id). The republished deliveries must keep the
// message's id so that their events land on the same log entry.
type Resubmitter interface {
	// Resubmit sends message again to recipients. An error fails the
	// retry, which records nothing; a gRPC status error is passed to the
	// caller as it is, any other error becomes Unavailable.
	Resubmit(ctx context.Context, r Resubmission) error
}

// ResubmitterFunc adapts a function to Resubmitter.
type ResubmitterFunc func(ctx context.Context, r Resubmission) error

// Resubmit calls f.
func (f ResubmitterFunc) Resubmit(ctx context.Context, r Resubmission) error { return f(ctx, r) }

// Resubmission is one retry of a message.
type Resubmission struct {
	// ID is the same for repeats of the same retry (it is the event id of
	// the retry in the log); see Resubmitter.
	ID string
	// Message is the message as it was before the retry, with its summary,
	// recipients and history.
	Message *mailbusv1.Message
	// Recipients are the addresses to send to again: those that had
	// failed or bounced.
	Recipients []string
	// Retry counts the message's retries, from 1.
	Retry int32
	// By is the caller who asked for it.
	By string
}

// Canceller stops the deliveries of a message that the pipeline still
// holds (pkg/cancelled's marker). An error fails the cancellation, which
// records nothing.
type Canceller interface {
	Cancel(ctx context.Context, tenantID, messageID string) error
}

// CancellerFunc adapts a function to Canceller.
type CancellerFunc func(ctx context.Context, tenantID, messageID string) error

// Cancel calls f.
func (f CancellerFunc) Cancel(ctx context.Context, tenantID, messageID string) error {
	return f(ctx, tenantID, messageID)
}

// Deps are the server's collaborators.
type Deps struct {
	// Resubmit sends retried messages again; nil makes RetryMessage answer
	// Unimplemented.
	Resubmit Resubmitter
	// Cancel stops cancelled messages in the pipeline; nil only records
	// the cancellation in the log.
	Cancel Canceller
	Log    *slog.Logger
}

// Server implements mailbusv1.MessageServiceServer.
type Server struct {
	mailbusv1.UnimplementedMessageServiceServer

	store    *store.Store
	resubmit Resubmitter
	cancel   Canceller
	log      *slog.Logger
}

var _ mailbusv1.MessageServiceServer = (*Server)(nil)

// New returns a server reading st.
func New(st *store.Store, deps Deps) *Server {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{store: st, resubmit: deps.Resubmit, cancel: deps.Cancel, log: deps.Log}
}

// Register registers the server on a gRPC server, whose interceptors must
// authenticate callers (auth.NewInterceptor): every method reads the
// identity with auth.FromContext.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	mailbusv1.RegisterMessageServiceServer(r, s)
}

// GetMessage returns a message with its recipients and history.
func (s *Server) GetMessage(ctx context.Context, req *mailbusv1.GetMessageRequest) (*mailbusv1.GetMessageResponse, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.visibleMessage(ctx, id, req.GetId())
	if err != nil {
		return nil, err
	}
	return &mailbusv1.GetMessageResponse{Message: m}, nil
}

// ListMessages returns a page of the messages the caller may see, newest
// first, without history.
func (s *Server) ListMessages(ctx context.Context, req *mailbusv1.ListMessagesRequest) (*mailbusv1.ListMessagesResponse, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	q := store.ListQuery{
		TenantID:  req.GetTenantId(),
		UserID:    req.GetUserId(),
		Status:    req.GetStatus(),
		PageSize:  int(req.GetPageSize()),
		PageToken: req.GetPageToken(),
	}
	if err := narrow(id, &q, req.GetStartTime(), req.GetEndTime()); err != nil {
		return nil, err
	}
	if req.GetPageSize() < 0 {
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	}
	page, err := s.store.List(ctx, q)
	if errors.Is(err, store.ErrInvalidPageToken) {
		return nil, status.Error(codes.InvalidArgument, "page_token is not valid for these filters")
	}
	if err != nil {
		return nil, s.internal(ctx, "listing messages", err)
	}
	return &mailbusv1.ListMessagesResponse{Messages: page.Messages, NextPageToken: page.NextPageToken}, nil
}

// RetryMessage sends the failed and bounced recipients of a message again
// and records them as queued.
func (s *Server) RetryMessage(ctx context.Context, req *mailbusv1.RetryMessageRequest) (*mailbusv1.RetryMessageResponse, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.visibleMessage(ctx, id, req.GetId())
	if err != nil {
		return nil, err
	}
	m, _, err = s.retry(ctx, id, m)
	if err != nil {
		return nil, err
	}
	return &mailbusv1.RetryMessageResponse{Message: m}, nil
}

// retry retries m for the caller id and returns the message afterwards and
// how many recipients it retried.
func (s *Server) retry(ctx context.Context, id auth.Identity, m *mailbusv1.Message) (*mailbusv1.Message, int, error) {
	if c := store.Cancelled(m); c != nil {
		return nil, 0, status.Errorf(codes.FailedPrecondition, "message %q was cancelled at %s (%s); a cancelled message is not retried",
			m.GetId(), c.GetOccurTime().AsTime().UTC().Format(time.RFC3339), c.GetDetail())
	}
	// The retry's time is taken before resubmitting, so the events of the
	// new attempt come after it.
	ev, targets := store.RetryEvent(m, s.store.Now(), id.String())
	if ev == nil {
		return m, 0, nil
	}
	if s.resubmit == nil {
		return nil, 0, status.Error(codes.Unimplemented, "retrying is not available on this tracker: no resubmitter is configured")
	}
	r := Resubmission{ID: ev.GetEventId(), Message: m, Recipients: targets, Retry: store.RetryCount(m) + 1, By: id.String()}
	if err := s.resubmit.Resubmit(ctx, r); err != nil {
		s.log.WarnContext(ctx, "resubmitting a message failed", "message_id", m.GetId(), "caller", id.String(), "error", err)
		if _, ok := status.FromError(err); ok {
			return nil, 0, err
		}
		return nil, 0, status.Errorf(codes.Unavailable, "sending message %q again: %v", m.GetId(), err)
	}
	m, err := s.record(ctx, ev)
	if err != nil {
		return nil, 0, err
	}
	s.log.InfoContext(ctx, "message retried", "message_id", m.GetId(), "recipients", len(targets), "retry", r.Retry, "caller", id.String())
	return m, len(targets), nil
}

// CancelMessage stops the recipients of a message that are not final yet
// and records them as cancelled.
func (s *Server) CancelMessage(ctx context.Context, req *mailbusv1.CancelMessageRequest) (*mailbusv1.CancelMessageResponse, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.visibleMessage(ctx, id, req.GetId())
	if err != nil {
		return nil, err
	}
	m, _, err = s.cancelOne(ctx, id, m)
	if err != nil {
		return nil, err
	}
	return &mailbusv1.CancelMessageResponse{Message: m}, nil
}

func (s *Server) cancelOne(ctx context.Context, id auth.Identity, m *mailbusv1.Message) (*mailbusv1.Message, int, error) {
	ev, targets := store.CancelEvent(m, s.store.Now(), id.String())
	if ev == nil {
		return m, 0, nil
	}
	// The marker goes first: once the log says cancelled, the pipeline
	// must already be stopping the message.
	if s.cancel != nil {
		if err := s.cancel.Cancel(ctx, m.GetTenantId(), m.GetId()); err != nil {
			s.log.WarnContext(ctx, "setting a cancel marker failed", "message_id", m.GetId(), "caller", id.String(), "error", err)
			return nil, 0, status.Errorf(codes.Unavailable, "cancelling message %q: %v", m.GetId(), err)
		}
	}
	m, err := s.record(ctx, ev)
	if err != nil {
		return nil, 0, err
	}
	s.log.InfoContext(ctx, "message cancelled", "message_id", m.GetId(), "recipients", len(targets), "caller", id.String())
	return m, len(targets), nil
}

// Page sizes of the bulk actions: each message of a page is read whole
// and acted on, so pages are smaller than listings'.
const (
	DefaultBulkPageSize = 100
	MaxBulkPageSize     = 500
)

// RetryMessages retries a page of the messages that match a filter.
func (s *Server) RetryMessages(ctx context.Context, req *mailbusv1.RetryMessagesRequest) (*mailbusv1.RetryMessagesResponse, error) {
	res, err := s.bulk(ctx, req.GetFilter(), req.GetPageSize(), req.GetPageToken(), s.retry)
	if err != nil {
		return nil, err
	}
	return &mailbusv1.RetryMessagesResponse{Result: res}, nil
}

// CancelMessages cancels a page of the messages that match a filter.
func (s *Server) CancelMessages(ctx context.Context, req *mailbusv1.CancelMessagesRequest) (*mailbusv1.CancelMessagesResponse, error) {
	res, err := s.bulk(ctx, req.GetFilter(), req.GetPageSize(), req.GetPageToken(), s.cancelOne)
	if err != nil {
		return nil, err
	}
	return &mailbusv1.CancelMessagesResponse{Result: res}, nil
}

type action func(ctx context.Context, id auth.Identity, m *mailbusv1.Message) (*mailbusv1.Message, int, error)

func (s *Server) bulk(ctx context.Context, f *mailbusv1.MessageFilter, size int32, token string, act action) (*mailbusv1.BulkResult, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case size < 0:
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	case size == 0:
		size = DefaultBulkPageSize
	case size > MaxBulkPageSize:
		size = MaxBulkPageSize
	}
	q := store.ListQuery{
		TenantID: f.GetTenantId(), UserID: f.GetUserId(), Status: f.GetStatus(), RelayID: f.GetRelayId(),
		CampaignID: f.GetCampaignId(), PageSize: int(size), PageToken: token,
	}
	if err := narrow(id, &q, f.GetStartTime(), f.GetEndTime()); err != nil {
		return nil, err
	}
	page, err := s.store.List(ctx, q)
	if errors.Is(err, store.ErrInvalidPageToken) {
		return nil, status.Error(codes.InvalidArgument, "page_token is not valid for this filter")
	}
	if err != nil {
		return nil, s.internal(ctx, "listing messages", err)
	}
	res := &mailbusv1.BulkResult{NextPageToken: page.NextPageToken, Refused: map[string]string{}}
	for _, lm := range page.Messages {
		res.Matched++
		m, err := s.store.Message(ctx, lm.GetId())
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, s.internal(ctx, "reading message "+lm.GetId(), err)
		}
		_, n, err := act(ctx, id, m)
		if err != nil {
			switch status.Code(err) {
			case codes.FailedPrecondition, codes.InvalidArgument, codes.NotFound:
				res.Refused[m.GetId()] = status.Convert(err).Message()
				continue
			}
			// What a repeat can fix ends the call; the repeat finds done
			// what was done.
			return nil, err
		}
		if n == 0 {
			res.Unchanged++
			continue
		}
		res.Changed++
		res.Recipients += int32(n)
	}
	s.log.InfoContext(ctx, "bulk action", "caller", id.String(), "matched", res.GetMatched(), "changed", res.GetChanged(),
		"recipients", res.GetRecipients(), "refused", len(res.GetRefused()))
	return res, nil
}

// narrow limits q to what the caller may see and sets its time bounds.
// Asking for more than the caller may see is refused rather than silently
// narrowed, so a client bug shows.
func narrow(id auth.Identity, q *store.ListQuery, start, end *timestamppb.Timestamp) error {
	switch id.Role {
	case auth.RoleTenantAdmin, auth.RoleUser:
		if q.TenantID != "" && q.TenantID != id.TenantID {
			return auth.PermissionDenied(id, "may not list messages of tenant %q", q.TenantID)
		}
		q.TenantID = id.TenantID
		if id.Role == auth.RoleUser {
			if q.UserID != "" && q.UserID != id.UserID {
				return auth.PermissionDenied(id, "may not list messages of user %q", q.UserID)
			}
			q.UserID = id.UserID
		}
	}
	if start != nil {
		if err := start.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "start_time: %v", err)
		}
		q.Start = start.AsTime()
	}
	if end != nil {
		if err := end.CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "end_time: %v", err)
		}
		q.End = end.AsTime()
	}
	if !q.Start.IsZero() && !q.End.IsZero() && !q.Start.Before(q.End) {
		return status.Error(codes.InvalidArgument, "start_time must be before end_time")
	}
	return nil
}

// reader returns the caller's identity if its role may read messages.
func reader(ctx context.Context) (auth.Identity, error) {
	id, err := auth.Require(ctx)
	if err != nil {
		return id, err
	}
	switch id.Role {
	case auth.RoleAdmin, auth.RoleTenantAdmin, auth.RoleUser:
		return id, nil
	}
	return id, auth.PermissionDenied(id, "may not use MessageService")
}

// visible reports whether the identity may see m.
func visible(id auth.Identity, m *mailbusv1.Message) bool {
	switch id.Role {
	case auth.RoleAdmin:
		return true
	case auth.RoleTenantAdmin:
		return id.TenantID != "" && m.GetTenantId() == id.TenantID
	case auth.RoleUser:
		return id.TenantID != "" && id.UserID != "" && m.GetTenantId() == id.TenantID && m.GetUserId() == id.UserID
	}
	return false
}

// visibleMessage loads a message that the identity may see; any other is
// NotFound, whether it exists or not.
func (s *Server) visibleMessage(ctx context.Context, id auth.Identity, msgID string) (*mailbusv1.Message, error) {
	if msgID == "" {
		return nil, status.Error(codes.InvalidArgument, "id is required")
	}
	m, err := s.store.Message(ctx, msgID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !visible(id, m)) {
		return nil, status.Errorf(codes.NotFound, "message %q not found", msgID)
	}
	if err != nil {
		return nil, s.internal(ctx, "reading message "+msgID, err)
	}
	return m, nil
}

// record applies an event of the tracker's own and returns the message as
// it is afterwards.
func (s *Server) record(ctx context.Context, ev *mailbusv1.DeliveryEvent) (*mailbusv1.Message, error) {
	if _, err := s.store.Apply(ctx, ev); err != nil {
		return nil, s.internal(ctx, "recording "+ev.GetReason()+" of message "+ev.GetMessageId(), err)
	}
	m, err := s.store.Message(ctx, ev.GetMessageId())
	if err != nil {
		return nil, s.internal(ctx, "reading message "+ev.GetMessageId(), err)
	}
	return m, nil
}

// internal logs err and returns an Internal status that does not expose
// database details.
func (s *Server) internal(ctx context.Context, doing string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	s.log.ErrorContext(ctx, doing+" failed", "error", err)
	return status.Error(codes.Internal, fmt.Sprintf("%s failed", doing))
}
