package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// Metadata keys of a poison copy that had to leave its payload behind.
const (
	// MetaPoisonPayloadDropped is "true" when the poison copy has no
	// payload because the record with it was too large for Kafka; its
	// other metadata may be clipped too (see MetaPoisonMetaClipped).
	MetaPoisonPayloadDropped = "payload_dropped_poisoned"
	// MetaPoisonPayloadSize is the dropped payload's size in bytes.
	MetaPoisonPayloadSize = "payload_size_poisoned"
	// MetaPoisonMetaClipped is "true" when metadata values of the poison
	// copy were cut to poisonValueMax bytes, or all but the ids and the
	// poison keys left out, so that the copy fits.
	MetaPoisonMetaClipped = "metadata_clipped_poisoned"
)

// Outcomes counted by PoisonRecords.
const (
	PoisonCopied         = "copied"
	PoisonPayloadDropped = "payload_dropped"
	PoisonLost           = "lost"
)

// PoisonRecords counts the records the poison queue took, by the topic and
// handler that failed them and by outcome: copied whole, copied without
// the payload (too large for Kafka), or lost (not even the bare copy could
// be published; the log has the record's ids and position). It is shared by
// every Router in the process; register it once (see Collectors).
var PoisonRecords = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "mailbus", Subsystem: "bus", Name: "poison_records_total",
	Help: "Records that failed their handler and went to the poison topic, by topic, handler and outcome (copied, payload_dropped, lost).",
}, []string{"topic", "handler", "outcome"})

// Collectors returns the bus's metrics, for a service's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{PoisonRecords}
}

// poisonValueMax bounds each metadata value of a poison copy without its
// payload. A reason or a producer's header of megabytes says no more than
// its first few kilobytes.
const poisonValueMax = 4 << 10

// poisonKeys are the metadata keys a bare poison copy keeps: what says
// which record it was, where it was and why it failed.
var poisonKeys = [...]string{
	MetaPoisonReason, MetaPoisonTopic, MetaPoisonHandler, MetaPoisonSubscriber,
	MetaPoisonPartition, MetaPoisonOffset, MetaPoisonPermanent,
	MetaPoisonPayloadDropped, MetaPoisonPayloadSize, MetaPoisonMetaClipped,
	MetaCorrelationID, MetaTenantID, MetaMessageID, MetaDeliveryID, MetaIdempotencyID,
	MetaContentType, MetaTraceparent,
}

// poisonQueue is watermill's PoisonQueue middleware (the same metadata
// keys, the same filter) with one difference: a record that Kafka cannot
// take as it is never holds its partition. watermill's returns the poison
// topic's publish error, which nacks the record, and Kafka then hands the
// same record over again for ever: a record over the producer's or the
// topic's limit, whose copy is larger still, blocked its partition for
// good. This one falls back to a copy without the payload (metadata values
// clipped), then to a bare copy of the ids and the reason, and when even
// that is refused as too large, logs the record's ids and position, counts
// it (PoisonRecords, outcome lost) and acks it.
//
// A poison publish that fails for another reason (the broker is
// unreachable) still nacks the record, as watermill does: it is handled
// again once Kafka is back rather than lost, and nothing on its partition
// could be published meanwhile anyway.
func poisonQueue(pub message.Publisher, log *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil || errors.Is(err, errShuttingDown) {
				return out, err
			}
			ctx := msg.Context()
			topic, handler := message.SubscribeTopicFromCtx(ctx), message.HandlerNameFromCtx(ctx)
			msg.Metadata.Set(MetaPoisonReason, err.Error())
			msg.Metadata.Set(MetaPoisonTopic, topic)
			msg.Metadata.Set(MetaPoisonHandler, handler)
			msg.Metadata.Set(MetaPoisonSubscriber, message.SubscriberNameFromCtx(ctx))
			perr := pub.Publish(TopicPoison, msg)
			if perr == nil {
				PoisonRecords.WithLabelValues(topic, handler, PoisonCopied).Inc()
				return out, nil
			}
			if !IsTooLarge(perr) {
				return out, errors.Join(err, fmt.Errorf("cannot publish message to poison queue: %w", perr))
			}
			tooLarge := perr
			attrs := []slog.Attr{
				slog.String("handler", handler), slog.String("topic", topic),
				slog.String(MetaPoisonPartition, msg.Metadata.Get(MetaPoisonPartition)),
				slog.String(MetaPoisonOffset, msg.Metadata.Get(MetaPoisonOffset)),
				slog.String(MetaTenantID, msg.Metadata.Get(MetaTenantID)),
				slog.String(MetaMessageID, msg.Metadata.Get(MetaMessageID)),
				slog.String(MetaDeliveryID, msg.Metadata.Get(MetaDeliveryID)),
				slog.Int("payload_bytes", len(msg.Payload)),
			}
			for _, keepAll := range []bool{true, false} {
				bare := withoutPayload(msg, keepAll)
				perr = pub.Publish(TopicPoison, bare)
				if perr == nil {
					PoisonRecords.WithLabelValues(topic, handler, PoisonPayloadDropped).Inc()
					log.LogAttrs(ctx, slog.LevelWarn, "record too large to copy to the poison topic: copied it without its payload", append(attrs, slog.Any("err", tooLarge))...)
					return out, nil
				}
				if !IsTooLarge(perr) {
					return out, errors.Join(err, fmt.Errorf("cannot publish message without its payload to poison queue: %w", perr))
				}
			}
			PoisonRecords.WithLabelValues(topic, handler, PoisonLost).Inc()
			log.LogAttrs(ctx, slog.LevelError, "RECORD LOST: not even a bare copy of it fits the poison topic; acking it so that its partition moves on",
				append(attrs, slog.String("reason", clip(err.Error(), poisonValueMax)), slog.Any("err", perr))...)
			return out, nil
		}
	}
}

// withoutPayload is msg's poison copy without its payload: every metadata
// value clipped to poisonValueMax when keepAll, else only poisonKeys.
func withoutPayload(msg *message.Message, keepAll bool) *message.Message {
	bare := message.NewMessage(msg.UUID, []byte{})
	clipped := false
	keep := func(k, v string) {
		if c := clip(v, poisonValueMax); c != v {
			v, clipped = c, true
		}
		bare.Metadata.Set(k, v)
	}
	if keepAll {
		for k, v := range msg.Metadata {
			keep(k, v)
		}
	} else {
		clipped = true
		for _, k := range poisonKeys {
			if v := msg.Metadata.Get(k); v != "" {
				keep(k, v)
			}
		}
	}
	bare.Metadata.Set(MetaPoisonPayloadDropped, "true")
	bare.Metadata.Set(MetaPoisonPayloadSize, strconv.Itoa(len(msg.Payload)))
	if clipped {
		bare.Metadata.Set(MetaPoisonMetaClipped, "true")
	}
	return bare
}

// clip cuts s to at most n bytes, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…(clipped)"
	n -= len(mark)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + mark
}
