package bus_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.StopKafka()
	os.Exit(code)
}

// contract is what mailbus needs from Kafka, as tests that take the
// broker addresses. Each runs against an empty broker holding the mailbus
// topics with 3 partitions each.
var contract = []struct {
	name string
	test func(t *testing.T, brokers []string)
}{
	// Publish and consume, protobuf and JSON, with foreign clients.
	{"Bus_roundTripPropagatesMetadataAndKeysByMessageID", contractBus_roundTripPropagatesMetadataAndKeysByMessageID},
	{"Bus_decodesJSONSubmissionPublishedByKcat", contractBus_decodesJSONSubmissionPublishedByKcat},
	{"Bus_kcatReadsRecordsPublishedByBus", contractBus_kcatReadsRecordsPublishedByBus},
	{"Bus_carriesMailLargerThanKafkasDefaultOneMegabyte", contractBus_carriesMailLargerThanKafkasDefaultOneMegabyte},
	// The poison topic.
	{"Bus_malformedRecordGoesToPoisonWithReasonAndNextIsConsumed", contractBus_malformedRecordGoesToPoisonWithReasonAndNextIsConsumed},
	{"Bus_panicInHandlerGoesToPoisonAfterRetriesAndServiceGoesOn", contractBus_panicInHandlerGoesToPoisonAfterRetriesAndServiceGoesOn},
	{"Bus_permanentErrorSkipsRetries", contractBus_permanentErrorSkipsRetries},
	// Delayed retry topics.
	{"Router_handleDelayedHandsRecordsOverOnlyOnceDue", contractRouter_handleDelayedHandsRecordsOverOnlyOnceDue},
	{"Router_handleDelayedLetsShutdownInterruptTheWaitAndRedelivers", contractRouter_handleDelayedLetsShutdownInterruptTheWaitAndRedelivers},
	// Consumer groups.
	{"Bus_recordInterruptedByShutdownIsRedeliveredNotPoisoned", contractBus_recordInterruptedByShutdownIsRedeliveredNotPoisoned},
	{"Group_twoMembersShareTopicAndSurviveRebalance", contractGroup_twoMembersShareTopicAndSurviveRebalance},
	// The producer and topic creation.
	{"Publisher_isIdempotentAndCompressesWithLZ4", contractPublisher_isIdempotentAndCompressesWithLZ4},
	{"EnsureTopics_createsMissingTopicsOnce", contractEnsureTopics_createsMissingTopicsOnce},
}

// TestContract_embedded runs the contract on the embedded broker (kfake),
// a fresh one for each test.
func TestContract_embedded(t *testing.T) {
	for _, c := range contract {
		t.Run(c.name, func(t *testing.T) { c.test(t, startBroker(t)) })
	}
}

// TestContract_kafka runs the contract on Apache Kafka 4 (one broker in
// KRaft mode from testkit.StartKafka, emptied before each test).
//
// Where Kafka and kfake differ, the test broker is configured as the
// embedded broker is (3 partitions, group sessions down to 100ms), and
// the tests do what mailbus does on a production cluster: topics are made
// up front with EnsureTopics, not by a producer's first record, because
// Kafka gives a topic created that way a leader only after a moment (kfake
// at once); and big records rely on the topic's max.message.bytes, as a
// stock broker refuses records over 1 MB.
func TestContract_kafka(t *testing.T) {
	for _, c := range contract {
		t.Run(c.name, func(t *testing.T) { c.test(t, testkit.StartKafka(t)) })
	}
}

// contractGroup_twoMembersShareTopicAndSurviveRebalance runs two replicas of
// one handler (one consumer group), checks that they split the topic's
// partitions, and stops one in the middle of the stream, with records in
// flight: the group rebalances, the other replica takes over its
// partitions, and every record is handled at least once.
func contractGroup_twoMembersShareTopicAndSurviveRebalance(t *testing.T, brokers []string) {
	cfg := testConfig(brokers)
	const total = 300
	type handled struct {
		member    string
		id        string
		partition int32
	}
	got := make(chan handled, 4*total)
	start := func(member string) (stop func()) {
		r, err := bus.NewRouter(cfg, "sender", testLog(t))
		if err != nil {
			t.Fatalf("NewRouter: %v", err)
		}
		if err := r.Handle("send", bus.TopicSigned, bus.Handle(func(ctx context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
			// Slow enough that records are in flight when a member stops.
			select {
			case <-time.After(2 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			p, _ := kafka.MessagePartitionFromCtx(ctx)
			got <- handled{member, d.GetDeliveryId(), p}
			return nil
		})); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		var once sync.Once
		stop = func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("member %s Run: %v", member, err)
				}
			})
		}
		t.Cleanup(stop)
		select {
		case <-r.Running():
		case <-time.After(waitTimeout):
			t.Fatalf("member %s did not start", member)
		}
		return stop
	}
	group := bus.Group("sender", "send")
	stopA := start("a")
	start("b")
	waitGroupMembers(t, cfg, group, 2)

	pub, err := bus.NewPublisher(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			// One message per record: spread over every partition.
			d := &mailbusv1.Delivery{TenantId: "acme", MessageId: fmt.Sprintf("m%d", i), DeliveryId: fmt.Sprintf("d%d", i)}
			if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
				t.Error(err)
				return
			}
		}
	}

	seen := map[string]int{}
	byMember := map[string]map[int32]bool{"a": {}, "b": {}}
	take := func(what string) handled {
		h := receive(t, got, what)
		seen[h.id]++
		byMember[h.member][h.partition] = true
		return h
	}
	// First third: both members work.
	publish(0, total/3)
	for len(seen) < total/3 {
		take("records before the rebalance")
	}
	if len(byMember["a"]) == 0 || len(byMember["b"]) == 0 {
		t.Fatalf("partitions handled by a %v, by b %v: want the group to split them", byMember["a"], byMember["b"])
	}
	partitionsOfA := byMember["a"]

	// The rest flows while a stops.
	published := make(chan struct{})
	go func() {
		defer close(published)
		publish(total/3, total)
	}()
	for len(seen) < total/2 {
		take("records while publishing")
	}
	stopA()
	afterStop := map[int32]bool{}
	for len(seen) < total {
		// Records a handled before it stopped may still be queued here.
		if h := take("records after member a stopped"); h.member == "b" {
			afterStop[h.partition] = true
		}
	}
	<-published
	for p := range partitionsOfA {
		if !afterStop[p] {
			t.Errorf("after a stopped, b handled partitions %v, not a's partition %d", afterStop, p)
		}
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("%d records handled, %d of them twice (redelivered after the rebalance)", total, dups)
}

// waitGroupMembers waits until group is stable with n members.
func waitGroupMembers(t *testing.T, cfg bus.Config, group string, n int) {
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
		if err == nil && len(gs) == 1 && gs[0].State == "Stable" && len(gs[0].Members) == n {
			return
		}
		if time.Now().After(deadline) {
			if err == nil && len(gs) == 1 {
				t.Fatalf("group %s is %s with %d members, want Stable with %d", group, gs[0].State, len(gs[0].Members), n)
			}
			t.Fatalf("group %s: %v", group, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
