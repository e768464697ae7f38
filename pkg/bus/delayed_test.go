package bus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func contractRouter_handleDelayedHandsRecordsOverOnlyOnceDue(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	const delay = 300 * time.Millisecond
	type handled struct {
		id string
		at time.Time
	}
	got := make(chan handled, 10)
	var flakyCalls atomic.Int32
	runRouter(t, cfg, "sender", func(r *bus.Router) error {
		return r.HandleDelayed("retry.1m", bus.TopicRetry1m, delay, bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			if d.GetDeliveryId() == "flaky" && flakyCalls.Add(1) == 1 {
				return errTransient // the retry middleware applies here too
			}
			got <- handled{d.GetDeliveryId(), time.Now()}
			return nil
		}))
	})
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sent := time.Now()
	ids := []string{"d1", "flaky", "d2"}
	for _, id := range ids {
		if err := bus.Publish(pub, bus.TopicRetry1m, &mailbusv1.Delivery{TenantId: "acme", MessageId: "m1", DeliveryId: id}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range ids {
		h := receive(t, got, "a delayed record")
		if h.id != want {
			t.Errorf("handled %s, want %s (in order)", h.id, want)
		}
		// Never early. Kafka timestamps are in whole milliseconds, so the
		// record may be stamped up to 1ms before sent.
		if early := sent.Add(delay - time.Millisecond).Sub(h.at); early > 0 {
			t.Errorf("%s handled %v before its delay was over", h.id, early)
		}
	}
}

func contractRouter_handleDelayedLetsShutdownInterruptTheWaitAndRedelivers(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicRetry6h, &mailbusv1.Delivery{TenantId: "acme", DeliveryId: "d1"}, nil); err != nil {
		t.Fatal(err)
	}

	first, err := bus.NewRouter(cfg, "sender", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.HandleDelayed("retry.6h", bus.TopicRetry6h, 6*time.Hour, bus.Handle(func(context.Context, *message.Message, *mailbusv1.Delivery) error {
		t.Error("handled a record six hours early")
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	<-first.Running()
	waitGroupStable(t, cfg, bus.Group("sender", "retry.6h"))
	cancel()
	if err := receive(t, done, "the router to stop while a record waits for six hours"); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// The record was not committed: a replica with no delay gets it.
	got := make(chan string, 1)
	runRouter(t, cfg, "sender", func(r *bus.Router) error {
		return r.HandleDelayed("retry.6h", bus.TopicRetry6h, 0, bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			got <- d.GetDeliveryId()
			return nil
		}))
	})
	if id := receive(t, got, "the redelivered record"); id != "d1" {
		t.Errorf("got %q, want d1", id)
	}
}

// waitGroupStable waits until group has a member with partitions assigned.
func waitGroupStable(t *testing.T, cfg bus.Config, group string) {
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
	deadline := time.Now().Add(waitTimeout)
	for {
		gs, err := admin.DescribeConsumerGroups([]string{group})
		if err == nil && len(gs) == 1 && gs[0].State == "Stable" && len(gs[0].Members) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s not stable: %v %v", group, gs, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
