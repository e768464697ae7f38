package deliver_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/sender/internal/deliver"
)

// dotGate holds every transaction's final reply until released, and
// counts those held at once.
type dotGate struct {
	mu         sync.Mutex
	held, peak int
	release    chan struct{}
}

func (g *dotGate) reply(c testkit.SMTPCommand) *testkit.SMTPReply {
	if c.Step != testkit.SMTPStepDot {
		return nil
	}
	g.mu.Lock()
	g.held++
	g.peak = max(g.peak, g.held)
	ch := g.release
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	g.mu.Lock()
	g.held--
	g.mu.Unlock()
	return nil
}

// hold starts holding replies; it returns the function that lets them go.
func (g *dotGate) hold(t *testing.T) func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan struct{})
	g.release, g.peak = ch, 0
	var once sync.Once
	open := func() {
		once.Do(func() {
			g.mu.Lock()
			g.release = nil
			g.mu.Unlock()
			close(ch)
		})
	}
	t.Cleanup(open)
	return open
}

func (g *dotGate) waitHeld(t *testing.T, n int) {
	t.Helper()
	testkit.Eventually(t, time.Minute, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.held >= n
	}, "%d transactions held at the final dot", n)
}

func (g *dotGate) peakHeld() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peak
}

// deliverAll delivers ds at once and returns their outcomes.
func deliverAll(t *testing.T, h *harness, ds ...*mailbusv1.Delivery) []deliver.Outcome {
	t.Helper()
	outs := make([]deliver.Outcome, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() {
			out, err := h.d.Deliver(context.Background(), d)
			if err != nil {
				t.Errorf("deliver %s: %v", d.GetDeliveryId(), err)
			}
			outs[i] = out
		})
	}
	wg.Wait()
	return outs
}

func numbered(id string, rcpt string) *mailbusv1.Delivery {
	d := delivery(rcpt)
	d.DeliveryId = id
	return d
}

func TestDeliverer_aThrottlingReplyPausesTheRelayThenItsConnectionsComeBackDoubling(t *testing.T) {
	gate := &dotGate{}
	throttled := testkit.SMTPReply{Code: 421, Enhanced: "4.7.28", Text: "Our system has detected an unusual rate of unsolicited mail"}
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(
		testkit.SMTPReplyOnce(testkit.SMTPReplyAt(testkit.SMTPStepDot, throttled)),
		gate.reply,
	))
	h := newHarness(t, srv, 0)
	h.setMaxConnections(8)

	// The relay throttles the first message at its final dot: its
	// recipients wait for the pause (10m), neither falling back nor
	// counting a relay failure.
	out, err := h.d.Deliver(context.Background(), delivery("a@dest.example", "b@dest.example"))
	if err != nil {
		t.Fatal(err)
	}
	if out.Fallback != nil || out.Retry == nil || len(out.Retry.GetEnvelope().GetRcptTo()) != 2 {
		t.Fatalf("after the throttling reply: fallback %v, retry %v; want both recipients retried, no fallback", out.Fallback, out.Retry.GetEnvelope())
	}
	if wait := out.RetryAt.Sub(t0); wait < 10*time.Minute || wait >= 11*time.Minute {
		t.Errorf("retry in %s, want when the 10m pause ends (within the first 1m ramp step)", wait)
	}
	e := out.Events[0]
	const waiting = "waiting: relay test relay throttled us: 421 4.7.28 Our system has detected an unusual rate of unsolicited mail; paused until 2026-03-02T09:10:00Z"
	if e.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED || e.GetReason() != deliver.ReasonThrottled || !strings.HasPrefix(e.GetDetail(), waiting+"; attempt 1, next in 10m") {
		t.Errorf("event %s %q %q, want DEFERRED %q %q", e.GetStatus(), e.GetReason(), e.GetDetail(), deliver.ReasonThrottled, waiting)
	}

	// While paused, mail for the relay waits without a connection.
	conns := srv.Connections()
	h.clock.now = t0.Add(5 * time.Minute)
	out, _ = h.d.Deliver(context.Background(), numbered("d2", "c@dest.example"))
	if s := statuses(out)["c@dest.example"]; s != mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED || !strings.HasPrefix(out.Events[0].GetDetail(), "waiting: relay test relay throttled us: 421 4.7.28") {
		t.Errorf("during the pause: %s %q", s, out.Events[0].GetDetail())
	}
	if srv.Connections() != conns || srv.Received() != 0 {
		t.Errorf("the paused relay got %d new connections and %d messages", srv.Connections()-conns, srv.Received())
	}

	// The pause over, the relay gets one connection...
	h.clock.now = t0.Add(10 * time.Minute)
	release := gate.hold(t)
	go func() { gate.waitHeld(t, 1); release() }()
	var ds []*mailbusv1.Delivery
	for _, id := range []string{"r1", "r2", "r3", "r4"} {
		ds = append(ds, numbered(id, id+"@dest.example"))
	}
	for _, o := range deliverAll(t, h, ds...) {
		for r, s := range statuses(o) {
			if s != mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT {
				t.Errorf("%s at the start of the ramp: %s", r, s)
			}
		}
	}
	if p := gate.peakHeld(); p != 1 {
		t.Errorf("%d transactions at once when the ramp begins, want 1", p)
	}
	// ... and two ramp steps later four of its eight.
	h.clock.now = t0.Add(12 * time.Minute)
	release = gate.hold(t)
	go func() { gate.waitHeld(t, 4); release() }()
	ds = nil
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"} {
		ds = append(ds, numbered(id, id+"@dest.example"))
	}
	deliverAll(t, h, ds...)
	if p := gate.peakHeld(); p != 4 {
		t.Errorf("%d transactions at once two ramp steps after the pause, want 4", p)
	}
	if n := srv.Received(); n != 12 {
		t.Errorf("the relay received %d messages, want 12", n)
	}
}

func TestDeliverer_aConnectionLevelThrottleIsNotARelayFailure(t *testing.T) {
	srv := testkit.StartSMTP(t, testkit.SMTPReplies(testkit.SMTPReplyAt(testkit.SMTPStepMail,
		testkit.SMTPReply{Code: 421, Enhanced: "4.7.0", Text: "Too many concurrent SMTP connections from this IP address"})))
	h := newHarness(t, srv, 0)
	for i := range 4 {
		h.clock.now = t0.Add(time.Duration(i) * time.Hour) // past every pause
		out, err := h.d.Deliver(context.Background(), delivery("a@dest.example"))
		if err != nil {
			t.Fatal(err)
		}
		if out.Fallback != nil || out.Retry == nil || out.Events[0].GetReason() != deliver.ReasonThrottled {
			t.Fatalf("throttle %d: fallback %v, retry %v, reason %q; want a wait, not a relay failure", i+1, out.Fallback, out.Retry, out.Events[0].GetReason())
		}
	}
}
