package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ErrNoTenant is why Handle rejects a record without a tenant: every stage
// looks configuration, limits and suppression lists up by tenant, so such a
// record can never be processed correctly.
var ErrNoTenant = errors.New("record has no tenant_id")

// HandleOption changes what Handle accepts.
type HandleOption func(*handleOptions)

type handleOptions struct {
	allowNoTenant bool
}

// AllowNoTenant accepts records whose tenant_id field is empty, for record
// types where an empty tenant means "the whole platform".
func AllowNoTenant() HandleOption {
	return func(o *handleOptions) { o.allowNoTenant = true }
}

// Handle adapts a typed handler to a watermill handler. The record type is
// inferred from fn:
//
//	r.Handle("route", bus.TopicSubmit, bus.Handle(func(ctx context.Context, msg *message.Message, sub *mailbusv1.Submission) error {
//		...
//	}))
//
// Before calling fn, Handle decodes the payload (see Decode) and, when the
// type has a string field tenant_id, rejects a record where it is empty with
// "record has no tenant_id". Both failures are permanent, so the record goes
// to the poison topic without retries. It also copies the record's ids into
// msg.Metadata (see SetRecordMeta), so that MetaFrom(msg) carries them even
// when the producer set no metadata. ctx is the message's context: it is
// cancelled on timeout and on shutdown.
func Handle[T proto.Message](fn func(ctx context.Context, msg *message.Message, v T) error, opts ...HandleOption) message.NoPublishHandlerFunc {
	var o handleOptions
	for _, opt := range opts {
		opt(&o)
	}
	// A typed nil pointer still knows its message type, which lets us build
	// fresh values without asking the caller for a constructor.
	var zero T
	mt := zero.ProtoReflect().Type()
	tenantField := mt.Descriptor().Fields().ByName("tenant_id")
	if tenantField != nil && (tenantField.Kind() != protoreflect.StringKind || tenantField.IsList()) {
		tenantField = nil
	}
	return func(msg *message.Message) error {
		v := mt.New().Interface().(T)
		if err := Decode(msg, v); err != nil {
			return err
		}
		if tenantField != nil && !o.allowNoTenant && v.ProtoReflect().Get(tenantField).String() == "" {
			return Permanent(fmt.Errorf("%s: %w", mt.Descriptor().FullName(), ErrNoTenant))
		}
		SetRecordMeta(msg.Metadata, v)
		return fn(msg.Context(), msg, v)
	}
}
