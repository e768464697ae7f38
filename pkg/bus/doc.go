// Package bus is the Kafka bus that every mailbus service uses: topic
// names, record metadata, the protobuf/JSON codec, the standard handler
// middleware stack, publisher and subscriber factories over watermill-kafka
// (IBM/sarama), and an embedded Kafka-protocol broker for `mailbus dev` and
// tests.
//
// # Records
//
// A record's payload is a protobuf message (Submission, Delivery,
// DeliveryEvent). Services always publish protobuf (Encode); consumers also
// accept protojson so that producers can publish submissions with any Kafka
// client (Decode). Every record carries in its metadata (Kafka headers) the
// tenant, message id, delivery id, idempotency id, a correlation id and a
// W3C traceparent; Encode fills them from the record and from the incoming
// record's metadata (MetaFrom), so they flow through the whole pipeline.
// Records are keyed by message id, so all records about one message stay on
// one partition, in order.
//
// # Failure handling
//
// One Router per service runs the handlers with a fixed stack:
// correlation id, poison queue, retry with exponential backoff, timeout,
// panic recovery. A handler error is retried (HandlerRetries times) unless
// it is permanent by the pipeline's one rule, exterr.IsPermanent (marked
// with Permanent, a 5xx reply, an invalid request such as
// limits.ErrInvalid); a permanent error is poisoned after one attempt, and
// a record that still fails after its retries goes to mail.poison too, with
// the reason and its original topic, partition and offset, and the
// partition moves on. On Kafka a record that always fails would otherwise
// block its partition forever. Records cut short by a shutdown are not
// poisoned: they are not committed and are redelivered, so every handler
// must be idempotent on the delivery id (delivery is at least once).
//
// Mail outcomes are not handler errors: a 5xx reply is an event, a 4xx
// reply a record on a delayed retry topic (RetryTopicFor), consumed with
// Router.HandleDelayed, which hands each record over only once the topic's
// delay has passed since it was produced.
//
// Router.Handle gives a handler a partition's records one at a time, in
// order. Router.HandleConcurrent, for handlers whose records are
// independent of each other (the sender's deliveries), hands them out
// without waiting, up to a Concurrency bound per process, and commits each
// partition's offset only past the records that finished together with
// every record before them.
//
// A group rebalance waits for the record a handler is working on (that is
// how watermill-kafka works), so Config.RebalanceTimeout must exceed the
// time the handler stack can take; HandleDelayed does not hold rebalances
// while it waits for a record to come due.
//
// # Size budget
//
// One number limits mail: the largest message mailbus accepts, in octets
// after MIME encoding, which the router checks (mail.DefaultMaxSize, 25
// MiB, or MAILBUS_MAX_MESSAGE_BYTES). Every Kafka record limit derives from
// it (RecordLimit), with room for what records add to the message on the
// way, so that a message the router accepted fits every topic after it:
//
//   - a protojson submission carries bytes (a raw message, attachments) in
//     base64, a third larger than the mail they make;
//   - a delivery carries, besides the message, the submission's subject and
//     metadata, its envelope and route; the router refuses a delivery whose
//     record is over Config.DeliveryLimit (the record limit less
//     RecordReserve) with the reason message_too_large;
//   - after the router, the signer adds DKIM signatures, quota and the
//     sender excluded relays, retry times and replies, every stage Kafka
//     headers, the poison queue its reason: RecordReserve keeps room for
//     them.
//
// A record that is too large all the same (a cluster with lower limits, a
// producer's huge headers) fails to publish with a *RecordTooLargeError,
// which is permanent: the stage fails the delivery with a status, and the
// poison queue copies a record it cannot take whole without its payload,
// or at worst logs, counts (PoisonRecords) and acks it. No record holds its
// partition because of its size.
//
// What an operator sets on a Kafka cluster (mailbus sets only the topics
// EnsureTopics creates):
//
//   - max.message.bytes of every mailbus topic, or the broker's
//     message.max.bytes that topics inherit, at least
//     Config.TopicMaxMessageBytes (35 MiB for 25 MiB mail). Kafka's default
//     of 1 MB refuses most mail with attachments; mailbus then fails such
//     mail with message_too_large instead of sending it.
//   - replica.fetch.max.bytes at least as large, as Kafka advises, and
//     socket.request.max.bytes (default 100 MiB) above it.
//   - Producers of submissions raise their own limit to their largest
//     submission: librdkafka and kcat message.max.bytes, the Java client's
//     max.request.size.
//   - Consumers: mailbus's fetch sizes are unlimited (sarama grows a fetch
//     to the record, within sarama.MaxResponseSize, 100 MiB); other
//     consumers of mailbus topics (librdkafka receive.message.max.bytes,
//     Java fetch.max.bytes) need at least the topic limit.
//
// # Typical service
//
//	r, err := bus.NewRouter(cfg, "quota", log)
//	if err != nil { ... }
//	err = r.Handle("admit", bus.TopicRouted, bus.Handle(func(ctx context.Context, msg *message.Message, d *mailbusv1.Delivery) error {
//		...
//		return r.Publish(bus.TopicAdmitted, d, bus.MetaFrom(msg))
//	}))
//	return r.Run(ctx)
package bus
