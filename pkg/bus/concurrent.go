package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"golang.org/x/sync/semaphore"
)

// Concurrency bounds what HandleConcurrent keeps in flight in one process.
// Zero fields take the defaults.
type Concurrency struct {
	// Records caps the records being handled at once over all partitions;
	// default 1000. It is the number of handler goroutines, and with it
	// the most transactions a sender replica can have waiting for or
	// holding a connection.
	Records int
	// PerPartition caps how far a partition runs ahead of its oldest
	// unfinished record: the records handed out and not yet committed,
	// finished or not; default 1000. A record stuck at the head holds its
	// partition's commit, and only this much work gets done past it.
	PerPartition int
	// Bytes caps the payload bytes of the records being handled at once;
	// default 64 MiB. A record larger than Bytes is handled alone. While the
	// cap is reached, fetching pauses, so that records do not pile up in
	// the Kafka client either.
	Bytes int64
}

func (c Concurrency) withDefaults() Concurrency {
	if c.Records <= 0 {
		c.Records = 1000
	}
	if c.PerPartition <= 0 {
		c.PerPartition = 1000
	}
	if c.Bytes <= 0 {
		c.Bytes = 64 << 20
	}
	return c
}

// concurrentFetchBuffer is the Kafka client's per-partition channel of
// fetched records for a concurrent subscriber (sarama's default is 256).
// Those records sit outside the Bytes cap, so the buffer stays small; the
// handler goroutines, not the buffer, keep the handler busy.
const concurrentFetchBuffer = 4

// HandleConcurrent subscribes h to topic in consumer group
// Group(service, handler), like Handle, but hands each partition's records
// to h without waiting for the previous one to finish: up to c.Records at
// once in this process, whatever the partition count. The router's
// middleware stack applies to every record as usual (poison queue, retry,
// permanent errors, timeout, recoverer).
//
// Commits stay in order: a partition's committed offset only moves past a
// record once it and every record before it have finished (acked, which
// includes records the poison queue took), so a crash redelivers whatever
// was unfinished and never skips a record. Records that finished after an
// unfinished one are redelivered too; handlers are idempotent anyway.
//
// Records of one partition may finish in any order, so use it only where
// per-key order does not matter (the sender: each record is one delivery
// attempt on its own).
//
// A rebalance or a shutdown stops handing out records and waits up to
// three quarters of Config.CloseTimeout for those in flight (SIGTERM
// drains); what is still unfinished then has its context cancelled, is not
// committed, and is redelivered to the partition's next owner.
func (r *Router) HandleConcurrent(handler, topic string, c Concurrency, h message.NoPublishHandlerFunc) error {
	group := Group(r.service, handler)
	sub, err := NewConcurrentSubscriber(r.cfg, group, c, r.log)
	if err != nil {
		return fmt.Errorf("subscribe %s to %s: %w", handler, topic, err)
	}
	r.router.AddConsumerHandler(handler, topic, sub, h)
	r.subs = append(r.subs, groupTopic{group, topic})
	return nil
}

// NewConcurrentSubscriber returns a subscriber in consumer group group that
// hands out records without waiting for their predecessors' acks, within
// the bounds of c, and commits each partition's offsets in order. See
// Router.HandleConcurrent.
func NewConcurrentSubscriber(cfg Config, group string, c Concurrency, log *slog.Logger) (message.Subscriber, error) {
	if group == "" {
		return nil, errors.New("create concurrent subscriber: empty consumer group")
	}
	sc, err := ConsumerConfig(cfg)
	if err != nil {
		return nil, err
	}
	sc.ChannelBufferSize = concurrentFetchBuffer
	c = c.withDefaults()
	return &concurrentSubscriber{
		groupMember: newGroupMember(cfg, sc, group, "concurrent", log),
		lim:         c,
		records:     semaphore.NewWeighted(int64(c.Records)),
		bytes:       semaphore.NewWeighted(c.Bytes),
	}, nil
}

