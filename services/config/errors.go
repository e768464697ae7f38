package config

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/services/config/internal/store"
)

// toStatus maps a store or validation error onto a gRPC status. Unknown
// errors are logged and returned as Internal without their text, which may
// name tables or hosts.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		fe *store.FieldError
		ce *store.ConflictError
		pe *store.PreconditionError
	)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &fe):
		return invalidArgument(&errdetails.BadRequest_FieldViolation{Field: fe.Field, Description: fe.Reason})
	case errors.As(err, &ce):
		st := status.New(codes.AlreadyExists, ce.Error())
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: ce.Field, Description: ce.Reason}}}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.As(err, &pe):
		st := status.New(codes.FailedPrecondition, pe.Description)
		if d, derr := st.WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{
			Type: pe.Type, Subject: pe.Subject, Description: pe.Description,
		}}}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	default:
		log.ErrorContext(ctx, "config request failed", "err", err)
		return status.Error(codes.Internal, "internal error; see the config service log")
	}
}

func violation(field, description string) *errdetails.BadRequest_FieldViolation {
	return &errdetails.BadRequest_FieldViolation{Field: field, Description: description}
}
