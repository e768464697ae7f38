package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names of the bus, the same for every stage, so that one dashboard
// panel shows every consumer group.
const (
	// MetricHandled counts records whose handling ended, by group, topic and
	// result: ok, poisoned (sent to mail.poison and acked), or failed (not
	// acked: the service is shutting down or the poison topic could not be
	// written; the record is consumed again).
	MetricHandled = "mailbus_bus_handled_total"
	// MetricHandlerDuration is the time the handler stack took per record,
	// retries included, by group.
	MetricHandlerDuration = "mailbus_bus_handler_duration_seconds"
	// MetricConsumerLag is the records of a topic that a consumer group has
	// not committed yet, summed over the topic's partitions, measured when
	// Prometheus scrapes.
	MetricConsumerLag = "mailbus_bus_consumer_lag"
)

// lagTimeout bounds one lag measurement, so that a scrape never hangs on an
// unreachable broker; Prometheus scrapes time out after 10s by default.
const lagTimeout = 5 * time.Second

// routerMetrics are what a Router reports to Config.Metrics. Several routers
// in one process (mailbus dev) share one registry: they share the same
// collectors, which is what registering the same metric twice returns.
type routerMetrics struct {
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	lag      *lagCollector
}

func newRouterMetrics(cfg Config, log *slog.Logger) (*routerMetrics, error) {
	m := &routerMetrics{}
	handled := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricHandled,
		Help: "Records whose handling ended, by consumer group, topic and result (ok, poisoned, failed).",
	}, []string{"group", "topic", "result"})
	if err := registerShared(cfg.Metrics, handled, &m.handled); err != nil {
		return nil, err
	}
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricHandlerDuration,
		Help: "Time the handler stack took per record, retries included, by consumer group.",
		// From a quick signature to an SMTP transaction on a slow relay,
		// up to HandlerTimeout and its retries.
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"group"})
	if err := registerShared(cfg.Metrics, duration, &m.duration); err != nil {
		return nil, err
	}
	lag := &lagCollector{
		cfg: cfg, log: log, groups: map[groupTopic]int{},
		desc: prometheus.NewDesc(MetricConsumerLag,
			"Records not yet committed by a consumer group, summed over the topic's partitions, measured at scrape time.",
			[]string{"group", "topic"}, nil),
	}
	if err := registerShared(cfg.Metrics, lag, &m.lag); err != nil {
		return nil, err
	}
	return m, nil
}

// registerShared registers c, or when an equal collector is registered
// already (another router of this process), stores that one in *dst.
func registerShared[C prometheus.Collector](reg prometheus.Registerer, c C, dst *C) error {
	*dst = c
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &are):
		existing, ok := are.ExistingCollector.(C)
		if !ok {
			return fmt.Errorf("register bus metrics: another collector of type %T holds the name", are.ExistingCollector)
		}
		*dst = existing
		return nil
	default:
		return fmt.Errorf("register bus metrics: %w", err)
	}
}

// middleware counts and times every record of service's handlers. It is
// the outermost middleware, so it sees a record once, after the poison
// queue has decided its fate.
func (m *routerMetrics) middleware(service string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			group := Group(service, message.HandlerNameFromCtx(ctx))
			start := time.Now()
			out, err := h(msg)
			result := "ok"
			switch {
			case err != nil:
				result = "failed"
			case msg.Metadata.Get(middleware.ReasonForPoisonedKey) != "":
				result = "poisoned"
			}
			m.handled.WithLabelValues(group, message.SubscribeTopicFromCtx(ctx), result).Inc()
			m.duration.WithLabelValues(group).Observe(time.Since(start).Seconds())
			return out, err
		}
	}
}

type groupTopic struct{ group, topic string }

// lagCollector measures the lag of the consumer groups of the routers
// running in this process when Prometheus scrapes: the end offset of every
// partition of the group's topic minus the offset the group committed (or
// minus the partition's start, where the group has committed nothing yet,
// since new groups start at the oldest record). Every replica of a service
// reports the same lag for its groups; dashboards take the max.
//
// Measuring at scrape time needs no exporter next to Kafka and is exact at
// that instant. A group none of whose replicas runs has nobody to report
// it: the MailbusConsumerLagUnknown alert (deploy/prometheus/alerts.yaml)
// covers that.
type lagCollector struct {
	desc *prometheus.Desc
	cfg  Config
	log  *slog.Logger

	mu     sync.Mutex // guards groups
	groups map[groupTopic]int

	// collecting is held while a measurement runs, and guards admin. A
	// scrape that finds it held (the previous one is stuck on a broker)
	// reports no lag.
	collecting sync.Mutex
	admin      sarama.ClusterAdmin
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// add starts reporting the lag of group on topic.
func (c *lagCollector) add(group, topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.groups[groupTopic{group, topic}]++
}

// remove stops reporting the lag of group on topic. Once no group is left
// the connection is closed, aside, so that a router's Close does not wait
// for a measurement in progress.
func (c *lagCollector) remove(group, topic string) {
	c.mu.Lock()
	k := groupTopic{group, topic}
	if c.groups[k]--; c.groups[k] <= 0 {
		delete(c.groups, k)
	}
	idle := len(c.groups) == 0
	c.mu.Unlock()
	if idle {
		go c.closeIfIdle()
	}
}

func (c *lagCollector) closeIfIdle() {
	c.collecting.Lock()
	defer c.collecting.Unlock()
	c.mu.Lock()
	idle := len(c.groups) == 0
	c.mu.Unlock()
	if idle && c.admin != nil {
		_ = c.admin.Close()
		c.admin = nil
	}
}

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.collecting.TryLock() {
		return
	}
	done := make(chan map[groupTopic]int64, 1)
	go func() {
		defer c.collecting.Unlock()
		done <- c.measure()
	}()
	select {
	case lags := <-done:
		for k, v := range lags {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), k.group, k.topic)
		}
	case <-time.After(lagTimeout):
		c.log.Warn("consumer lag: the brokers did not answer in time; reporting no lag this scrape", "timeout", lagTimeout)
	}
}

