// Package ids derives mailbus's identifiers deterministically from what the
// producer gave, so that a redelivered record yields the same message,
// delivery and event ids and every consumer can be idempotent on them.
package ids

import (
	"crypto/sha256"
	"encoding/base32"
	"strconv"
	"strings"
)

var enc = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	sum := h.Sum(nil)
	return enc.EncodeToString(sum[:15])
}

// MessageID is the message id of a submission: the same tenant and
// idempotency id always give the same id, so a producer that publishes twice
// sends once.
func MessageID(tenantID, idempotencyID string) string {
	return "m" + digest("message", tenantID, idempotencyID)
}

// DeliveryID names envelope n (0-based) of a message. A re-route after a
// relay failure or an exhausted limit is a new delivery (reroute counts
// them), so that quota counts it against the new relay exactly once.
func DeliveryID(messageID string, n, reroute int) string {
	var b strings.Builder
	b.WriteString(messageID)
	b.WriteByte('.')
	b.WriteString(strconv.Itoa(n))
	if reroute > 0 {
		b.WriteString(".r")
		b.WriteString(strconv.Itoa(reroute))
	}
	return b.String()
}

// EventID names an event by what it is about, so that the same outcome
// reported twice (a redelivered record) is stored once.
func EventID(deliveryID, stage, status string, attempt int32, discriminator ...string) string {
	parts := append([]string{"event", deliveryID, stage, status, strconv.Itoa(int(attempt))}, discriminator...)
	return "e" + digest(parts...)
}

// RecordKey names a Kafka record by its position. A submission without an
// idempotency id gets its message id from it (MessageID(tenant,
// RecordKey(...))), which the router and the tracker, reading the same
// record, derive alike, and a redelivered record derives again.
func RecordKey(topic string, partition int32, offset int64) string {
	return "record:" + topic + "/" + strconv.Itoa(int(partition)) + "/" + strconv.FormatInt(offset, 10)
}

// RetryDeliveryID names envelope n of retry number retry (from 1) of a
// message. Retried deliveries are new deliveries, so that quota counts
// them again and the sender, idempotent on delivery ids, sends them; the
// same retry planned twice gets the same ids.
func RetryDeliveryID(messageID string, n int, retry int32) string {
	return messageID + ".t" + strconv.Itoa(int(retry)) + "." + strconv.Itoa(n)
}
