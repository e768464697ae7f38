package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// TestRouter_reportsHandledRecordsAndConsumerLag checks the metrics a
// router reports to Config.Metrics: the lag of its group while records wait
// (nothing committed yet, so counted from the partitions' start), the
// records handled by result once they go through, the lag back at zero, and
// a second router of the same process sharing the registry.
func TestRouter_reportsHandledRecordsAndConsumerLag(t *testing.T) {
	brokers := startBroker(t)
	reg := prometheus.NewRegistry()
	cfg := testConfig(brokers)
	cfg.Metrics = reg
	ctx := context.Background()
	if err := bus.EnsureTopics(ctx, cfg, []string{bus.TopicAdmitted, bus.TopicEvents}, 3); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := range 6 {
		d := &mailbusv1.Delivery{TenantId: "acme", MessageId: fmt.Sprintf("m%d", i), DeliveryId: fmt.Sprintf("d%d", i)}
		if err := bus.Publish(pub, bus.TopicAdmitted, d, nil); err != nil {
			t.Fatal(err)
		}
	}

	gate := make(chan struct{})
	runRouter(t, cfg, "signer", func(r *bus.Router) error {
		return r.Handle("sign", bus.TopicAdmitted, bus.Handle(func(ctx context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
			if d.GetDeliveryId() == "d3" {
				return bus.Permanent(errors.New("no DKIM key"))
			}
			return nil
		}))
	})
	lag := map[string]string{"group": "signer.sign", "topic": bus.TopicAdmitted}
	waitMetric(t, reg, bus.MetricConsumerLag, lag, 6)

	close(gate)
	waitMetric(t, reg, bus.MetricHandled, map[string]string{"group": "signer.sign", "topic": bus.TopicAdmitted, "result": "ok"}, 5)
	waitMetric(t, reg, bus.MetricHandled, map[string]string{"group": "signer.sign", "topic": bus.TopicAdmitted, "result": "poisoned"}, 1)
	waitMetric(t, reg, bus.MetricConsumerLag, lag, 0)
	if n := histogramCount(t, reg, bus.MetricHandlerDuration, map[string]string{"group": "signer.sign"}); n != 6 {
		t.Errorf("%s count = %d, want 6", bus.MetricHandlerDuration, n)
	}

	// A second service in the same process reports into the same metrics.
	runRouter(t, cfg, "tracker", func(r *bus.Router) error {
		return r.Handle("log", bus.TopicEvents, bus.Handle(func(context.Context, *message.Message, *mailbusv1.DeliveryEvent) error {
			return nil
		}))
	})
	for i := range 2 {
		e := &mailbusv1.DeliveryEvent{TenantId: "acme", MessageId: fmt.Sprintf("m%d", i), EventId: fmt.Sprintf("e%d", i)}
		if err := bus.Publish(pub, bus.TopicEvents, e, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, reg, bus.MetricHandled, map[string]string{"group": "tracker.log", "topic": bus.TopicEvents, "result": "ok"}, 2)
	waitMetric(t, reg, bus.MetricConsumerLag, map[string]string{"group": "tracker.log", "topic": bus.TopicEvents}, 0)
	waitMetric(t, reg, bus.MetricConsumerLag, lag, 0)
}

// waitMetric waits until the series of name with labels has value want.
func waitMetric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var got float64
	var found bool
	for time.Now().Before(deadline) {
		m := findSeries(t, reg, name, labels)
		if found = m != nil; found {
			switch {
			case m.GetCounter() != nil:
				got = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got = m.GetGauge().GetValue()
			}
			if got == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s%v = %v (found %v), want %v", name, labels, got, found, want)
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	m := findSeries(t, reg, name, labels)
	if m == nil || m.GetHistogram() == nil {
		t.Fatalf("no histogram %s%v", name, labels)
	}
	return m.GetHistogram().GetSampleCount()
}

func findSeries(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m
		}
	}
	return nil
}
