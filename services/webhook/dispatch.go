package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/mailbus/mailbus/services/webhook/internal/sign"
	"github.com/mailbus/mailbus/services/webhook/internal/store"
)

// lane delivers one endpoint's rows, at most Concurrency at once.
type lane struct {
	s        *Service
	endpoint string
	wakeCh   chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
}

func (s *Service) startLane(ctx context.Context, endpointID string) *lane {
	ctx, cancel := context.WithCancel(ctx)
	l := &lane{s: s, endpoint: endpointID, wakeCh: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go l.run(ctx)
	return l
}

func (l *lane) wake() {
	select {
	case l.wakeCh <- struct{}{}:
	default:
	}
}

// stop ends the lane and waits for its attempts in flight.
func (l *lane) stop() {
	l.cancel()
	<-l.done
}

func (l *lane) run(ctx context.Context) {
	defer close(l.done)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	free := make(chan struct{}, l.s.cfg.Concurrency)
	slots := l.s.cfg.Concurrency
	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		// Take back the slots of finished attempts before claiming.
		for drained := false; !drained; {
			select {
			case <-free:
				slots++
			default:
				drained = true
			}
		}
		e := l.s.endpoint(l.endpoint)
		if e != nil && e.Active && slots > 0 {
			claimed, err := l.s.store.Claim(ctx, l.endpoint, time.Now(), l.s.cfg.lease(), slots)
			if err != nil && ctx.Err() == nil {
				l.s.log.Warn("claim webhooks", "endpoint", l.endpoint, "err", err)
			}
			for _, c := range claimed {
				slots--
				inflight.Add(1)
				go func() {
					defer inflight.Done()
					l.attempt(ctx, e, c)
					free <- struct{}{}
					// The outcome is committed: the message's next event
					// may be due now.
					l.wake()
				}()
			}
		}
		poll.Reset(l.s.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return
		case <-l.wakeCh:
			// Let more attempts finish and more rows arrive: one claim (a
			// write transaction) for many slots rather than one per slot.
			select {
			case <-ctx.Done():
				return
			case <-time.After(l.s.cfg.MaxBatchWait):
			}
		case <-poll.C:
		}
	}
}

// attempt posts one row and records the outcome; it returns once the
// outcome is committed.
func (l *lane) attempt(ctx context.Context, e *liveEndpoint, c store.Claimed) {
	cfg := l.s.cfg
	start := time.Now()
	err := l.post(ctx, e, c)
	res := store.Result{Claimed: c}
	switch {
	case ctx.Err() != nil:
		// Shutting down (or the endpoint was deleted): the attempt was cut
		// short, not answered. Release the row for the next process
		// rather than leave it leased (a crash leaves it leased, and it is
		// posted again when the lease ends).
		res.Release = true
	case err == nil:
		res.Delivered = true
		l.s.m.attempts.WithLabelValues("delivered").Inc()
		l.s.m.latency.Observe(time.Since(start).Seconds())
	case time.Since(c.Schedule) >= cfg.RetryFor:
		res.Dead, res.Err = true, err.Error()
		l.s.m.attempts.WithLabelValues("failed").Inc()
		l.s.m.dead.Inc()
		l.s.log.Warn("webhook gave up: dead letter", "endpoint", e.ID, "tenant", e.TenantID,
			"webhook_id", c.WebhookID, "attempts", c.Attempts+1, "err", err)
	default:
		res.Err, res.Next = err.Error(), time.Now().Add(Backoff(cfg.RetryInitial, cfg.RetryMax, c.Attempts))
		l.s.m.attempts.WithLabelValues("failed").Inc()
		l.s.log.Debug("webhook attempt failed", "endpoint", e.ID, "webhook_id", c.WebhookID,
			"attempt", c.Attempts+1, "err", err)
	}
	// The result writer runs until every lane has stopped, so this send
	// and the wait always end.
	req := resultReq{res: res, done: make(chan struct{})}
	l.s.results <- req
	<-req.done
}

// Backoff is the delay before the retry after attempt n+1 (n attempts
// made before it): initial doubled n times, at most max, drawn between
// half and all of that so that the retries of many rows that failed
// together (an endpoint that was down) spread out.
func Backoff(initial, max time.Duration, n int) time.Duration {
	d := initial
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}

// post sends one webhook, signed at the time of this attempt; nil means a
// 2xx answer.
func (l *lane) post(ctx context.Context, e *liveEndpoint, c store.Claimed) error {
	ctx, cancel := context.WithTimeout(ctx, l.s.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL, bytes.NewReader(c.Body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	now := time.Now()
	for k, v := range sign.Headers(e.keys(now), c.WebhookID, now, c.Body) {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mailbus-webhook/1")
	resp, err := l.s.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %s", l.s.cfg.RequestTimeout)
		}
		return err
	}
	// Read a little of the body so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return nil
}
