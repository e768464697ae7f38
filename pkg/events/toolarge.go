package events

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
)

// ReasonTooLarge is the reason of a message failed for its size: over the
// mail limit, or too large for a Kafka record on its way (see "Size budget"
// in pkg/bus).
const ReasonTooLarge = "message_too_large"

// Failed returns a failed event about what e is about (the same message or
// delivery, the same recipients and summary), for a stage that must fail
// what it was about to report as queued. The route attributes are left
// out: the route was not taken.
func Failed(e *mailbusv1.DeliveryEvent, stage, reason, detail string, now time.Time) *mailbusv1.DeliveryEvent {
	f := proto.Clone(e).(*mailbusv1.DeliveryEvent)
	f.Stage, f.Status, f.Reason, f.Detail = stage, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, reason, detail
	f.Permanent = true
	f.Attributes = nil
	f.Reply = nil
	f.OccurTime = timestamppb.New(now)
	// As ForDelivery and ForMessage make them.
	about := f.GetDeliveryId()
	if about == "" {
		about = f.GetMessageId()
	}
	f.EventId = ids.EventID(about, stage, f.GetStatus().String(), f.GetAttempt(), reason, strings.Join(f.GetRecipients(), ","))
	return f
}

// DeliveryHandler is a delivery stage's typed handler (see bus.Handle).
type DeliveryHandler func(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error

// FailTooLarge wraps the handler of a delivery stage so that a delivery it
// cannot pass on because its record is too large for Kafka
// (bus.IsTooLarge: over the stage's producer limit, or refused by the
// broker) ends with a failed status, reason ReasonTooLarge and the sizes in
// the detail, and the record is done. Retrying could not help, and without
// this the record would reach the poison topic with no status for the
// message. If even the event cannot be published, the error goes on to the
// router's poison queue.
//
// Use it for handlers whose every outcome is about the whole delivery;
// one that has already reported some recipients' outcomes must fail only
// the rest itself.
func FailTooLarge(pub message.Publisher, stage string, now func() time.Time, h DeliveryHandler) DeliveryHandler {
	if now == nil {
		now = time.Now
	}
	return func(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
		err := h(ctx, msg, d)
		if err == nil || !bus.IsTooLarge(err) {
			return err
		}
		e := ForDelivery(d, stage, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, ReasonTooLarge, err.Error(), now())
		e.Permanent = true
		if perr := bus.Publish(pub, bus.TopicEvents, e, bus.MetaFrom(msg)); perr != nil {
			return fmt.Errorf("%w; and its failed event: %w", err, perr)
		}
		return nil
	}
}
