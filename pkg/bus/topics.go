package bus

import "time"

// Topic names. They are lowercase with dots only: Kafka treats '.' and '_'
// as colliding in metric names, so the two are never mixed.
const (
	// TopicSubmit carries Submission records from producers to the router.
	TopicSubmit = "mail.submit"
	// TopicRouted carries Delivery records from the router to quota.
	TopicRouted = "mail.routed"
	// TopicAdmitted carries Delivery records from quota to the signer.
	TopicAdmitted = "mail.admitted"
	// TopicSigned carries DKIM-signed Delivery records to the sender.
	TopicSigned = "mail.signed"
	// TopicFallback carries Delivery records whose relay failed or is
	// exhausted back to the router, which picks the default server.
	TopicFallback = "mail.fallback"
	// TopicResubmit carries Resubmission records from the tracker to the
	// router: retries of a message's failed and bounced recipients, asked
	// for through MessageService. It is apart from mail.submit so that
	// only the tracker can send mail again under an existing message id
	// (Kafka ACLs can keep producers out of it).
	TopicResubmit = "mail.resubmit"
	// TopicEvents carries DeliveryEvent records from every stage.
	TopicEvents = "mail.events"
	// TopicPoison receives records that a handler could not process even
	// after retries, with the reason in their metadata (see MetaPoison*).
	TopicPoison = "mail.poison"
	// TopicQuotaLedger is the quota stage's durable record of its daily
	// counters (see pkg/limits, Ledger): small records, a few per limited
	// counter per day, read back only when Redis has lost the counters.
	// It needs a retention of at least two days (Kafka's default is seven)
	// and must not be compacted.
	TopicQuotaLedger = "mail.quota.ledger"

	// TopicRetry1m .. TopicRetry6h are the delayed retry topics for 4xx
	// outcomes; a consumer holds each record until its Delivery.not_before.
	TopicRetry1m  = "mail.retry.1m"
	TopicRetry5m  = "mail.retry.5m"
	TopicRetry30m = "mail.retry.30m"
	TopicRetry2h  = "mail.retry.2h"
	TopicRetry6h  = "mail.retry.6h"
)

// RetryTopic is a delayed retry topic and the delay its records wait for.
type RetryTopic struct {
	Topic string
	Delay time.Duration
}

// RetryTopics returns the delayed retry topics, shortest delay first. It
// returns a fresh slice so that no caller can change another's view.
func RetryTopics() []RetryTopic {
	return []RetryTopic{
		{Topic: TopicRetry1m, Delay: time.Minute},
		{Topic: TopicRetry5m, Delay: 5 * time.Minute},
		{Topic: TopicRetry30m, Delay: 30 * time.Minute},
		{Topic: TopicRetry2h, Delay: 2 * time.Hour},
		{Topic: TopicRetry6h, Delay: 6 * time.Hour},
	}
}

// RetryTopicFor returns the retry topic for the given retry number, starting
// at 1: the first retry waits a minute, the fifth and every later one six
// hours. Numbers below 1 count as 1.
func RetryTopicFor(retry int) RetryTopic {
	ts := RetryTopics()
	i := min(max(retry, 1), len(ts)) - 1
	return ts[i]
}

// AllTopics returns every topic mailbus uses, for creating them up front.
func AllTopics() []string {
	ts := []string{
		TopicSubmit, TopicRouted, TopicAdmitted, TopicSigned,
		TopicFallback, TopicEvents, TopicPoison, TopicQuotaLedger, TopicResubmit,
	}
	for _, rt := range RetryTopics() {
		ts = append(ts, rt.Topic)
	}
	return ts
}

// Group returns the consumer group name of one handler of one service,
// "<service>.<handler>", so that every handler commits its own offsets and
// replicas of the same service share the partitions.
func Group(service, handler string) string {
	return service + "." + handler
}
