package limits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"golang.org/x/sync/singleflight"

	"github.com/mailbus/mailbus/pkg/bus"
)

// DefaultLedgerWindow is how far back KafkaLedger reads: the current day of
// every time zone began less than 26 hours ago (a day lasts at most 25
// hours, and entries are written during their day), plus a margin for
// clocks that disagree.
const DefaultLedgerWindow = 30 * time.Hour

// KafkaLedger is the Ledger on a Kafka topic (bus.TopicQuotaLedger by
// default), one small JSON record per entry, keyed by tenant.
//
// Nothing reads the topic until a restore needs it: the first Entries call
// starts one consumer per partition at the records of the last
// DefaultLedgerWindow (ListOffsets by timestamp), keeps the highest value
// per tenant, day and counter in memory, and keeps following the topic so
// that later restores only wait for what is new. Entries waits until every
// partition has been read up to the high-water mark it found when called;
// an Append acknowledged by all in-sync replicas lies below it, so Entries
// sees every entry appended before it was called.
//
// The topic is not compacted: a restore needs the highest value, and
// replicas write concurrently, so the last record of a key need not be the
// highest. A topic with Kafka's default seven-day retention holds a few
// records per limited counter per day (see DefaultLedgerSteps).
type KafkaLedger struct {
	cfg    bus.Config
	topic  string
	window time.Duration
	log    *slog.Logger

	connMu sync.Mutex
	conn   *ledgerConn
	closed bool

	mu       sync.Mutex
	moved    chan struct{}                // closed and replaced whenever a partition advances
	next     map[int32]int64              // the next offset to read per consumed partition
	counters map[[2]string]ledgerCounters // by space and tenant
	pruned   time.Time

	syncs   singleflight.Group
	started atomic.Int64 // catch-up rounds started
}

// ledgerCounters holds a tenant's highest value per day and counter, and
// when the last of their records was written, to forget them after the
// window.
type ledgerCounters map[[2]string]ledgerValue

type ledgerValue struct {
	value   int64
	written time.Time
}

type ledgerConn struct {
	producer sarama.SyncProducer
	client   sarama.Client
	consumer sarama.Consumer
	parts    map[int32]sarama.PartitionConsumer
}

// NewKafkaLedger returns a ledger on cfg's brokers. It connects on first
// use; Close releases it.
func NewKafkaLedger(cfg bus.Config, log *slog.Logger) *KafkaLedger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &KafkaLedger{
		cfg: cfg, topic: bus.TopicQuotaLedger, window: DefaultLedgerWindow, log: log.With("ledger", bus.TopicQuotaLedger),
		moved: make(chan struct{}), next: map[int32]int64{}, counters: map[[2]string]ledgerCounters{},
	}
}

// Append publishes e and returns once every in-sync replica has it.
func (k *KafkaLedger) Append(ctx context.Context, e LedgerEntry) error {
	c, err := k.connect()
	if err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode ledger entry: %w", err)
	}
	msg := &sarama.ProducerMessage{Topic: k.topic, Key: sarama.StringEncoder(e.Tenant), Value: sarama.ByteEncoder(b)}
	// SendMessage takes no context; run it aside so that ctx still bounds
	// the wait. The producer retries on its own and never duplicates.
	done := make(chan error, 1)
	go func() {
		_, _, err := c.producer.SendMessage(msg)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("append to %s: %w", k.topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("append to %s: %w", k.topic, ctx.Err())
	}
}

