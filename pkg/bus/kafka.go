package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rcrowley/go-metrics"
)

// Sarama keeps go-metrics histograms and meters of every request and
// record (an exponentially decaying reservoir per update), and nothing
// reads them: our Prometheus metrics are the ones we export. They cost
// about 4% of the whole pipeline's CPU in make bench's profile. This
// switch is go-metrics' own, package-wide by design (sarama's docs name
// it); set in init so that it happens before any client exists.
func init() { metrics.UseNilMetrics = true }

// DefaultKafkaVersion is the protocol version we speak. Sarama has full
// protocol coverage for 2.8, it is old enough for every Kafka still in
// service, and new enough for Kafka 4.x, which dropped the protocol
// versions older than 2.1 (KIP-896). kfake speaks it too.
const DefaultKafkaVersion = "2.8.0"

// Config is how a service reaches Kafka and how patiently it handles
// records. The zero value of every field but Brokers means its default
// (see the field comments); tests shorten the timeouts.
type Config struct {
	// Brokers are the bootstrap broker addresses, host:port.
	Brokers []string
	// ClientID names the client in broker logs and quotas; default
	// "mailbus". Sarama allows letters, digits, '.', '_' and '-'.
	ClientID string
	// KafkaVersion is the protocol version to speak; default
	// DefaultKafkaVersion.
	KafkaVersion string

	// DialTimeout bounds connecting to a broker; default 10s.
	DialTimeout time.Duration
	// RetryBackoff is the pause between producer, metadata and consumer
	// retries inside sarama; default 250ms.
	RetryBackoff time.Duration
	// ProducerRetries is how many times sarama re-sends a batch; default
	// 10. The producer is idempotent, so re-sends never duplicate.
	ProducerRetries int
	// SessionTimeout is how long the group coordinator waits for a
	// consumer's heartbeat before giving its partitions to another; default
	// 10s. HeartbeatInterval defaults to a third of it.
	SessionTimeout    time.Duration
	HeartbeatInterval time.Duration
	// FetchMaxWait is how long the broker holds a fetch that has no new
	// records; default 500ms. Sarama sends group heartbeats on the same
	// connection, behind the fetch, so it must stay well under
	// SessionTimeout.
	FetchMaxWait time.Duration
	// FetchMinBytes is how many bytes of records (as stored, compressed)
	// the broker waits for, up to FetchMaxWait, before it answers a fetch;
	// default 1, answer as soon as there is anything. See Unhurried.
	FetchMinBytes int32
	// EventsLinger, when set, gives mail.events a producer of its own that
	// waits this long to fill a request; default 0, no wait. Every stage
	// publishes its events one record at a time as its records finish,
	// and three groups (tracker, bounce, webhook) fetch each: produced as
	// they came, an event was a produce request of its own. A stage whose
	// events report what it already passed on (the router: a message is
	// queued once its deliveries are on mail.routed) loses nothing by the
	// wait, and its mail goes through the other producer without one. Not
	// for the sender: its events must be in Kafka before it records the
	// attempt as made, and a crash in between sends the mail again.
	// Kafka 4's Java producer waits 5 ms (linger.ms) for every record.
	EventsLinger time.Duration
	// RebalanceTimeout is how long members get to rejoin during a
	// rebalance; default 5m, Kafka's max.poll.interval.ms. A member rejoins
	// only once its in-flight record is done, so it must exceed the time a
	// record can spend in the handler stack (HandlerTimeout per attempt,
	// plus backoff), or a slow handler gets its member thrown out.
	RebalanceTimeout time.Duration
	// CommitInterval is how often consumed offsets are committed; default
	// 1s. Handlers are idempotent, so a crash re-delivers at most this much.
	CommitInterval time.Duration
	// ReplicationFactor is used by EnsureTopics; default -1, the broker's
	// default.
	ReplicationFactor int16
	// MaxMessageBytes is the largest record the producer sends (checked
	// before sending: see RecordTooLargeError) and the basis of the
	// max.message.bytes EnsureTopics gives new topics
	// (TopicMaxMessageBytes); default RecordLimit(mail.DefaultMaxSize),
	// 34.3 MiB. Derive it from the mail limit with RecordLimit, the same in
	// every service of a pipeline (see "Size budget" in the package doc).
	// Kafka's own default is 1 MB, less than many emails with attachments;
	// on a cluster whose topics were not made by EnsureTopics, raise the
	// topics' max.message.bytes to TopicMaxMessageBytes.
	MaxMessageBytes int

	// HandlerRetries is how many times the router retries a failing handler
	// before the record goes to the poison topic; default 5. Errors marked
	// Permanent are never retried.
	HandlerRetries int
	// HandlerRetryInitial and HandlerRetryMax bound the exponential backoff
	// between handler retries (doubling each time); defaults 500ms and 30s.
	HandlerRetryInitial time.Duration
	HandlerRetryMax     time.Duration
	// HandlerTimeout cancels one handler attempt's context; default 60s.
	HandlerTimeout time.Duration
	// CloseTimeout is how long Router.Run waits for in-flight handlers on
	// shutdown; default 30s.
	CloseTimeout time.Duration

	// Metrics, when set, receives every Router's records handled, handler
	// time and consumer lag per group (see MetricHandled); nil reports
	// nothing.
	Metrics prometheus.Registerer
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.ClientID == "" {
		c.ClientID = "mailbus"
	}
	if c.KafkaVersion == "" {
		c.KafkaVersion = DefaultKafkaVersion
	}
	def(&c.DialTimeout, 10*time.Second)
	def(&c.RetryBackoff, 250*time.Millisecond)
	if c.ProducerRetries <= 0 {
		c.ProducerRetries = 10
	}
	def(&c.SessionTimeout, 10*time.Second)
	def(&c.HeartbeatInterval, c.SessionTimeout/3)
	def(&c.FetchMaxWait, 500*time.Millisecond)
	def(&c.RebalanceTimeout, 5*time.Minute)
	def(&c.CommitInterval, time.Second)
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = RecordLimit(0)
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.HandlerRetries <= 0 {
		c.HandlerRetries = 5
	}
	def(&c.HandlerRetryInitial, 500*time.Millisecond)
	def(&c.HandlerRetryMax, 30*time.Second)
	def(&c.HandlerTimeout, 60*time.Second)
	def(&c.CloseTimeout, 30*time.Second)
	return c
}

