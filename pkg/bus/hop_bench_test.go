package bus_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"

	"github.com/mailbus/mailbus/pkg/bus"
)

// BenchmarkBus_stageHop measures what one pipeline stage costs the bus per
// record, with no work of its own: a backlog of 10 KB deliveries on one
// topic, a stage that decodes each and publishes it to the next topic, and
// a consumer of that topic — one consume, one produce and the next stage's
// consume, as every body hop of the pipeline is. It reports the process's
// CPU per record (client and embedded broker together), the figure that
// make bench's per-stage breakdown adds up, rather than wall time, which
// on a shared machine says more about the neighbours.
//
// one_at_a_time handles a partition's records one after another (Handle),
// as the router, quota and the signer do; concurrent_64 hands out up to 64
// at once (HandleConcurrent), whose publishes then meet in the producer
// and share requests. On a backlog that halves the CPU per record; the
// stages still do not do it, see the README's performance section.
func BenchmarkBus_stageHop(b *testing.B) {
	b.Run("one_at_a_time", func(b *testing.B) { benchStageHop(b, false) })
	b.Run("concurrent_64", func(b *testing.B) { benchStageHop(b, true) })
}

func benchStageHop(b *testing.B, concurrent bool) {
	b.ReportAllocs()
	brokers := startBroker(b)
	cfg := testConfig(brokers)
	pub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	body := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. 0123456789 mailbus bench.\r\n", 142))
	var wg sync.WaitGroup
	const publishers = 16
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < b.N; i += publishers {
				d := &mailbusv1.Delivery{TenantId: "acme", MessageId: "m" + strconv.Itoa(i), DeliveryId: strconv.Itoa(i) + ".0", Message: body}
				if err := bus.Publish(pub, bus.TopicAdmitted, d, nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()

	stagePub, err := bus.NewPublisher(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer stagePub.Close()
	var count atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	r, err := bus.NewRouter(cfg, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	stage := bus.Handle(func(ctx context.Context, in *message.Message, d *mailbusv1.Delivery) error {
		return bus.Publish(stagePub, bus.TopicSigned, d, bus.MetaFrom(in))
	})
	if concurrent {
		err = r.HandleConcurrent("stage", bus.TopicAdmitted, bus.Concurrency{Records: 64}, stage)
	} else {
		err = r.Handle("stage", bus.TopicAdmitted, stage)
	}
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Handle("next", bus.TopicSigned, bus.Handle(func(context.Context, *message.Message, *mailbusv1.Delivery) error {
		if count.Add(1) == int64(b.N) {
			once.Do(func() { close(done) })
		}
		return nil
	})); err != nil {
		b.Fatal(err)
	}
	cpu0 := processCPU()
	b.ResetTimer()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		b.Fatal("records did not arrive")
	}
	b.StopTimer()
	cpu := processCPU() - cpu0
	cancel()
	if err := <-runDone; err != nil {
		b.Error(err)
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/record")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// processCPU is the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
