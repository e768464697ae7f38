package testkit_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.StopKafka()
	os.Exit(code)
}

func TestKafkaVersion_matchesPom(t *testing.T) {
	pom, err := os.ReadFile("../../deploy/kafka/pom.xml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`<kafka.version>([^<]+)</kafka.version>`).FindSubmatch(pom)
	if m == nil {
		t.Fatal("deploy/kafka/pom.xml has no kafka.version property")
	}
	if string(m[1]) != testkit.KafkaVersion {
		t.Errorf("deploy/kafka/pom.xml fetches Kafka %s, testkit.KafkaVersion is %s: deploy/kafka/fetch and StartKafka would disagree on the cache directory", m[1], testkit.KafkaVersion)
	}
}

// TestStartKafka_sharesOneKRaftBrokerEmptiedForEachTest publishes with the
// production producer to the shared Apache Kafka broker, then asks for it
// again as the next test would: the topic it made is gone, the mailbus
// topics are back, empty, with KafkaPartitions partitions.
func TestStartKafka_sharesOneKRaftBrokerEmptiedForEachTest(t *testing.T) {
	brokers := testkit.StartKafka(t)
	cfg := testkit.BusConfig(brokers)
	// Created up front, as mailbus creates its topics: on Kafka a topic
	// created by a producer's first metadata request may take longer to get
	// a leader than the test configuration's producer retries wait.
	if err := bus.EnsureTopics(t.Context(), cfg, []string{"test.leftover"}, 1); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	pub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	for _, topic := range []string{bus.TopicSubmit, "test.leftover"} {
		if err := bus.Publish(pub, topic, &mailbusv1.Submission{TenantId: "acme"}, nil); err != nil {
			t.Fatalf("Publish to %s: %v", topic, err)
		}
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}

	sc, err := bus.ConsumerConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// Kafka's own broker configuration, which kfake does not have.
	roles, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.BrokerResource, Name: "1", ConfigNames: []string{"process.roles"}})
	if err != nil || len(roles) != 1 || roles[0].Value != "broker,controller" {
		t.Errorf("broker 1 process.roles = %+v (%v), want one KRaft node, broker and controller", roles, err)
	}

	if again := testkit.StartKafka(t); again[0] != brokers[0] {
		t.Fatalf("second StartKafka = %v, want the shared broker %v", again, brokers)
	}
	topics, err := admin.ListTopics()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := topics["test.leftover"]; ok {
		t.Error("test.leftover survived StartKafka")
	}
	for _, name := range bus.AllTopics() {
		d, ok := topics[name]
		if !ok {
			t.Errorf("topic %s missing after StartKafka", name)
			continue
		}
		if d.NumPartitions != testkit.KafkaPartitions {
			t.Errorf("topic %s has %d partitions, want %d", name, d.NumPartitions, testkit.KafkaPartitions)
		}
	}
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for p := range int32(testkit.KafkaPartitions) {
		if n, err := client.GetOffset(bus.TopicSubmit, p, sarama.OffsetNewest); err != nil || n != 0 {
			t.Errorf("%s partition %d ends at offset %d (%v), want an empty topic", bus.TopicSubmit, p, n, err)
		}
	}
}

func TestStartKafkaBroker_withoutJarsSaysHowToFetchThem(t *testing.T) {
	empty := t.TempDir()
	t.Setenv(testkit.KafkaLibsEnv, empty)
	b, err := testkit.StartKafkaBroker(t.Context())
	if err == nil {
		b.Close()
		t.Fatal("StartKafkaBroker started a broker without jars")
	}
	for _, want := range []string{empty, "make kafka", "deploy/kafka/fetch", testkit.KafkaVersion} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