type concurrentSubscriber struct {
	*groupMember
	lim Concurrency

	// records and bytes are shared by every subscription and partition of
	// this subscriber: the bounds are per process.
	records *semaphore.Weighted
	bytes   *semaphore.Weighted
}

// Subscribe joins the group for topic. The returned channel closes once ctx
// is cancelled or Close is called and the records in flight have drained:
// a session's end does not end its records (see ConsumeClaim), so that a
// shutdown can drain them. Close waits for that too.
func (s *concurrentSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.subscribe(ctx, topic, func(ctx context.Context, cg sarama.ConsumerGroup, out chan<- *message.Message) sarama.ConsumerGroupHandler {
		return &concurrentHandler{sub: s, cg: cg, out: out, drain: s.cfg.CloseTimeout * 3 / 4, values: context.WithoutCancel(ctx)}
	})
}

type concurrentHandler struct {
	sub   *concurrentSubscriber
	cg    sarama.ConsumerGroup
	out   chan<- *message.Message
	drain time.Duration
	// values is the subscription's context without its cancellation: the
	// records' contexts carry what it carries (the service's pprof label,
	// by which make bench charges work to a stage) but end on their own.
	values context.Context

	pauseMu sync.Mutex
	waiting int
}

func (*concurrentHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*concurrentHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim hands a partition's records out as fast as the bounds allow
// and marks offsets in order as records finish. When the session ends it
// stops handing out, drains, and returns.
func (h *concurrentHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	// The records' context is not the session's: a shutdown or rebalance
	// lets them finish (up to h.drain) instead of cutting them off
	// mid-transaction, which would only make them run again elsewhere.
	ctx, cancel := context.WithCancel(h.values)
	defer cancel()
	w := newWindow(sess, claim.Topic(), claim.Partition())
	var wg sync.WaitGroup
	h.consume(ctx, sess, claim, w, &wg)

	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	t := time.NewTimer(h.drain)
	defer t.Stop()
	select {
	case <-finished:
	case <-t.C:
		h.sub.log.Warn("records still in flight when the partition was given up; they are redelivered",
			slog.String("topic", claim.Topic()), slog.Int("partition", int(claim.Partition())), slog.Int("in_flight", w.unfinished()))
		cancel()
		<-finished
	}
	// Nothing is marked after the claim ends: the partition's next owner
	// (or the next session) starts from what was committed.
	w.close()
	return nil
}

func (h *concurrentHandler) consume(ctx context.Context, sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim, w *window, wg *sync.WaitGroup) {
	done := sess.Context().Done()
	lim := h.sub.lim
	for {
		if !w.waitRoom(done, lim.PerPartition) {
			return
		}
		var km *sarama.ConsumerMessage
		select {
		case m, ok := <-claim.Messages():
			if !ok {
				return
			}
			km = m
		case <-done:
			return
		}
		size := min(int64(len(km.Key)+len(km.Value)), lim.Bytes)
		if !h.acquire(sess.Context(), size) {
			return
		}
		msg, err := newMarshaler().Unmarshal(km)
		if err != nil {
			// Our unmarshaler never fails; keep the partition moving if that
			// changes rather than wedging it.
			h.sub.log.Error("unmarshal record", slog.String("topic", km.Topic), slog.Any("err", err))
			h.release(size)
			w.add(km.Offset)
			w.finish(km.Offset)
			continue
		}
		w.add(km.Offset)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer h.release(size)
			if h.deliver(ctx, sess, km, msg) {
				w.finish(km.Offset)
			}
		}()
	}
}

// acquire takes a record slot and size bytes of the process's budget,
// pausing fetching while it has to wait. It reports false when the session
// ended first.
func (h *concurrentHandler) acquire(ctx context.Context, size int64) bool {
	s := h.sub
	if s.records.TryAcquire(1) {
		if s.bytes.TryAcquire(size) {
			return true
		}
		s.records.Release(1)
	}
	h.pause()
	defer h.resume()
	if s.records.Acquire(ctx, 1) != nil {
		return false
	}
	if s.bytes.Acquire(ctx, size) != nil {
		s.records.Release(1)
		return false
	}
	return true
}

