package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// HandleDelayed subscribes h to a delayed topic (one of RetryTopics) in
// consumer group Group(service, handler): each record reaches h only once
// delay has passed since it was produced (its Kafka timestamp), so a
// publisher delays a retry just by choosing the topic. Records of one
// partition share the topic's delay, so they come due in order and holding
// the partition's head holds nothing that is due.
//
// It uses its own consumer instead of watermill-kafka's: that one waits for
// the in-flight record even when the group rebalances, so a record held for
// six hours would stall every rebalance of the group for six hours. Here a
// rebalance (or shutdown) ends the wait at once; the record is not committed
// and its next owner waits for what is left of its delay.
func (r *Router) HandleDelayed(handler, topic string, delay time.Duration, h message.NoPublishHandlerFunc) error {
	sub, err := NewDelayedSubscriber(r.cfg, Group(r.service, handler), delay, r.log)
	if err != nil {
		return fmt.Errorf("subscribe %s to %s: %w", handler, topic, err)
	}
	r.router.AddConsumerHandler(handler, topic, sub, h)
	r.subs = append(r.subs, groupTopic{Group(r.service, handler), topic})
	return nil
}

// NewDelayedSubscriber returns a subscriber in consumer group group that
// hands each record to the router only once delay has passed since the
// record's Kafka timestamp. See Router.HandleDelayed.
func NewDelayedSubscriber(cfg Config, group string, delay time.Duration, log *slog.Logger) (message.Subscriber, error) {
	if group == "" {
		return nil, errors.New("create delayed subscriber: empty consumer group")
	}
	sc, err := ConsumerConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &delayedSubscriber{groupMember: newGroupMember(cfg, sc, group, "delayed", log), delay: delay}, nil
}

type delayedSubscriber struct {
	*groupMember
	delay time.Duration
}

// Subscribe joins the group for topic. The returned channel closes after
// ctx is cancelled or Close is called.
func (s *delayedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.subscribe(ctx, topic, func(ctx context.Context, _ sarama.ConsumerGroup, out chan<- *message.Message) sarama.ConsumerGroupHandler {
		return &delayedHandler{sub: s, out: out, ctx: ctx}
	})
}

type delayedHandler struct {
	sub *delayedSubscriber
	out chan<- *message.Message
	ctx context.Context
}

func (*delayedHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*delayedHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim hands one partition's records over in order, each once due
// and once the previous one was acked. It returns as soon as the session
// ends, whatever it is waiting for.
func (h *delayedHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	done := sess.Context().Done()
	for {
		var km *sarama.ConsumerMessage
		select {
		case m, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			km = m
		case <-done:
			return nil
		}
		if !km.Timestamp.IsZero() {
			if wait := time.Until(km.Timestamp.Add(h.sub.delay)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-done:
					t.Stop()
					return nil
				}
			}
		}
		if !h.deliver(sess, km) {
			return nil
		}
	}
}

// deliver hands km to the router until it is acked, and marks it. It
// reports false when the session ended first.
func (h *delayedHandler) deliver(sess sarama.ConsumerGroupSession, km *sarama.ConsumerMessage) bool {
	done := sess.Context().Done()
	msg, err := newMarshaler().Unmarshal(km)
	if err != nil {
		// Our unmarshaler never fails; keep the partition moving if that
		// changes rather than wedging it.
		h.sub.log.Error("unmarshal delayed record", slog.String("topic", km.Topic), slog.Any("err", err))
		sess.MarkMessage(km, "")
		return true
	}
	for {
		// The handler's context ends with the session, so that a
		// rebalance interrupts it; the record is then not poisoned but
		// redelivered (see failureContext).
		ctx, cancel := context.WithCancel(withRecordPosition(sess.Context(), km.Partition, km.Offset))
		msg.SetContext(ctx)
		select {
		case h.out <- msg:
		case <-done:
			cancel()
			return false
		}
		select {
		case <-msg.Acked():
			cancel()
			sess.MarkMessage(km, "")
			return true
		case <-msg.Nacked():
			cancel()
			msg = msg.Copy()
			select {
			case <-time.After(h.sub.cfg.RetryBackoff):
			case <-done:
				return false
			}
		case <-done:
			cancel()
			return false
		}
	}
}

type recordPositionKey struct{}

type recordPosition struct {
	partition int32
	offset    int64
}

func withRecordPosition(ctx context.Context, partition int32, offset int64) context.Context {
	return context.WithValue(ctx, recordPositionKey{}, recordPosition{partition, offset})
}