// ProducerConfig returns the production sarama configuration of a
// publisher:
//
//   - idempotent producer: acks from all in-sync replicas, one request in
//     flight per connection and retries, so a re-sent batch is neither lost
//     nor duplicated nor reordered;
//   - LZ4 compression: supported by every Kafka since 0.10, by kfake, by
//     kcat/librdkafka, and pure Go in sarama (pierrec/lz4); it compresses
//     text mail about as well as snappy at a similar CPU cost, and unlike
//     zstd needs no Kafka 2.1 negotiation;
//   - murmur2 key partitioning, the Java client's and franz-go's default, so
//     a record keyed by message id lands on the same partition whichever
//     client produced it.
func ProducerConfig(cfg Config) (*sarama.Config, error) {
	cfg = cfg.withDefaults()
	sc, err := baseConfig(cfg)
	if err != nil {
		return nil, err
	}
	sc.Producer.Idempotent = true
	// Required by idempotence. It is set here only: on a consumer it would
	// queue group heartbeats behind long-polling fetches on the shared
	// broker connection, and the group would expire the member's session.
	sc.Net.MaxOpenRequests = 1
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Retry.Max = cfg.ProducerRetries
	sc.Producer.Retry.Backoff = cfg.RetryBackoff
	sc.Producer.Return.Successes = true // the SyncProducer waits on them
	sc.Producer.Compression = sarama.CompressionLZ4
	sc.Producer.Partitioner = sarama.NewMurmur2Partitioner
	sc.Producer.MaxMessageBytes = cfg.MaxMessageBytes
	// Sarama ignores a larger limit (with a log line) and would then send
	// requests that it and Kafka (socket.request.max.bytes) refuse.
	if cfg.MaxMessageBytes >= int(sarama.MaxRequestSize)-64<<10 {
		return nil, fmt.Errorf("kafka record limit %d is not below sarama's request limit %d: lower the mail size limit", cfg.MaxMessageBytes, sarama.MaxRequestSize)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("validate sarama producer config: %w", err)
	}
	return sc, nil
}

