// Package cancelled is the pipeline's cancel marker: a Redis key per
// tenant and message that MessageService.CancelMessage sets, and that
// every stage that passes a delivery on towards SMTP (quota, signer,
// sender) checks first. A stage that finds it publishes a cancelled event
// instead of the delivery, so a cancelled message stops wherever it is:
// on mail.routed, mail.admitted, mail.signed, or waiting on a delayed
// retry topic (those release into mail.routed and mail.signed, whose
// consumers check again). What an SMTP server has already accepted cannot
// be called back; the sender checks right before it connects.
//
// The marker lives longer than any delivery can: the sender gives up on a
// deferred recipient after its queue lifetime (5 days by default), and
// TTL adds the longest retry delay and a margin to that. The tracker
// records every cancellation durably in the message log too, so a Redis
// that lost its data can be given the markers back (see the tracker's
// RestoreCancelMarks).
package cancelled

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// TTL is how long a cancel marker lasts: the sender's default queue
// lifetime of 5 days, the longest retry delay, and a day's margin.
const TTL = 7 * 24 * time.Hour

// Reason is the reason of the cancelled events the stages publish.
const Reason = "cancelled"

// Key is the marker's Redis key. The tenant is the hash tag, as with the
// pipeline's other per-tenant keys, so a cluster keeps a tenant's keys on
// one slot.
func Key(tenantID, messageID string) string {
	return "mb:cancelled:{" + tenantID + "}:" + messageID
}

// Mark sets the marker of a message for ttl (TTL when ttl <= 0). Setting
// it again only extends it.
func Mark(ctx context.Context, rdb redis.UniversalClient, tenantID, messageID string, ttl time.Duration) error {
	if ttl <= 0 {
		ttl = TTL
	}
	if err := rdb.Set(ctx, Key(tenantID, messageID), "1", ttl).Err(); err != nil {
		return fmt.Errorf("set cancel marker of message %s: %w", messageID, err)
	}
	return nil
}

// Is reports whether the message of d is cancelled. An error is Redis's
// and worth retrying: a stage must not pass a delivery on that it could
// not check.
func Is(ctx context.Context, rdb redis.UniversalClient, d *mailbusv1.Delivery) (bool, error) {
	n, err := rdb.Exists(ctx, Key(d.GetTenantId(), d.GetMessageId())).Result()
	if err != nil {
		return false, fmt.Errorf("check whether message %s is cancelled: %w", d.GetMessageId(), err)
	}
	return n > 0, nil
}

// Event is the cancelled event a stage publishes instead of passing d on.
func Event(d *mailbusv1.Delivery, stage string, now time.Time) *mailbusv1.DeliveryEvent {
	e := events.ForDelivery(d, stage, mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED, Reason,
		"the message was cancelled; the "+stage+" stage stopped this delivery before it reached an SMTP server", now)
	e.Permanent = true
	return e
}
