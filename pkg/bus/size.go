package bus

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/mail"
)

// RecordReserve is the room a record limit keeps for what stages after the
// router add to a delivery (DKIM signatures of a few KiB, excluded relays,
// retry times, replies, headers, a poison reason): far more than they add,
// and little beside mail's 25 MiB.
const RecordReserve = 1 << 20

// RecordLimit returns the Kafka record limit (Config.MaxMessageBytes) of a
// pipeline that accepts mail of up to maxMail octets after encoding (0 or
// less means mail.DefaultMaxSize): a third more, for base64 in protojson
// submissions and the submission's fields beside the message in a
// delivery, plus RecordReserve. For 25 MiB mail it is 34.3 MiB.
func RecordLimit(maxMail int64) int {
	if maxMail <= 0 {
		maxMail = mail.DefaultMaxSize
	}
	return int(maxMail + maxMail/3 + RecordReserve)
}

// DeliveryLimit is the largest delivery record the router publishes:
// MaxMessageBytes less the reserve for what later stages add (RecordReserve,
// or a quarter of a limit under 4 MiB), so that what the router sends on
// fits every later topic.
func (c Config) DeliveryLimit() int {
	n := c.withDefaults().MaxMessageBytes
	return n - min(RecordReserve, n/4)
}

// TopicMaxMessageBytes is the max.message.bytes that mailbus topics need:
// MaxMessageBytes, which sarama checks against the uncompressed record, plus
// the record batch header and what LZ4 adds to data it cannot compress
// (at most 1/255 and a few bytes).
func (c Config) TopicMaxMessageBytes() int {
	n := c.withDefaults().MaxMessageBytes
	return n + n/128 + 64<<10
}

// RecordTooLargeError is why a record was not published: it is larger than
// the producer's limit (Config.MaxMessageBytes, or the smaller limit a
// caller checked, such as DeliveryLimit), or the broker refused it as too
// large for the topic. Retrying cannot help, so Publish returns it marked
// Permanent; find it with errors.As or IsTooLarge.
type RecordTooLargeError struct {
	// Topic is where the record was going.
	Topic string
	// Size is the record as Kafka counts it: payload, key and headers.
	Size int
	// Limit is the limit it is over; 0 when the broker refused it, whose
	// limit (the topic's max.message.bytes) is not known here.
	Limit int
	// Err is the broker's refusal, when it refused.
	Err error
}

func (e *RecordTooLargeError) Error() string {
	if e.Limit > 0 {
		return fmt.Sprintf("the record for %s is %s, over the %s limit of a Kafka record", e.Topic, FormatBytes(e.Size), FormatBytes(e.Limit))
	}
	return fmt.Sprintf("the broker refused the %s record for %s as too large (%v); raise the topic's max.message.bytes", FormatBytes(e.Size), e.Topic, e.Err)
}

func (e *RecordTooLargeError) Unwrap() error { return e.Err }

// IsTooLarge reports whether err says that a record was too large for
// Kafka: a *RecordTooLargeError, or sarama's own errors for it (from a
// publisher that is not this package's).
func IsTooLarge(err error) bool {
	var tl *RecordTooLargeError
	if errors.As(err, &tl) {
		return true
	}
	if errors.Is(err, sarama.ErrMessageSizeTooLarge) || errors.Is(err, sarama.ErrMessageSetSizeTooLarge) {
		return true
	}
	var ce sarama.ConfigurationError
	return errors.As(err, &ce) && strings.Contains(string(ce), "larger than configured Producer.MaxMessageBytes")
}

// RecordSize is the size of msg as a record for topic, as the producer
// counts it against Config.MaxMessageBytes: payload, key and headers
// (metadata and the watermill UUID) with their framing.
func RecordSize(topic string, msg *message.Message) (int, error) {
	_, size, err := producerRecord(newMarshaler(), topic, msg)
	return size, err
}

// producerRecord is msg as the record the publisher sends to topic, and
// its size as RecordSize counts it.
func producerRecord(m marshaler, topic string, msg *message.Message) (*sarama.ProducerMessage, int, error) {
	pm, err := m.Marshal(topic, msg)
	if err != nil {
		return nil, 0, fmt.Errorf("marshal message %s for %s: %w", msg.UUID, topic, err)
	}
	return pm, pm.ByteSize(2), nil
}

// FormatBytes writes n in bytes and, when large, in KiB or MiB:
// "21811476 bytes (20.8 MiB)".
func FormatBytes(n int) string {
	s := strconv.Itoa(n) + " bytes"
	switch {
	case n >= 1<<20:
		return s + " (" + strings.TrimSuffix(strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64), ".0") + " MiB)"
	case n >= 1<<10:
		return s + " (" + strings.TrimSuffix(strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64), ".0") + " KiB)"
	}
	return s
}