// ConsumerConfig returns the production sarama configuration of a
// subscriber: consumer groups that start new groups at the oldest offset
// (no record published before the first deploy is skipped), sticky
// assignment to move few partitions on a rebalance, and offsets
// auto-committed every CommitInterval once a handler acked them.
func ConsumerConfig(cfg Config) (*sarama.Config, error) {
	cfg = cfg.withDefaults()
	sc, err := baseConfig(cfg)
	if err != nil {
		return nil, err
	}
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Enable = true
	sc.Consumer.Offsets.AutoCommit.Interval = cfg.CommitInterval
	sc.Consumer.Return.Errors = true // watermill logs them
	sc.Consumer.Retry.Backoff = cfg.RetryBackoff
	sc.Consumer.MaxWaitTime = cfg.FetchMaxWait
	if cfg.FetchMinBytes > 0 {
		sc.Consumer.Fetch.Min = cfg.FetchMinBytes
	}
	// A fetch asks up to Fetch.Default bytes per partition, compressed:
	// sarama's 1 MiB of LZ4 is 3 MiB of ordinary mail decoded and 50 MiB
	// of make bench's repetitive text, and a whole response stays decoded
	// until the handler has taken its last record. With a backlog every
	// fetch comes back full, so the heap grew with the size of a burst
	// (make bench: 94 MiB live at 20,000 messages against 43 at 5,000).
	// 64 KiB is still some twenty ordinary mails per partition per round
	// trip and measured no slower; a larger record is fetched all the
	// same (the broker returns at least one record, and sarama raises
	// the size for it since Fetch.Max is left unlimited).
	sc.Consumer.Fetch.Default = consumerFetchBytes
	// Records fetched wait here per partition for the handler, which
	// takes one at a time; sarama's 256 only adds to what a backlog holds.
	sc.ChannelBufferSize = consumerFetchBuffer
	sc.Consumer.Group.Session.Timeout = cfg.SessionTimeout
	sc.Consumer.Group.Heartbeat.Interval = cfg.HeartbeatInterval
	sc.Consumer.Group.Rebalance.Timeout = cfg.RebalanceTimeout
	sc.Consumer.Group.Rebalance.Retry.Backoff = cfg.RetryBackoff
	sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("validate sarama consumer config: %w", err)
	}
	return sc, nil
}

const (
	consumerFetchBuffer = 16
	consumerFetchBytes  = 64 << 10
)

// Unhurried returns cfg for the consumers that no mail waits for — the
// tracker's message log, the bounce service's reading of refusals, the
// webhook fan-out: their fetches wait up to a tenth of a second for
// records to gather. Answered as soon as one record was there, each of
// them fetched about as often as records were produced, one or two
// records a request, and a request costs the client and the broker more
// than the small records in it (make bench counts the requests).
func Unhurried(cfg Config) Config {
	cfg.FetchMinBytes = unhurriedFetchBytes
	cfg.FetchMaxWait = unhurriedFetchWait
	return cfg
}

const (
	// A few ordinary mails or a few hundred events, as stored
	// (compressed); make bench fetched as seldom with 256 KiB.
	unhurriedFetchBytes = 32 << 10
	unhurriedFetchWait  = 100 * time.Millisecond
)

// baseConfig holds what producers, consumers and the admin share.
func baseConfig(cfg Config) (*sarama.Config, error) {
	version, err := sarama.ParseKafkaVersion(cfg.KafkaVersion)
	if err != nil {
		return nil, fmt.Errorf("parse kafka version: %w", err)
	}
	sc := sarama.NewConfig()
	sc.Version = version
	sc.ClientID = cfg.ClientID
	sc.Net.DialTimeout = cfg.DialTimeout
	sc.Metadata.Retry.Backoff = cfg.RetryBackoff
	// Topics are created on first use (kfake, dev clusters) or up front by
	// EnsureTopics (production clusters that forbid auto-creation).
	sc.Metadata.AllowAutoTopicCreation = true
	sc.Admin.Retry.Backoff = cfg.RetryBackoff
	return sc, nil
}

// PartitionKey is the Kafka key of a record: its message id, so that every
// record about one message lands on one partition and stays in order;
// failing that its delivery id, its submission's idempotency id, and last
// its watermill UUID (which spreads records evenly).
func PartitionKey(_ string, msg *message.Message) (string, error) {
	for _, k := range [...]string{MetaMessageID, MetaDeliveryID, MetaIdempotencyID} {
		if v := msg.Metadata.Get(k); v != "" {
			return v, nil
		}
	}
	return msg.UUID, nil
}

