package webhook

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// EventTypes are the types an endpoint can ask for: one per status, and
// "warning" for warnings that are about no recipient (relay_disabled).
var EventTypes = []string{
	"message.queued", "message.sent", "message.deferred", "message.bounced", "message.failed",
	"message.suppressed", "message.cancelled", "message.complained", "warning",
}

// EventType names an event's type, as the payload's "type" says it.
func EventType(ev *mailbusv1.DeliveryEvent) string {
	if ev.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED {
		return "warning"
	}
	return "message." + strings.ToLower(strings.TrimPrefix(ev.GetStatus().String(), "DELIVERY_STATUS_"))
}

// Final reports whether an event is a final state of its recipients, the
// ones a final-only endpoint gets: a deferral or the queueing is followed by
// another event; a sent, bounced, failed, suppressed, cancelled or
// complained recipient is settled (a late bounce after sent is final too).
func Final(ev *mailbusv1.DeliveryEvent) bool {
	switch ev.GetStatus() {
	case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED:
		return true
	}
	return false
}

// WebhookID is the webhook-id of an event: derived from the tenant and the
// event id (which every stage derives from the delivery, so a redelivered
// Kafka record has the same), so a receiver can de-duplicate on it. An
// event without an id is identified by its whole content.
func WebhookID(ev *mailbusv1.DeliveryEvent) string {
	h := sha256.New()
	h.Write([]byte(ev.GetTenantId()))
	h.Write([]byte{0})
	if ev.GetEventId() != "" {
		h.Write([]byte(ev.GetEventId()))
	} else {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		h.Write([]byte{1})
		h.Write(b)
	}
	return "evt_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Body is the JSON a webhook posts, in the Standard Webhooks payload shape:
//
//	{"type":"message.bounced","timestamp":"2026-...Z","data":{...the DeliveryEvent in protojson...}}
//
// It is made once, when the event is enqueued, so that every attempt
// posts (and signs) the same bytes.
func Body(ev *mailbusv1.DeliveryEvent, now time.Time) ([]byte, error) {
	data, err := protojson.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event %s as JSON: %w", ev.GetEventId(), err)
	}
	var compact bytes.Buffer
	// protojson varies its whitespace on purpose; the body is stored, so
	// that is harmless, but compact is smaller.
	if err := json.Compact(&compact, data); err != nil {
		return nil, fmt.Errorf("compact event %s: %w", ev.GetEventId(), err)
	}
	ts := now
	if ev.GetOccurTime() != nil {
		ts = ev.GetOccurTime().AsTime()
	}
	return json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp string          `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{EventType(ev), ts.UTC().Format(time.RFC3339Nano), compact.Bytes()})
}

// wants reports whether an endpoint takes an event.
func wants(e *liveEndpoint, ev *mailbusv1.DeliveryEvent) bool {
	if !e.Active {
		return false
	}
	if e.FinalOnly && !Final(ev) {
		return false
	}
	if len(e.EventTypes) == 0 {
		return true
	}
	t := EventType(ev)
	for _, want := range e.EventTypes {
		if want == t {
			return true
		}
	}
	return false
}
