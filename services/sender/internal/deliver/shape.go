package deliver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/smtpclient"
)

// hold is why deferred recipients wait for a destination rather than for
// the usual backoff: until then, with the reason and the detail the
// message log shows.
type hold struct {
	until  time.Time
	reason string
	detail string
}

// Reasons of the deferred events of recipients held back by a destination.
const (
	ReasonThrottled   = "throttled"
	ReasonRateLimited = "rate_limited"
)

// send sends msg to dest through relay within the destination's budget.
// When the destination is paused, its rate spent for longer than
// MaxRateWait, or it throttles this very transaction, the recipients it
// did not take are held: held is then their outcome, and res and err are
// not set.
func (d *Deliverer) send(ctx context.Context, dl *mailbusv1.Delivery, dest health.Destination, relay smtpclient.Relay, msg *smtpclient.Message) (res *smtpclient.Result, err error, held *Outcome) {
	now := d.opts.Now()
	limit := relay.MaxConns
	if limit <= 0 {
		limit = d.opts.DefaultMaxConns
	}
	st, err := d.health.State(ctx, dest, limit)
	if err != nil {
		// A pause is a courtesy to the receiver; without Redis the
		// connection slots refuse anyway, and say so.
		d.log.Warn("cannot read the destination's throttling state; sending at its configured limit", "destination", dest.Name, "err", err)
	}
	if st.Paused() {
		o := d.retry(dl, msg.To, nil, dest.Name, now, &hold{until: jitter(st.PausedUntil, dest), reason: ReasonThrottled, detail: st.Waiting(dest)})
		return nil, nil, &o
	}
	relay.MaxConns = st.Conns
	if o := d.pace(ctx, dl, dest, msg.To); o != nil {
		return nil, nil, o
	}
	res, err = d.pool.Send(ctx, relay, msg)
	reply := throttleReply(res, err)
	if reply == nil {
		return res, err, nil
	}
	st, _, herr := d.health.Throttled(ctx, dest, reply)
	if herr != nil {
		// Unrecorded, the reply is an ordinary deferral of these
		// recipients.
		d.log.Warn("cannot pause a throttling destination", "destination", dest.Name, "err", herr)
		return res, err, nil
	}
	h := &hold{until: jitter(st.PausedUntil, dest), reason: ReasonThrottled, detail: st.Waiting(dest)}
	if res == nil || smtpclient.IsRelayFailure(err) {
		// Throttled before any recipient was taken.
		o := d.retry(dl, msg.To, reply, dest.Name, now, h)
		return nil, nil, &o
	}
	o := d.outcomes(dl, dest.Name, res, err, h)
	return nil, nil, &o
}

// pace waits for a message of dest's messages-per-minute budget, or holds
// the recipients when the wait would be longer than MaxRateWait.
func (d *Deliverer) pace(ctx context.Context, dl *mailbusv1.Delivery, dest health.Destination, rcpts []string) *Outcome {
	deadline := d.opts.Now().Add(d.opts.MaxRateWait)
	for {
		wait, err := d.health.AllowMessage(ctx, dest)
		if err != nil {
			d.log.Warn("cannot count a message against its destination's rate; sending it", "destination", dest.Name, "err", err)
			return nil
		}
		if wait == 0 {
			return nil
		}
		now := d.opts.Now()
		if now.Add(wait).After(deadline) {
			until := now.Add(wait)
			o := d.retry(dl, rcpts, nil, dest.Name, now, &hold{until: jitter(until, dest), reason: ReasonRateLimited,
				detail: fmt.Sprintf("waiting: %s takes %d messages a minute; next in %s", dest.Name, dest.Rule.MessagesPerMinute, wait.Round(time.Second))})
			return &o
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			o := d.retry(dl, rcpts, nil, dest.Name, d.opts.Now(), &hold{until: d.opts.Now().Add(wait), reason: ReasonRateLimited,
				detail: fmt.Sprintf("waiting: %s takes %d messages a minute", dest.Name, dest.Rule.MessagesPerMinute)})
			return &o
		case <-t.C:
		}
	}
}

// jitter spreads the retries of everything a pause held back over the
// first ramp step after it, so that they do not all queue for the one
// connection the ramp starts with at the same instant.
func jitter(until time.Time, dest health.Destination) time.Time {
	step := dest.Rule.RampStep
	if step <= 0 {
		return until
	}
	return until.Add(rand.N(step))
}

// throttleReply is the reply of res or err that asks us to slow down, if
// any: a connection-level one (greeting, MAIL FROM) or one recipient's.
func throttleReply(res *smtpclient.Result, err error) *mail.SMTPError {
	var re *smtpclient.RelayError
	if errors.As(err, &re) && health.IsThrottle(re.Err) {
		return re.Err
	}
	var se *mail.SMTPError
	if errors.As(err, &se) && health.IsThrottle(se) {
		return se
	}
	if res == nil {
		return nil
	}
	for _, rc := range res.Recipients {
		if health.IsThrottle(rc.Err) {
			return rc.Err
		}
	}
	return nil
}