// Entries returns the tenant's entries of the window, read up to the end of
// the topic as it was when called.
func (k *KafkaLedger) Entries(ctx context.Context, space, tenant string) ([]LedgerEntry, error) {
	// Share catch-up rounds between concurrent callers (a loss makes every
	// tenant restore at once), but only rounds that began after the caller
	// came: an earlier round may have read the high-water marks before an
	// entry the caller must see.
	arrived := k.started.Load()
	for {
		v, err, _ := k.syncs.Do("sync", func() (any, error) {
			round := k.started.Add(1)
			return round, k.catchUp(ctx)
		})
		if err != nil {
			return nil, err
		}
		if v.(int64) > arrived {
			break
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []LedgerEntry
	for key, v := range k.counters[[2]string{space, tenant}] {
		out = append(out, LedgerEntry{Space: space, Tenant: tenant, Day: key[0], Counter: key[1], Value: v.value})
	}
	return out, nil
}

// catchUp starts consumers for partitions not read yet and waits until
// every partition has been read up to its current high-water mark.
func (k *KafkaLedger) catchUp(ctx context.Context) error {
	c, err := k.connect()
	if err != nil {
		return err
	}
	// Metadata may be older than a partition added since, or than the
	// topic itself (created on first use).
	if err := c.client.RefreshMetadata(k.topic); err != nil {
		return fmt.Errorf("read partitions of %s: %w", k.topic, err)
	}
	parts, err := c.client.Partitions(k.topic)
	if err != nil {
		return fmt.Errorf("read partitions of %s: %w", k.topic, err)
	}
	targets := make(map[int32]int64, len(parts))
	for _, p := range parts {
		hwm, err := c.client.GetOffset(k.topic, p, sarama.OffsetNewest)
		if err != nil {
			return fmt.Errorf("read the end of %s/%d: %w", k.topic, p, err)
		}
		targets[p] = hwm
		if err := k.follow(c, p, hwm); err != nil {
			return err
		}
	}
	for {
		k.mu.Lock()
		behind := false
		stopped := int32(-1)
		for p, hwm := range targets {
			next, ok := k.next[p]
			if !ok {
				stopped = p
			} else if next < hwm {
				behind = true
			}
		}
		moved := k.moved
		k.mu.Unlock()
		if stopped >= 0 {
			return fmt.Errorf("read %s/%d: the reader stopped (it starts again on the next call)", k.topic, stopped)
		}
		if !behind {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return fmt.Errorf("read %s up to its end: %w", k.topic, ctx.Err())
		}
	}
}

// follow starts reading partition p, unless it is being read, at the first
// record of the window. hwm is the partition's end read before: when no
// record is that recent, reading starts there, which misses nothing
// appended since.
func (k *KafkaLedger) follow(c *ledgerConn, p int32, hwm int64) error {
	k.connMu.Lock()
	defer k.connMu.Unlock()
	if k.closed {
		return errLedgerClosed
	}
	if _, ok := c.parts[p]; ok {
		return nil
	}
	from, err := c.client.GetOffset(k.topic, p, time.Now().Add(-k.window).UnixMilli())
	if err != nil {
		return fmt.Errorf("find the window's start in %s/%d: %w", k.topic, p, err)
	}
	if from < 0 {
		from = hwm
	}
	pc, err := c.consumer.ConsumePartition(k.topic, p, from)
	if err != nil {
		return fmt.Errorf("read %s/%d from offset %d: %w", k.topic, p, from, err)
	}
	c.parts[p] = pc
	k.mu.Lock()
	k.next[p] = from
	k.mu.Unlock()
	go func() {
		for err := range pc.Errors() {
			k.log.Warn("reading the quota ledger", "partition", p, "err", err)
		}
	}()
	go k.read(c, p, pc)
	return nil
}

// read applies partition p's records until its consumer stops. A consumer
// that stops on its own (its offset fell out of retention) is forgotten, so
// that the next catch-up starts it again.
func (k *KafkaLedger) read(c *ledgerConn, p int32, pc sarama.PartitionConsumer) {
	for m := range pc.Messages() {
		var e LedgerEntry
		err := json.Unmarshal(m.Value, &e)
		ok := err == nil && e.Tenant != "" && e.Day != "" && e.Counter != ""
		if !ok {
			k.log.Warn("skipping a malformed quota ledger record", "partition", p, "offset", m.Offset, "err", err)
		}
		k.mu.Lock()
		if ok {
			k.apply(e, m.Timestamp)
		}
		k.next[p] = m.Offset + 1
		close(k.moved)
		k.moved = make(chan struct{})
		k.mu.Unlock()
	}
	k.connMu.Lock()
	if c.parts[p] == pc {
		delete(c.parts, p)
	}
	k.connMu.Unlock()
	k.mu.Lock()
	delete(k.next, p)
	k.mu.Unlock()
}

// apply keeps e if it is the highest of its counter; k.mu is held.
func (k *KafkaLedger) apply(e LedgerEntry, written time.Time) {
	now := time.Now()
	if now.Sub(k.pruned) > k.window/4 {
		k.prune(now)
	}
	cs := k.counters[[2]string{e.Space, e.Tenant}]
	if cs == nil {
		cs = ledgerCounters{}
		k.counters[[2]string{e.Space, e.Tenant}] = cs
	}
	key := [2]string{e.Day, e.Counter}
	v := cs[key]
	v.value = max(v.value, e.Value)
	if written.After(v.written) {
		v.written = written
	}
	cs[key] = v
}

// prune forgets counters none of whose records is in the window any more:
// their day has ended in every zone. k.mu is held.
func (k *KafkaLedger) prune(now time.Time) {
	k.pruned = now
	cutoff := now.Add(-k.window)
	for owner, cs := range k.counters {
		for key, v := range cs {
			if v.written.Before(cutoff) {
				delete(cs, key)
			}
		}
		if len(cs) == 0 {
			delete(k.counters, owner)
		}
	}
}

var errLedgerClosed = errors.New("quota ledger is closed")

// connect returns the connection, making it on first use.
func (k *KafkaLedger) connect() (*ledgerConn, error) {
	k.connMu.Lock()
	defer k.connMu.Unlock()
	if k.closed {
		return nil, errLedgerClosed
	}
	if k.conn != nil {
		return k.conn, nil
	}
	pcfg, err := bus.ProducerConfig(k.cfg)
	if err != nil {
		return nil, err
	}
	producer, err := sarama.NewSyncProducer(k.cfg.Brokers, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect quota ledger producer to %v: %w", k.cfg.Brokers, err)
	}
	ccfg, err := bus.ConsumerConfig(k.cfg)
	if err != nil {
		_ = producer.Close()
		return nil, err
	}
	client, err := sarama.NewClient(k.cfg.Brokers, ccfg)
	if err != nil {
		_ = producer.Close()
		return nil, fmt.Errorf("connect quota ledger reader to %v: %w", k.cfg.Brokers, err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		_ = producer.Close()
		_ = client.Close()
		return nil, fmt.Errorf("create quota ledger consumer: %w", err)
	}
	k.conn = &ledgerConn{producer: producer, client: client, consumer: consumer, parts: map[int32]sarama.PartitionConsumer{}}
	return k.conn, nil
}

// Close stops reading and closes the connections. Later calls fail.
func (k *KafkaLedger) Close() error {
	k.connMu.Lock()
	c := k.conn
	k.closed, k.conn = true, nil
	var pcs []sarama.PartitionConsumer
	if c != nil {
		for _, pc := range c.parts {
			pcs = append(pcs, pc)
		}
	}
	k.connMu.Unlock()
	if c == nil {
		return nil
	}
	var errs []error
	for _, pc := range pcs {
		// Close drains the partition's channels alongside read, which
		// then ends; what it reports was logged already.
		_ = pc.Close()
	}
	if err := c.consumer.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close quota ledger consumer: %w", err))
	}
	if err := c.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close quota ledger client: %w", err))
	}
	if err := c.producer.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close quota ledger producer: %w", err))
	}
	return errors.Join(errs...)
}
