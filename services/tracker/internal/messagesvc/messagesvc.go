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
// Retrying also needs the message sent again, which the tracker cannot do
// (it keeps no message bodies): a Resubmitter, given by the service wiring,
// does it.
package messagesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/mailbus/mailbus/pkg/auth"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/tracker/internal/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	// failed or were deferred.
	Recipients []string
}

// Server implements mailbusv1.MessageServiceServer.
type Server struct {
	mailbusv1.UnimplementedMessageServiceServer

	store    *store.Store
	resubmit Resubmitter
	log      *slog.Logger
}

var _ mailbusv1.MessageServiceServer = (*Server)(nil)

// New returns a server reading st. resubmit may be nil, in which case
// RetryMessage answers Unimplemented.
func New(st *store.Store, resubmit Resubmitter, log *slog.Logger) *Server {
	return &Server{store: st, resubmit: resubmit, log: log}
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
	// Narrow the query to what the caller may see; asking for more is
	// refused rather than silently narrowed, so a client bug shows.
	switch id.Role {
	case auth.RoleTenantAdmin, auth.RoleUser:
		if q.TenantID != "" && q.TenantID != id.TenantID {
			return nil, auth.PermissionDenied(id, "may not list messages of tenant %q", q.TenantID)
		}
		q.TenantID = id.TenantID
		if id.Role == auth.RoleUser {
			if q.UserID != "" && q.UserID != id.UserID {
				return nil, auth.PermissionDenied(id, "may not list messages of user %q", q.UserID)
			}
			q.UserID = id.UserID
		}
	}
	if req.GetPageSize() < 0 {
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	}
	if req.GetStartTime() != nil {
		if err := req.GetStartTime().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "start_time: %v", err)
		}
		q.Start = req.GetStartTime().AsTime()
	}
	if req.GetEndTime() != nil {
		if err := req.GetEndTime().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "end_time: %v", err)
		}
		q.End = req.GetEndTime().AsTime()
	}
	if !q.Start.IsZero() && !q.End.IsZero() && !q.Start.Before(q.End) {
		return nil, status.Error(codes.InvalidArgument, "start_time must be before end_time")
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

// RetryMessage sends the failed and deferred recipients of a message again
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
	// The retry's time is taken before resubmitting, so the events of the
	// new attempt come after it.
	ev, targets := store.RetryEvent(m, s.store.Now())
	if ev == nil {
		return &mailbusv1.RetryMessageResponse{Message: m}, nil
	}
	if s.resubmit == nil {
		return nil, status.Error(codes.Unimplemented, "retrying is not available on this tracker: no resubmitter is configured")
	}
	if err := s.resubmit.Resubmit(ctx, Resubmission{ID: ev.GetEventId(), Message: m, Recipients: targets}); err != nil {
		s.log.WarnContext(ctx, "resubmitting a message failed", "message_id", m.GetId(), "caller", id.String(), "error", err)
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "sending message %q again: %v", m.GetId(), err)
	}
	m, err = s.record(ctx, ev)
	if err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "message retried", "message_id", m.GetId(), "recipients", len(targets), "caller", id.String())
	return &mailbusv1.RetryMessageResponse{Message: m}, nil
}

// CancelMessage records the recipients of a message that are not final yet
// as cancelled.
func (s *Server) CancelMessage(ctx context.Context, req *mailbusv1.CancelMessageRequest) (*mailbusv1.CancelMessageResponse, error) {
	id, err := reader(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.visibleMessage(ctx, id, req.GetId())
	if err != nil {
		return nil, err
	}
	ev, targets := store.CancelEvent(m, s.store.Now())
	if ev == nil {
		return &mailbusv1.CancelMessageResponse{Message: m}, nil
	}
	if m, err = s.record(ctx, ev); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "message cancelled", "message_id", m.GetId(), "recipients", len(targets), "caller", id.String())
	return &mailbusv1.CancelMessageResponse{Message: m}, nil
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
