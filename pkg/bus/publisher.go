package bus

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// publisher is watermill's message.Publisher on a sarama SyncProducer,
// written here rather than taken from watermill-kafka because that one
// sends a Publish's records one SendMessage at a time: a round trip and a
// produce request per record, where the router's deliveries of one
// message, a producer's batch or a stage's records could go in one. It
// also checks every record against the producer's limit before sending
// any of them, and turns the broker's refusal of a record as too large
// into a *RecordTooLargeError: sarama would refuse an oversized record
// too, but with an error that neither names the record nor is permanent.
type publisher struct {
	producer sarama.SyncProducer
	marshal  marshaler
	limit    int
	closed   atomic.Bool
}

func newPublisher(cfg Config, sc *sarama.Config) (*publisher, error) {
	producer, err := sarama.NewSyncProducer(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("create kafka publisher for %v: %w", cfg.Brokers, err)
	}
	return &publisher{producer: producer, marshal: newMarshaler(), limit: sc.Producer.MaxMessageBytes}, nil
}

// Publish sends msgs to topic in one batch and returns once Kafka has
// every one of them. On an error some may have been published; the
// caller publishes them all again, and consumers are idempotent.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return fmt.Errorf("publish to %s: publisher closed", topic)
	}
	pms, sizes, err := p.records(topic, msgs)
	if err != nil {
		return err
	}
	err = p.send(pms)
	if err == nil || !IsTooLarge(err) {
		return err
	}
	// The broker judges a whole batch, and the producer may have put a
	// record in one with a larger record from another handler: send each
	// on its own, twice at most, before calling it too large, so that a
	// refusal is pinned on its record.
	for i, msg := range msgs {
		for resent := false; ; resent = true {
			// Sarama keeps state in a message it sent: marshal it anew.
			pms, _, err := p.records(topic, []*message.Message{msg})
			if err != nil {
				return err
			}
			err = p.send(pms)
			if err == nil {
				break
			}
			if !IsTooLarge(err) {
				return err
			}
			if resent {
				return Permanent(&RecordTooLargeError{Topic: topic, Size: sizes[i], Err: err})
			}
		}
	}
	return nil
}

func (p *publisher) records(topic string, msgs []*message.Message) ([]*sarama.ProducerMessage, []int, error) {
	pms := make([]*sarama.ProducerMessage, len(msgs))
	sizes := make([]int, len(msgs))
	for i, msg := range msgs {
		pm, size, err := producerRecord(p.marshal, topic, msg)
		if err != nil {
			return nil, nil, err
		}
		if sizes[i] = size; size > p.limit {
			return nil, nil, Permanent(&RecordTooLargeError{Topic: topic, Size: sizes[i], Limit: p.limit})
		}
		pms[i] = pm
	}
	return pms, sizes, nil
}

// send hands pms to the producer, which sends those that arrive together
// in one request, and returns the errors of the records it could not
// publish joined, so that errors.Is and IsTooLarge see each of them.
func (p *publisher) send(pms []*sarama.ProducerMessage) error {
	if len(pms) == 1 {
		if _, _, err := p.producer.SendMessage(pms[0]); err != nil {
			return fmt.Errorf("produce a record to %s: %w", pms[0].Topic, err)
		}
		return nil
	}
	err := p.producer.SendMessages(pms)
	var perrs sarama.ProducerErrors
	if !errors.As(err, &perrs) {
		if err != nil {
			return fmt.Errorf("produce %d records: %w", len(pms), err)
		}
		return nil
	}
	errs := make([]error, 0, len(perrs))
	for _, pe := range perrs {
		errs = append(errs, pe)
	}
	return fmt.Errorf("produce %d records, %d failed: %w", len(pms), len(perrs), errors.Join(errs...))
}

func (p *publisher) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	if err := p.producer.Close(); err != nil {
		return fmt.Errorf("close kafka producer: %w", err)
	}
	return nil
}
