package bus

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Metadata keys. Every record carries the tenant, the message id, the
// delivery id (once there is one), a correlation id and a W3C trace context,
// so that a record can be routed, deduplicated and traced without decoding
// its payload.
const (
	// MetaCorrelationID is watermill's correlation key, so that its
	// CorrelationID middleware and ours agree.
	MetaCorrelationID = middleware.CorrelationIDMetadataKey
	MetaTenantID      = "tenant_id"
	MetaMessageID     = "message_id"
	MetaDeliveryID    = "delivery_id"
	// MetaIdempotencyID is the submission's idempotency id; it keys
	// submissions, which have no message id yet.
	MetaIdempotencyID = "idempotency_id"
	MetaContentType   = "content-type"
	// MetaTraceparent and MetaTracestate are the W3C trace context headers
	// (https://www.w3.org/TR/trace-context/).
	MetaTraceparent = "traceparent"
	MetaTracestate  = "tracestate"
)

// Metadata keys that the poison queue adds to a record it takes. The first
// four are watermill's own; the rest are ours because watermill does not
// record where in Kafka the record was.
const (
	// MetaPoisonReason is the error that made the record poison.
	MetaPoisonReason = middleware.ReasonForPoisonedKey
	// MetaPoisonTopic is the topic the record was consumed from.
	MetaPoisonTopic = middleware.PoisonedTopicKey
	// MetaPoisonHandler is the router handler that failed.
	MetaPoisonHandler = middleware.PoisonedHandlerKey
	// MetaPoisonSubscriber is the subscriber type name.
	MetaPoisonSubscriber = middleware.PoisonedSubscriberKey
	// MetaPoisonPartition and MetaPoisonOffset locate the original record.
	MetaPoisonPartition = "partition_poisoned"
	MetaPoisonOffset    = "offset_poisoned"
	// MetaPoisonPermanent is "true" when the handler said the failure was
	// permanent (no retries were made), "false" when retries ran out.
	MetaPoisonPermanent = "permanent_poisoned"
)

// propagated are the keys that follow a record into every record produced
// while handling it.
var propagated = [...]string{
	MetaCorrelationID, MetaTenantID, MetaMessageID, MetaDeliveryID,
	MetaIdempotencyID, MetaTraceparent, MetaTracestate,
}

// recordFields maps proto field names to the metadata key they fill. Field
// names are the same in Submission, Delivery and DeliveryEvent, so one
// reflective look-up serves all of them and any future record type.
var recordFields = [...]struct {
	field protoreflect.Name
	key   string
}{
	{"tenant_id", MetaTenantID},
	{"message_id", MetaMessageID},
	{"delivery_id", MetaDeliveryID},
	{"idempotency_id", MetaIdempotencyID},
}

// SetRecordMeta copies the record's tenant_id, message_id, delivery_id and
// idempotency_id fields (those it has and that are not empty) into md. It
// works for Submission, Delivery, DeliveryEvent and any message with fields
// of those names. The record wins over what md already holds: the payload is
// the truth and the metadata a copy of it.
func SetRecordMeta(md message.Metadata, m proto.Message) {
	if m == nil {
		return
	}
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	for _, rf := range recordFields {
		fd := fields.ByName(rf.field)
		if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() {
			continue
		}
		if v := r.Get(fd).String(); v != "" {
			md.Set(rf.key, v)
		}
	}
}

// MetaFrom returns the metadata that a record produced while handling in
// must carry: correlation id, tenant, message id, delivery id, idempotency
// id and trace context. Pass it to Encode or Publish.
func MetaFrom(in *message.Message) message.Metadata {
	md := make(message.Metadata, len(propagated))
	CopyMeta(md, in.Metadata)
	return md
}

// CopyMeta copies the propagated keys (see MetaFrom) from src to dst,
// leaving every other key of dst alone.
func CopyMeta(dst, src message.Metadata) {
	for _, k := range propagated {
		if v := src.Get(k); v != "" {
			dst.Set(k, v)
		}
	}
}

// NewTraceparent returns a W3C traceparent for a new sampled trace. Encode
// uses it for records that enter the system without one, so that every
// record can be followed.
func NewTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	// An all-zero trace or span id is invalid; the odds are 2^-64, but
	// cheap to rule out.
	b[15] |= 1
	b[23] |= 1
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// ValidTraceparent reports whether s is a well-formed version-00 W3C
// traceparent with non-zero ids.
func ValidTraceparent(s string) bool {
	// 00-<32 hex>-<16 hex>-<2 hex>
	if len(s) != 55 || s[0:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return false
	}
	traceID, spanID, flags := s[3:35], s[36:52], s[53:55]
	return isLowerHex(traceID) && isLowerHex(spanID) && isLowerHex(flags) &&
		!allZero(traceID) && !allZero(spanID)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