// marshaler is watermill-kafka's partitioning marshaler with one change on
// the way in: a record produced by a foreign client (kcat, a producer
// without watermill) has no watermill UUID header, and gets one made of its
// topic, partition and offset, which is unique and the same on every
// redelivery.
type marshaler struct {
	kafka.MarshalerUnmarshaler
}

func newMarshaler() marshaler {
	return marshaler{kafka.NewWithPartitioningMarshaler(PartitionKey)}
}

func (m marshaler) Unmarshal(km *sarama.ConsumerMessage) (*message.Message, error) {
	msg, err := m.MarshalerUnmarshaler.Unmarshal(km)
	if err != nil {
		return nil, err
	}
	if msg.UUID == "" {
		msg.UUID = km.Topic + "-" + strconv.FormatInt(int64(km.Partition), 10) + "-" + strconv.FormatInt(km.Offset, 10)
	}
	return msg, nil
}

// watermillLogger adapts log for watermill, demoting watermill's chatty
// Info logs (every subscribe, every handler start) to Debug.
func watermillLogger(log *slog.Logger) watermill.LoggerAdapter {
	if log == nil {
		return watermill.NopLogger{}
	}
	return quietLogger{
		LoggerAdapter: watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{
			slog.LevelInfo: slog.LevelDebug,
		}),
		log: log,
	}
}

// quietLogger drops watermill's Debug and Trace logs before they are
// built: watermill's slog adapter converts every field to a slog
// attribute and only then asks the handler whether the level is on, and
// watermill traces each record it handles several times (1-2% of make
// bench's CPU went on trace lines nobody logged).
type quietLogger struct {
	watermill.LoggerAdapter
	log *slog.Logger
}

func (l quietLogger) Debug(msg string, fields watermill.LogFields) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.LoggerAdapter.Debug(msg, fields)
	}
}

func (l quietLogger) Trace(msg string, fields watermill.LogFields) {
	if l.log.Enabled(context.Background(), watermill.LevelTrace) {
		l.LoggerAdapter.Trace(msg, fields)
	}
}

func (l quietLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietLogger{LoggerAdapter: l.LoggerAdapter.With(fields), log: l.log}
}

// NewPublisher returns a synchronous Kafka publisher: Publish returns once
// every replica has the records. A record over cfg.MaxMessageBytes, or one
// the broker refuses as too large, is not published: Publish returns a
// permanent *RecordTooLargeError, and publishes none of the records when
// one is over the limit. The records of one Publish reach the producer
// together and share its next request; with cfg.EventsLinger, records for
// mail.events go through a producer of their own that gathers them. It is
// safe for concurrent use; the caller closes it. log is not used: the
// publisher has nothing to log that its errors do not say.
func NewPublisher(cfg Config, log *slog.Logger) (message.Publisher, error) {
	sc, err := ProducerConfig(cfg)
	if err != nil {
		return nil, err
	}
	pub, err := newPublisher(cfg, sc)
	if err != nil {
		return nil, err
	}
	if cfg.EventsLinger <= 0 {
		return pub, nil
	}
	esc, err := ProducerConfig(cfg)
	if err != nil {
		_ = pub.Close()
		return nil, err
	}
	esc.Producer.Flush.Frequency = cfg.EventsLinger
	events := &lazyPublisher{create: func() (message.Publisher, error) { return newPublisher(cfg, esc) }}
	return eventsApart{Publisher: pub, events: events}, nil
}

// eventsApart publishes mail.events through a producer of its own (see
// Config.EventsLinger) and every other topic through Publisher.
type eventsApart struct {
	message.Publisher
	events *lazyPublisher
}

func (p eventsApart) Publish(topic string, msgs ...*message.Message) error {
	if topic != TopicEvents {
		return p.Publisher.Publish(topic, msgs...)
	}
	pub, err := p.events.get()
	if err != nil {
		return err
	}
	return pub.Publish(topic, msgs...)
}

func (p eventsApart) Close() error {
	return errors.Join(p.Publisher.Close(), p.events.close())
}

// lazyPublisher creates its publisher on first use: the command line and
// the bench publish no events, and a producer holds a broker connection.
type lazyPublisher struct {
	create func() (message.Publisher, error)

	mu     sync.Mutex
	pub    message.Publisher
	closed bool
}

