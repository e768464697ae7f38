package stack_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// bigWait bounds waiting for a message of tens of megabytes: every stage
// decodes, copies and compresses it, under the race detector, on a busy
// machine. A deadlock guard, not a timing assertion.
const bigWait = 5 * time.Minute

// kcatProduceJSON publishes sub as protojson, one record from a file (kcat
// would split stdin at newlines), allowing records of up to 30 MiB as a
// producer of large mail must: librdkafka's own limit is 1 MB.
func kcatProduceJSON(t *testing.T, brokers []string, key string, sub *mailbusv1.Submission) {
	t.Helper()
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is not installed: apt-get install kcat (CI installs it)")
	}
	b, err := protojson.Marshal(sub)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "record.json")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kcat, "-P", "-b", strings.Join(brokers, ","), "-t", bus.TopicSubmit, "-k", key,
		"-H", "content-type=application/json", "-X", "message.max.bytes=31457280", f).CombinedOutput()
	if err != nil {
		t.Fatalf("kcat produce %d-byte submission: %v: %s", len(b), err, out)
	}
}

// randomText is n bytes of text that LZ4 cannot shrink (lines of random
// base64 characters), so that the broker sees records at their full size.
func randomText(t *testing.T, n int) string {
	t.Helper()
	raw := make([]byte, n*3/4+3)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	enc := base64.RawStdEncoding.EncodeToString(raw)
	var b strings.Builder
	b.Grow(n + n/75)
	for b.Len() < n {
		line := min(75, n-b.Len())
		b.WriteString(enc[:line])
		enc = enc[line:]
		if b.Len() < n {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func sizedSubmission(id, text string, meta map[string]string) *mailbusv1.Submission {
	return &mailbusv1.Submission{
		IdempotencyId: id, TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From: &mailbusv1.Address{Email: "alice@acme.example"}, To: []*mailbusv1.Address{{Email: "bob@example.net"}},
		Subject: "size " + id, TextBody: text, Metadata: meta,
	}
}

// patientBus gives handlers and consumer groups time for records of tens
// of megabytes: under the race detector the in-process broker takes
// seconds to serve one, and sarama's heartbeats wait behind the fetch, so
// testkit's 3-second sessions would expire and rebalance over and over.
func patientBus(o *stack.Options) {
	prev := o.TuneBus
	o.TuneBus = func(c *bus.Config) {
		prev(c)
		c.HandlerTimeout = bigWait
		c.RebalanceTimeout = bigWait
		c.SessionTimeout = time.Minute
		c.HeartbeatInterval = time.Second
	}
}

func failedWith(reason string) func(*mailbusv1.Message) bool {
	return func(m *mailbusv1.Message) bool {
		return m.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED && len(m.GetRecipients()) > 0 &&
			m.GetRecipients()[0].GetReason() == reason
	}
}

// The defect this guards against: a 20 MB submission (under the 25 MiB
// mail limit) was accepted, but the router could not publish its 21.8 MB
// delivery under the producer's 16 MiB limit, nor copy it to the poison
// topic, and nacked it for ever: the message got no status and every
// later submission on its partition stayed undelivered.
func TestPipeline_delivers20MBSubmissionAndTheNextOnItsPartition(t *testing.T) {
	p := startPipeline(t, nil, func(o *stack.Options) {
		o.KafkaBrokers = testkit.StartBroker(t)
		patientBus(o)
	})
	const key = "one-partition"
	text := randomText(t, 20_000_000)
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("big-20mb", text, nil))
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("after-big", "small", nil))

	p.waitMessageWithin(t, ids.MessageID("acme", "big-20mb"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT), bigWait)
	p.waitMessageWithin(t, ids.MessageID("acme", "after-big"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT), bigWait)
	var sizes []int
	for _, m := range p.smtp.Messages() {
		sizes = append(sizes, len(m.Data))
		if len(m.Data) > len(text) {
			return
		}
	}
	t.Errorf("the relay received messages of %v bytes, none with the 20 MB text", sizes)
}

var deliverySize = regexp.MustCompile(`the delivery is (\d+) bytes`)

// A pipeline with a small mail limit, so that its records are small too:
// whatever Kafka cannot carry ends with a status, what fits in the
// headroom is delivered, and the partition always moves on.
func TestPipeline_failsWhatKafkaCannotCarryWithAStatusAndKeepsThePartitionFlowing(t *testing.T) {
	const mailLimit = 256 << 10
	p := startPipeline(t, nil, func(o *stack.Options) {
		o.KafkaBrokers = testkit.StartBroker(t)
		o.MaxMessageBytes = mailLimit
	})
	recordLimit := bus.RecordLimit(mailLimit)
	deliveryLimit := bus.Config{MaxMessageBytes: recordLimit}.DeliveryLimit()
	const key = "one-partition"
	body := randomText(t, 200<<10)
	blob := func(n int) map[string]string { return map[string]string{"blob": strings.Repeat("m", n)} }

	// Over the mail limit; and a message within it whose metadata, which
	// the delivery carries beside it, makes the record too large.
	probeMeta := deliveryLimit - len(body) + 64<<10
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("over-mail", randomText(t, 300<<10), nil))
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("edge-probe", body, blob(probeMeta)))
	over := p.waitMessage(t, ids.MessageID("acme", "over-mail"), failedWith("message_too_large"))
	if d := over.GetRecipients()[0].GetDetail(); !strings.Contains(d, "over the 256 KiB limit") {
		t.Errorf("over-mail detail %q does not name the limit", d)
	}
	probe := p.waitMessage(t, ids.MessageID("acme", "edge-probe"), failedWith("message_too_large"))
	detail := probe.GetRecipients()[0].GetDetail()
	m := deliverySize.FindStringSubmatch(detail)
	if m == nil || !strings.Contains(detail, "over the "+strconv.Itoa(deliveryLimit)+" bytes") {
		t.Fatalf("edge-probe detail %q does not name the delivery's size and the limit %d", detail, deliveryLimit)
	}
	probeSize, _ := strconv.Atoi(m[1])

	// The same message with its delivery 256 bytes under the router's
	// limit: the DKIM signatures (RSA and Ed25519) and the headers added
	// after the router take it over that limit, into the headroom kept for
	// them, and it is delivered.
	underMeta := probeMeta - (probeSize - deliveryLimit) - 256
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("edge-under", body, blob(underMeta)))
	p.waitMessage(t, ids.MessageID("acme", "edge-under"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	got := p.smtp.WaitMessage(t, func(m testkit.SMTPMessage) bool { return strings.Contains(string(m.Data), "Subject: size edge-under") })
	if !strings.Contains(string(got.Data), "DKIM-Signature:") {
		t.Error("edge-under was delivered unsigned; the test needs the signatures to grow the record")
	}

	// A cluster whose topics allow less than the pipeline's records: the
	// broker refuses the signer's delivery, then (once mail.routed allows
	// less too) the router's, and each message fails with a status.
	for _, topic := range []string{bus.TopicSigned, bus.TopicRouted} {
		setTopicLimit(t, p.Brokers, topic, 150_000)
		id := "refused-on-" + topic
		kcatProduceJSON(t, p.Brokers, key, sizedSubmission(id, body, nil))
		refused := p.waitMessage(t, ids.MessageID("acme", id), failedWith("message_too_large"))
		if d := refused.GetRecipients()[0].GetDetail(); !strings.Contains(d, "broker refused") || !strings.Contains(d, topic) {
			t.Errorf("%s detail %q does not say the broker refused the record for %s", id, d, topic)
		}
	}
	kcatProduceJSON(t, p.Brokers, key, sizedSubmission("after-all", "small", nil))
	p.waitMessage(t, ids.MessageID("acme", "after-all"), hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
}

// setTopicLimit sets a topic's max.message.bytes, as an operator of a
// cluster would.
func setTopicLimit(t *testing.T, brokers []string, topic string, limit int) {
	t.Helper()
	sc, err := bus.ConsumerConfig(testkit.BusConfig(brokers))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	v := strconv.Itoa(limit)
	if err := admin.AlterConfig(sarama.TopicResource, topic, map[string]*string{"max.message.bytes": &v}, false); err != nil {
		t.Fatalf("set max.message.bytes of %s: %v", topic, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stack.WaitTimeout)
	defer cancel()
	for ctx.Err() == nil {
		entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}})
		if err == nil && len(entries) == 1 && entries[0].Value == v {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("max.message.bytes of %s did not become %d", topic, limit)
}
