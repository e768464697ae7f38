package bus_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
)

const concTopic = "conc.one"

// publishNumbered publishes records whose payloads are from..to-1 in
// decimal to a one-partition topic, so that a record's payload is its
// offset.
func publishNumbered(t *testing.T, cfg bus.Config, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := bus.EnsureTopics(ctx, cfg, []string{concTopic}, 1); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := from; i < to; i++ {
		m := message.NewMessage(strconv.Itoa(i), []byte(strconv.Itoa(i)))
		m.Metadata.Set(bus.MetaMessageID, "m"+strconv.Itoa(i))
		if err := pub.Publish(concTopic, m); err != nil {
			t.Fatal(err)
		}
	}
}

// startConcurrent runs a router with one concurrent handler and returns a
// function that stops it (gracefully, as on SIGTERM) and returns Run's
// error.
func startConcurrent(t *testing.T, cfg bus.Config, c bus.Concurrency, h func(ctx context.Context, n int) error) func() error {
	t.Helper()
	r, err := bus.NewRouter(cfg, "svc", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.HandleConcurrent("work", concTopic, c, func(msg *message.Message) error {
		n, err := strconv.Atoi(string(msg.Payload))
		if err != nil {
			return bus.Permanent(err)
		}
		return h(msg.Context(), n)
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = receive(t, done, "the router to stop")
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("router stopped: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("router did not start")
	}
	return stop
}

// committed returns the group's committed offset of the topic's partition 0
// (-1 when none).
func committed(t *testing.T, cfg bus.Config, group string) int64 {
	t.Helper()
	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{concTopic: {0}})
	if err != nil {
		t.Fatal(err)
	}
	if b := resp.GetBlock(concTopic, 0); b != nil {
		return b.Offset
	}
	return -1
}

func waitCommittedOffset(t *testing.T, cfg bus.Config, group string, want int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := committed(t, cfg, group)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s committed offset %d, want %d", group, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gauge tracks how many handlers run at once and the most seen.
type gauge struct {
	mu       sync.Mutex
	now, max int
	changed  chan struct{}
}

func newGauge() *gauge { return &gauge{changed: make(chan struct{})} }

func (g *gauge) add(d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.now += d
	g.max = max(g.max, g.now)
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gauge) peak() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}

// waitFor waits until cond holds for the current and peak counts.
func (g *gauge) waitFor(t *testing.T, what string, cond func(now, peak int) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		ok, ch, now, peak := cond(g.now, g.max), g.changed, g.now, g.max
		g.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("waited for %s; %d running, peak %d", what, now, peak)
		}
	}
}

func TestHandleConcurrent_handlesOnePartitionsRecordsAtOnceUpToTheLimit(t *testing.T) {
	cfg := testConfig(startBroker(t))
	publishNumbered(t, cfg, 0, 20)
	g := newGauge()
	gate := make(chan struct{})
	var mu sync.Mutex
	seen := map[int]int{}
	startConcurrent(t, cfg, bus.Concurrency{Records: 5}, func(_ context.Context, n int) error {
		g.add(1)
		defer g.add(-1)
		<-gate
		mu.Lock()
		seen[n]++
		mu.Unlock()
		return nil
	})

	// With the gate closed nothing finishes, so a handler that took one
	// record at a time would never get to five.
	g.waitFor(t, "five records of one partition in flight", func(now, _ int) bool { return now == 5 })
	close(gate)
	waitCommittedOffset(t, cfg, bus.Group("svc", "work"), 20)
	if p := g.peak(); p != 5 {
		t.Errorf("peak records in flight = %d, want 5 (the limit)", p)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range 20 {
		if seen[i] != 1 {
			t.Errorf("record %d handled %d times, want once", i, seen[i])
		}
	}
}

func TestHandleConcurrent_commitsOnlyPastFinishedRecordsAndRedeliversTheRest(t *testing.T) {
	cfg := testConfig(startBroker(t))
	cfg.CloseTimeout = 2 * time.Second // the stuck record is given up after 1.5 s
	group := bus.Group("svc", "work")
	publishNumbered(t, cfg, 0, 10)

	g := newGauge()
	var mu sync.Mutex
	first := map[int]bool{}
	stop := startConcurrent(t, cfg, bus.Concurrency{}, func(ctx context.Context, n int) error {
		if n == 3 {
			// In flight until the consumer gives it up.
			g.add(1)
			<-ctx.Done()
			return ctx.Err()
		}
		mu.Lock()
		first[n] = true
		mu.Unlock()
		g.add(1)
		return nil
	})
	g.waitFor(t, "every record handled", func(_, peak int) bool { return peak == 10 })
	// 0-2 finished and are committed; 4-9 finished too, but behind 3.
	waitCommittedOffset(t, cfg, group, 3)
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := committed(t, cfg, group); got != 3 {
		t.Fatalf("after the stop the committed offset is %d, want 3", got)
	}

	redelivered := make(chan int, 20)
	startConcurrent(t, cfg, bus.Concurrency{}, func(_ context.Context, n int) error {
		redelivered <- n
		return nil
	})
	waitCommittedOffset(t, cfg, group, 10)
	got := map[int]bool{}
	for len(redelivered) > 0 {
		got[<-redelivered] = true
	}
	for n := range 10 {
		if n < 3 && got[n] {
			t.Errorf("record %d was committed but redelivered", n)
		}
		if n >= 3 && !got[n] {
			t.Errorf("record %d was not redelivered; it was never committed", n)
		}
	}
}

func TestHandleConcurrent_shutdownDrainsRecordsInFlight(t *testing.T) {
	cfg := testConfig(startBroker(t))
	cfg.CloseTimeout = time.Minute
	group := bus.Group("svc", "work")
	publishNumbered(t, cfg, 0, 3)
	g := newGauge()
	release := make(chan struct{})
	finished := make(chan int, 3)
	stop := startConcurrent(t, cfg, bus.Concurrency{}, func(ctx context.Context, n int) error {
		g.add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		finished <- n
		return nil
	})
	g.waitFor(t, "three records in flight", func(now, _ int) bool { return now == 3 })

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// The shutdown waits for the records instead of cutting them off.
	select {
	case err := <-stopped:
		t.Fatalf("the router stopped with records in flight: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := receive(t, stopped, "the router to stop after draining"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if len(finished) != 3 {
		t.Errorf("%d records finished during the drain, want 3", len(finished))
	}
	if got := committed(t, cfg, group); got != 3 {
		t.Errorf("committed offset after the drain = %d, want 3", got)
	}
}