// measure returns the lag of every group; on an error it logs, drops the
// connection (the next scrape reconnects) and returns what it has. The
// caller holds c.collecting.
func (c *lagCollector) measure() map[groupTopic]int64 {
	c.mu.Lock()
	keys := make([]groupTopic, 0, len(c.groups))
	for k := range c.groups {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].group != keys[j].group {
			return keys[i].group < keys[j].group
		}
		return keys[i].topic < keys[j].topic
	})
	lags, err := c.measureGroups(keys)
	if err != nil {
		c.log.Warn("consumer lag: cannot measure", "err", err)
		if c.admin != nil {
			_ = c.admin.Close()
			c.admin = nil
		}
	}
	return lags
}

func (c *lagCollector) measureGroups(keys []groupTopic) (map[groupTopic]int64, error) {
	if c.admin == nil {
		sc, err := ConsumerConfig(c.cfg)
		if err != nil {
			return nil, err
		}
		sc.ClientID = c.cfg.withDefaults().ClientID + "-lag"
		sc.Net.ReadTimeout = lagTimeout
		sc.Net.WriteTimeout = lagTimeout
		sc.Metadata.AllowAutoTopicCreation = false
		if c.admin, err = sarama.NewClusterAdmin(c.cfg.Brokers, sc); err != nil {
			return nil, fmt.Errorf("connect to %v: %w", c.cfg.Brokers, err)
		}
	}
	// The groups' topics and their partitions.
	var topics []string
	seen := map[string]bool{}
	for _, k := range keys {
		if !seen[k.topic] {
			seen[k.topic] = true
			topics = append(topics, k.topic)
		}
	}
	meta, err := c.admin.DescribeTopics(topics)
	if err != nil {
		return nil, fmt.Errorf("describe topics %v: %w", topics, err)
	}
	partitions := map[string][]int32{}
	for _, tm := range meta {
		if !errors.Is(tm.Err, sarama.ErrNoError) {
			continue // not created yet: nothing to lag behind
		}
		for _, p := range tm.Partitions {
			partitions[tm.Name] = append(partitions[tm.Name], p.ID)
		}
	}
	ends, err := c.offsets(partitions, sarama.OffsetNewest)
	if err != nil {
		return nil, err
	}

	lags := map[groupTopic]int64{}
	var starts map[string]map[int32]int64
	for _, k := range keys {
		parts := partitions[k.topic]
		if len(parts) == 0 {
			continue
		}
		resp, err := c.admin.ListConsumerGroupOffsets(k.group, map[string][]int32{k.topic: parts})
		if err != nil {
			return lags, fmt.Errorf("committed offsets of group %s: %w", k.group, err)
		}
		var lag int64
		for _, p := range parts {
			end := ends[k.topic][p]
			from := int64(-1)
			if b := resp.GetBlock(k.topic, p); b != nil && errors.Is(b.Err, sarama.ErrNoError) {
				from = b.Offset
			}
			if from < 0 {
				// Nothing committed: the group will start at the oldest
				// record still in the log.
				if starts == nil {
					if starts, err = c.offsets(partitions, sarama.OffsetOldest); err != nil {
						return lags, err
					}
				}
				from = starts[k.topic][p]
			}
			lag += max(end-from, 0)
		}
		lags[k] = lag
	}
	return lags, nil
}

// offsets returns the newest or oldest offset of every partition.
func (c *lagCollector) offsets(partitions map[string][]int32, which int64) (map[string]map[int32]int64, error) {
	req := map[string]map[int32]int64{}
	for t, ps := range partitions {
		req[t] = map[int32]int64{}
		for _, p := range ps {
			req[t][p] = which
		}
	}
	out := map[string]map[int32]int64{}
	if len(req) == 0 {
		return out, nil
	}
	res, err := c.admin.ListOffsets(req, nil)
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	for t, ps := range res {
		out[t] = map[int32]int64{}
		for p, r := range ps {
			if r.Err != nil && !errors.Is(r.Err, sarama.ErrNoError) {
				return nil, fmt.Errorf("list offsets of %s/%d: %w", t, p, r.Err)
			}
			out[t][p] = r.Offset
		}
	}
	return out, nil
}

// reportLag reports the lag of the router's groups until the returned
// function is called.
func (r *Router) reportLag() (stop func()) {
	if r.metrics == nil {
		return func() {}
	}
	subs := append([]groupTopic(nil), r.subs...)
	for _, s := range subs {
		r.metrics.lag.add(s.group, s.topic)
	}
	return func() {
		for _, s := range subs {
			r.metrics.lag.remove(s.group, s.topic)
		}
	}
}
