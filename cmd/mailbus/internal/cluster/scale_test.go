//go:build chaos

package cluster_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// TestScale measures `make scale`: messages per second through a relay
// that answers each message 1 s after its final dot (a relay that scans
// mail), with 1, 2 and 4 sender processes on 16 partitions. Each replica
// takes at most MAILBUS_SENDER_MAX_IN_FLIGHT (here 16) deliveries at once
// and the relay allows 200 connections, so the curve shows what replicas
// add until the relay's connection limit or the machine's CPU (signing)
// stops it. It prints the curve; it asserts only that nothing is lost.
func TestScale(t *testing.T) {
	n := 600
	if s := os.Getenv("MAILBUS_SCALE_MESSAGES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	slowDot := testkit.SMTPReplies(func(c testkit.SMTPCommand) *testkit.SMTPReply {
		if c.Step == testkit.SMTPStepDot {
			time.Sleep(time.Second)
		}
		return nil
	})
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-16s %8s %12s\n", "sender replicas", "messages", "messages/s")
	for _, replicas := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("%d_senders", replicas), func(t *testing.T) {
			kafka := startControlledKafka(t)
			c := startCluster(t, clusterOptions{
				brokers: kafka.Brokers(), partitions: 16, relayMaxConnections: 200,
				smtpOpts:  []testkit.SMTPOption{slowDot, testkit.SMTPDiscard()},
				senderEnv: []string{"MAILBUS_SENDER_MAX_IN_FLIGHT=16"},
			})
			for i := 1; i < replicas; i++ {
				c.start("sender", append([]string{"MAILBUS_HELO_NAME=mailbus.test"}, "MAILBUS_SENDER_MAX_IN_FLIGHT=16")...)
			}
			pub, err := bus.NewPublisher(bus.Config{Brokers: c.brokers, ClientID: "scale"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			start := time.Now()
			for i := 0; i < n; i++ {
				sub := &mailbusv1.Submission{
					IdempotencyId: fmt.Sprintf("scale-%d-%d", replicas, i), TenantId: "acme",
					Kind:    mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
					From:    &mailbusv1.Address{Email: "alice@acme.example"},
					To:      []*mailbusv1.Address{{Email: fmt.Sprintf("r%d@example.net", i)}},
					Subject: "scale", TextBody: "Hello",
				}
				if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{bus.MetaIdempotencyID: sub.GetIdempotencyId()}); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, 20*time.Minute, func() bool { return c.smtp.Received() >= n }, "every message delivered")
			rate := float64(n) / time.Since(start).Seconds()
			fmt.Fprintf(&b, "%-16d %8d %12.1f\n", replicas, n, rate)
		})
	}
	fmt.Print(b.String())
}
