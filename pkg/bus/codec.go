package bus

import (
	"bytes"
	"fmt"
	"mime"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Content types of record payloads.
const (
	// ContentTypeProtobuf is what Encode writes and the default on decode.
	ContentTypeProtobuf = "application/x-protobuf"
	// ContentTypeProtobufAlt is accepted on decode as a synonym.
	ContentTypeProtobufAlt = "application/protobuf"
	// ContentTypeJSON is protojson (proto3 JSON mapping), accepted on decode
	// so that producers without protobuf tooling can publish submissions.
	ContentTypeJSON = "application/json"
)

// Encode builds a watermill message whose payload is m in protobuf binary
// form. The message's metadata is meta (copied, may be nil) plus:
//   - content-type application/x-protobuf;
//   - tenant_id, message_id, delivery_id, idempotency_id from m's fields
//     when it has them (see SetRecordMeta);
//   - a new correlation_id and traceparent when meta has none, so that every
//     record in the system can be correlated and traced.
//
// Records are always written as protobuf, whatever the input was: JSON is
// only an entry format for producers.
func Encode(m proto.Message, meta message.Metadata) (*message.Message, error) {
	payload, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	for k, v := range meta {
		msg.Metadata.Set(k, v)
	}
	msg.Metadata.Set(MetaContentType, ContentTypeProtobuf)
	SetRecordMeta(msg.Metadata, m)
	if msg.Metadata.Get(MetaCorrelationID) == "" {
		msg.Metadata.Set(MetaCorrelationID, watermill.NewUUID())
	}
	if !ValidTraceparent(msg.Metadata.Get(MetaTraceparent)) {
		msg.Metadata.Set(MetaTraceparent, NewTraceparent())
		// A tracestate without its traceparent is meaningless.
		delete(msg.Metadata, MetaTracestate)
	}
	return msg, nil
}

// Decode unmarshals msg's payload into into, choosing the format by the
// content-type metadata: application/x-protobuf or application/protobuf is
// protobuf binary, application/json is protojson with unknown fields
// rejected (a misspelt field must not silently drop part of an email). When
// content-type is missing, a payload whose first non-space byte is '{' is
// JSON and anything else protobuf.
//
// Every error Decode returns is permanent (see IsPermanent): the same bytes
// will never decode on a retry. The error names the type, the format and
// what was wrong, e.g.
// `decode mailbus.v1.Submission from application/json: proto: (line 1:2): unknown field "foo"`.
func Decode(msg *message.Message, into proto.Message) error {
	name := into.ProtoReflect().Descriptor().FullName()
	ct, sniffed, err := contentType(msg)
	if err != nil {
		return Permanent(fmt.Errorf("decode %s: %w", name, err))
	}
	from := ct
	if sniffed {
		from += " (sniffed, no content-type)"
	}
	switch ct {
	case ContentTypeJSON:
		err = protojson.Unmarshal(msg.Payload, into)
	default:
		err = proto.Unmarshal(msg.Payload, into)
	}
	if err != nil {
		return Permanent(fmt.Errorf("decode %s from %s: %w", name, from, err))
	}
	return nil
}

// contentType returns the payload's media type, normalised, and whether it
// was guessed from the payload.
func contentType(msg *message.Message) (ct string, sniffed bool, err error) {
	raw := strings.TrimSpace(msg.Metadata.Get(MetaContentType))
	if raw == "" {
		trimmed := bytes.TrimLeft(msg.Payload, " \t\r\n")
		if len(trimmed) > 0 && trimmed[0] == '{' {
			return ContentTypeJSON, true, nil
		}
		return ContentTypeProtobuf, true, nil
	}
	mt, _, err := mime.ParseMediaType(raw)
	if err != nil {
		return "", false, fmt.Errorf("content-type %q: %w", raw, err)
	}
	switch mt {
	case ContentTypeProtobuf, ContentTypeProtobufAlt:
		return ContentTypeProtobuf, false, nil
	case ContentTypeJSON:
		return ContentTypeJSON, false, nil
	default:
		return "", false, fmt.Errorf("unsupported content-type %q (want %s or %s)", raw, ContentTypeProtobuf, ContentTypeJSON)
	}
}
