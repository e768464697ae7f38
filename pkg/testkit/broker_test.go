package testkit_test

import (
	"testing"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestStartBroker_servesPublisherWithTestConfig(t *testing.T) {
	brokers := testkit.StartBroker(t)
	if len(brokers) != 1 {
		t.Fatalf("StartBroker = %v, want one address", brokers)
	}
	cfg := testkit.BusConfig(brokers)
	if err := bus.EnsureTopics(t.Context(), cfg, []string{"test.topic"}, 2); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	pub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer pub.Close()
	if err := bus.Publish(pub, bus.TopicSubmit, &mailbusv1.Submission{TenantId: "acme"}, nil); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}