func (l *lazyPublisher) get() (message.Publisher, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("publish: publisher closed")
	}
	if l.pub == nil {
		pub, err := l.create()
		if err != nil {
			return nil, err
		}
		l.pub = pub
	}
	return l.pub, nil
}

func (l *lazyPublisher) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.pub == nil {
		return nil
	}
	return l.pub.Close()
}

// NewSubscriber returns a Kafka subscriber in the consumer group group (see
// Group). Each Subscribe call joins the group for one topic; a record is
// delivered once its predecessor on the same partition is acked, and its
// offset is committed after it is acked. Router.Handle makes one per
// handler; use this directly only outside a Router.
func NewSubscriber(cfg Config, group string, log *slog.Logger) (message.Subscriber, error) {
	if group == "" {
		return nil, errors.New("create kafka subscriber: empty consumer group")
	}
	sc, err := ConsumerConfig(cfg)
	if err != nil {
		return nil, err
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               cfg.Brokers,
		Unmarshaler:           newMarshaler(),
		OverwriteSaramaConfig: sc,
		ConsumerGroup:         group,
		ReconnectRetrySleep:   cfg.withDefaults().RetryBackoff,
	}, watermillLogger(log))
	if err != nil {
		return nil, fmt.Errorf("create kafka subscriber for group %s: %w", group, err)
	}
	return sub, nil
}

// EnsureTopics creates those of topics that do not exist yet, with the
// given number of partitions and cfg.ReplicationFactor. Existing topics are
// left as they are. Use it at start-up against clusters that do not create
// topics automatically: a consumer group that subscribes before its topic
// exists would otherwise wait for the next metadata refresh.
//
// It returns once the brokers serve every topic with a leader for each
// partition. Kafka answers CreateTopics when its controller has the topic,
// before the brokers have heard of it; a producer asking a broker in
// between is told the topic does not exist.
func EnsureTopics(ctx context.Context, cfg Config, topics []string, partitions int) error {
	sc, err := ConsumerConfig(cfg)
	if err != nil {
		return err
	}
	// Sarama's admin calls take no context; run them aside so that ctx
	// still bounds how long the caller waits.
	done := make(chan error, 1)
	go func() { done <- ensureTopics(ctx, cfg, sc, topics, partitions) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("ensure topics: %w", ctx.Err())
	}
}

func ensureTopics(ctx context.Context, cfg Config, sc *sarama.Config, topics []string, partitions int) (err error) {
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		return fmt.Errorf("connect cluster admin to %v: %w", cfg.Brokers, err)
	}
	defer func() {
		if cerr := admin.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close cluster admin: %w", cerr)
		}
	}()
	existing, err := admin.ListTopics()
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	cfg = cfg.withDefaults()
	maxBytes := strconv.Itoa(cfg.TopicMaxMessageBytes())
	detail := &sarama.TopicDetail{
		NumPartitions:     int32(partitions),
		ReplicationFactor: cfg.ReplicationFactor,
		ConfigEntries:     map[string]*string{"max.message.bytes": &maxBytes},
	}
	for _, t := range topics {
		if _, ok := existing[t]; ok {
			continue
		}
		// Another replica may create it between our list and create.
		if err := admin.CreateTopic(t, detail, false); err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			return fmt.Errorf("create topic %s with %d partitions: %w", t, partitions, err)
		}
	}
	return waitTopics(ctx, cfg, sc, topics)
}

// waitTopics waits until the brokers' metadata has every topic with a
// leader for each of its partitions.
func waitTopics(ctx context.Context, cfg Config, sc *sarama.Config, topics []string) (err error) {
	client, err := sarama.NewClient(cfg.Brokers, sc)
	if err != nil {
		return fmt.Errorf("connect to %v: %w", cfg.Brokers, err)
	}
	defer func() {
		if cerr := client.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close client: %w", cerr)
		}
	}()
	for {
		var missing []string
		err := client.RefreshMetadata(topics...)
		for _, t := range topics {
			all, aerr := client.Partitions(t)
			writable, werr := client.WritablePartitions(t)
			if aerr != nil || werr != nil || len(all) == 0 || len(writable) < len(all) {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for topics %v to have leaders (last metadata error: %v): %w", missing, err, ctx.Err())
		case <-time.After(cfg.RetryBackoff):
		}
	}
}
