// Package delay holds deliveries back until a later time without blocking
// any partition of the pipeline's topics.
//
// A delivery to be retried later is published to one of the fixed-delay
// topics mail.retry.{1m,5m,30m,2h,6h} (bus.RetryTopics). A record in a
// topic with delay D is due D after it was produced, so records of one
// partition come due in order and the consumer only ever waits for the
// head. When a record is due the consumer sends it on to its
// Delivery.retry_topic, unless its Delivery.not_before is still ahead (a
// tenant's daily limit defers to the next midnight, hours away): then it
// hops to the longest retry topic that does not overshoot.
//
// Waiting is bus.Router.HandleDelayed's: a rebalance or shutdown ends a
// wait at once. Only the retry topics wait; every other topic keeps flowing.
package delay

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// TopicFor returns the retry topic for a wait of d: the longest delay that
// does not overshoot d, and the shortest for waits under a minute.
func TopicFor(d time.Duration) bus.RetryTopic {
	ts := bus.RetryTopics()
	best := ts[0]
	for _, t := range ts {
		if t.Delay <= d {
			best = t
		}
	}
	return best
}

// Enqueue publishes d so that it goes to target no earlier than notBefore.
func Enqueue(pub message.Publisher, meta message.Metadata, d *mailbusv1.Delivery, target string, notBefore, now time.Time) error {
	d.RetryTopic = target
	d.NotBefore = timestamppb.New(notBefore)
	rt := TopicFor(notBefore.Sub(now))
	msg, err := bus.Encode(d, meta)
	if err != nil {
		return err
	}
	if err := pub.Publish(rt.Topic, msg); err != nil {
		return fmt.Errorf("delay delivery %s on %s: %w", d.GetDeliveryId(), rt.Topic, err)
	}
	return nil
}

// Register subscribes the retry-topic consumers of one stage on r (groups
// "<service>.retry-1m" ...). Each record reaches its handler only when its
// topic's delay has passed (bus.Router.HandleDelayed); it then goes on to
// its Delivery.retry_topic, or hops to a longer retry topic while its
// not_before is still ahead. A delivery too large for the topic it goes
// on to fails with a status reported by r's service (events.FailTooLarge).
//
// Every stage that delays records releases its own: target is the stage's
// input topic, and records bound elsewhere are left to the stage that owns
// them (each stage reads the retry topics in its own consumer group). So a
// cluster where one stage is down never stalls another stage's deferred
// mail: quota's paced deliveries do not wait for a running sender.
func Register(r *bus.Router, target string, now func() time.Time) error {
	if now == nil {
		now = time.Now
	}
	if target == "" {
		return fmt.Errorf("register retry-topic consumers: empty target topic")
	}
	for _, rt := range bus.RetryTopics() {
		name := "retry-" + strings.TrimPrefix(rt.Topic, "mail.retry.")
		h := events.FailTooLarge(r.Publisher(), r.Service(), now, func(_ context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
			if targetOf(d) != target {
				return nil
			}
			return release(r.Publisher(), msg, d, now())
		})
		if err := r.HandleDelayed(name, rt.Topic, rt.Delay, bus.Handle(h)); err != nil {
			return err
		}
	}
	return nil
}

// release sends a due delivery on. A second of slack keeps a record whose
// not_before is a hair ahead from hopping once more for nothing.
func release(pub message.Publisher, msg *message.Message, d *mailbusv1.Delivery, now time.Time) error {
	meta := bus.MetaFrom(msg)
	if d.GetNotBefore() != nil {
		if nb := d.GetNotBefore().AsTime(); nb.After(now.Add(time.Second)) {
			return Enqueue(pub, meta, d, d.GetRetryTopic(), nb, now)
		}
	}
	return bus.Publish(pub, targetOf(d), d, meta)
}

// targetOf is the topic a delayed delivery returns to. Records written
// before retry_topic existed were all the sender's.
func targetOf(d *mailbusv1.Delivery) string {
	if t := d.GetRetryTopic(); t != "" {
		return t
	}
	return bus.TopicSigned
}
