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
// it is marked Permanent; a record that still fails goes to mail.poison with
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