func (h *concurrentHandler) release(size int64) {
	h.sub.bytes.Release(size)
	h.sub.records.Release(1)
}

// pause stops fetching while some partition waits for budget, so that the
// Kafka client does not buffer records the process has no room for.
func (h *concurrentHandler) pause() {
	h.pauseMu.Lock()
	defer h.pauseMu.Unlock()
	h.waiting++
	if h.waiting == 1 {
		h.cg.PauseAll()
	}
}

func (h *concurrentHandler) resume() {
	h.pauseMu.Lock()
	defer h.pauseMu.Unlock()
	h.waiting--
	if h.waiting == 0 {
		h.cg.ResumeAll()
	}
}

// deliver hands msg to the router until it is acked, and reports whether
// it was. A nacked record (a failed poison publish) is handed out again
// after a pause while the session lasts. It gives up, reporting false, when
// the session ends before the record was handed out, or when ctx is
// cancelled because the drain ran out.
func (h *concurrentHandler) deliver(ctx context.Context, sess sarama.ConsumerGroupSession, km *sarama.ConsumerMessage, msg *message.Message) bool {
	done := sess.Context().Done()
	for {
		mctx, cancel := context.WithCancel(withRecordPosition(ctx, km.Partition, km.Offset))
		msg.SetContext(mctx)
		select {
		case h.out <- msg:
		case <-done:
			cancel()
			return false
		case <-ctx.Done():
			cancel()
			return false
		}
		select {
		case <-msg.Acked():
			cancel()
			return true
		case <-msg.Nacked():
			cancel()
		case <-ctx.Done():
			cancel()
			return false
		}
		msg = msg.Copy()
		select {
		case <-time.After(h.sub.cfg.RetryBackoff):
		case <-done:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// window is one partition's records handed out and not yet committed, in
// offset order. The committed offset moves to just past the longest
// finished prefix.
type window struct {
	sess      sarama.ConsumerGroupSession
	topic     string
	partition int32

	mu      sync.Mutex
	offsets []int64 // handed out, ascending
	done    []bool  // parallel to offsets
	left    int     // entries not yet done
	closed  bool
	changed chan struct{}
}

func newWindow(sess sarama.ConsumerGroupSession, topic string, partition int32) *window {
	return &window{sess: sess, topic: topic, partition: partition, changed: make(chan struct{})}
}

func (w *window) add(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.offsets = append(w.offsets, offset)
	w.done = append(w.done, false)
	w.left++
}

// finish records that the record at offset is done and marks the offset
// after the finished prefix, if it grew.
func (w *window) finish(offset int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	i := sort.Search(len(w.offsets), func(i int) bool { return w.offsets[i] >= offset })
	if i == len(w.offsets) || w.offsets[i] != offset || w.done[i] {
		return
	}
	w.done[i] = true
	w.left--
	n := 0
	for n < len(w.done) && w.done[n] {
		n++
	}
	if n == 0 {
		return
	}
	w.sess.MarkOffset(w.topic, w.partition, w.offsets[n-1]+1, "")
	w.offsets = append(w.offsets[:0], w.offsets[n:]...)
	w.done = append(w.done[:0], w.done[n:]...)
	close(w.changed)
	w.changed = make(chan struct{})
}

// waitRoom waits until fewer than limit records are uncommitted; false
// when done closed first.
func (w *window) waitRoom(done <-chan struct{}, limit int) bool {
	for {
		w.mu.Lock()
		n, ch := len(w.offsets), w.changed
		w.mu.Unlock()
		if n < limit {
			return true
		}
		select {
		case <-ch:
		case <-done:
			return false
		}
	}
}

func (w *window) unfinished() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.left
}

func (w *window) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}
