// Package deliver decides what becomes of a signed delivery: it sends it
// through the routed relay, the default system relay or the recipients' MX
// hosts, and turns what the servers said into outcomes.
//
//   - Accepted recipients are sent, with the server's final reply.
//   - A 5xx for a recipient bounces it (permanent, classified). Which
//     replies are permanent is exterr.IsPermanent's rule, the one every
//     stage applies.
//   - A 4xx defers it: the recipients that got one go on a delayed retry
//     topic, waiting 1m, 5m, 30m, 2h, then 6h between attempts, until the
//     queue lifetime (default 5 days) is over; then they fail "expired".
//   - A relay failure on a tenant relay (connection refused, TLS or AUTH
//     failure, 421, refusal of MAIL FROM, timeout) counts one failure of
//     the relay, releases the delivery's quota charge, and sends the
//     delivery back to the router through mail.fallback without that
//     relay. The third consecutive failure in a day disables the relay
//     until the tenant's next midnight. On the default server there is
//     nothing to fall back to, so a relay failure defers.
//   - Every destination (a relay, the default relay, an MX provider site)
//     is shaped by pkg/health: its connections shared by every replica,
//     messages per connection and per minute. A throttling reply (Gmail's
//     421 4.7.28, Yahoo's TSS04, ...) is neither a relay failure nor an
//     ordinary deferral: it pauses the destination, and its recipients,
//     and every later one for it until the pause ends, wait ("waiting:
//     gmail.com throttled us: ...") and are retried when it ends.
//   - Direct MX delivery honours the recipient domain's MTA-STS policy
//     (RFC 8461, internal/mtasts). Under enforce only the MX hosts the
//     policy lists are used, over STARTTLS with a certificate valid for the
//     host; when none qualifies, the domain's recipients are deferred with
//     the reason. Under testing they go out as without a policy, and the
//     failure is logged, counted and written into the event's detail.
package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/events"
	"github.com/mailbus/mailbus/pkg/exterr"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/oauthtoken"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/smtpclient"
	"github.com/mailbus/mailbus/services/sender/internal/mtasts"
	"github.com/mailbus/mailbus/services/sender/internal/mx"
)

// Config is the configuration cache.
type Config interface {
	Tenant(id string) (*mailbusv1.Tenant, bool)
	Relay(id string) (*configclient.RelayWithSecrets, bool)
	DefaultServer() configclient.DefaultServer
}

// Classifier labels an SMTP refusal with a bounce reason, so that a 5xx at
// send time and a bounce that comes back later read the same.
type Classifier func(code int, enhanced, text string) (reason string, hard bool)

// Options tune the deliverer.
type Options struct {
	// MaxQueueLifetime is how long a recipient may stay deferred; default
	// 5 days, Postfix's maximal_queue_lifetime.
	MaxQueueLifetime time.Duration
	// HeloName is the EHLO name.
	HeloName string
	// Shaping is the destinations' budgets; nil means
	// health.DefaultShaping().
	Shaping *health.Shaping
	// DefaultMaxConns is a relay's connection limit when it sets none
	// (the pool's MaxConnsPerRelay); default 20.
	DefaultMaxConns int
	// MaxRateWait is how long a delivery may wait in the sender for a
	// destination's messages-per-minute budget before it is deferred
	// instead; default 30s.
	MaxRateWait time.Duration
	// Tokens refreshes the access tokens of relays that sign in with
	// OAuth; nil leaves such relays with their stored token.
	Tokens *oauthtoken.Tokens
	// MTASTS looks up the recipient domains' MTA-STS policies for direct
	// MX delivery; nil delivers without them.
	MTASTS *mtasts.Policies
	Now    func() time.Time
}

// Deliverer sends deliveries.
type Deliverer struct {
	cfg      Config
	pool     *smtpclient.Pool
	resolver *resolve.Resolver
	limits   *limits.Limits
	health   *health.Health
	shaping  health.Shaping
	classify Classifier
	opts     Options
	log      *slog.Logger
}

// New builds a deliverer. resolver may be nil when no tenant uses direct
// MX delivery (the system resolver is used then); classify may be nil. lim
// releases the quota of deliveries that fall back; h is the destinations'
// health.
func New(cfg Config, pool *smtpclient.Pool, resolver *resolve.Resolver, lim *limits.Limits, h *health.Health, classify Classifier, opts Options, log *slog.Logger) *Deliverer {
	if opts.MaxQueueLifetime <= 0 {
		opts.MaxQueueLifetime = 5 * 24 * time.Hour
	}
	shaping := health.DefaultShaping()
	if opts.Shaping != nil {
		shaping = *opts.Shaping
	}
	if opts.DefaultMaxConns <= 0 {
		opts.DefaultMaxConns = 20
	}
	if opts.MaxRateWait <= 0 {
		opts.MaxRateWait = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if resolver == nil {
		resolver = &resolve.Resolver{}
	}
	if classify == nil {
		classify = func(code int, _, _ string) (string, bool) {
			if code >= 500 {
				return "rejected", false
			}
			return "undefined", false
		}
	}
	return &Deliverer{cfg: cfg, pool: pool, resolver: resolver, limits: lim, health: h, shaping: shaping, classify: classify, opts: opts, log: log}
}

// Outcome is what to publish after a delivery attempt.
type Outcome struct {
	Events []*mailbusv1.DeliveryEvent
	// Fallback is the delivery to send back to the router.
	Fallback *mailbusv1.Delivery
	// Retry is the delivery of the deferred recipients, due at RetryAt.
	Retry   *mailbusv1.Delivery
	RetryAt time.Time
}

// Deliver makes one attempt. Errors are returned only for what a retry of
// the whole record can fix (Redis unreachable, for the failure counts or
// the shared connection slots); SMTP outcomes are never errors.
func (d *Deliverer) Deliver(ctx context.Context, dl *mailbusv1.Delivery) (Outcome, error) {
	tenant, ok := d.cfg.Tenant(dl.GetTenantId())
	if !ok {
		return d.failAll(dl, "unknown_tenant", fmt.Sprintf("tenant %q is not configured", dl.GetTenantId())), nil
	}
	msg := &smtpclient.Message{
		From: dl.GetEnvelope().GetMailFrom(), To: dl.GetEnvelope().GetRcptTo(),
		Prefix: dl.GetDkimSignature(), Data: dl.GetMessage(),
		DSN: smtpclient.DSN{EnvelopeID: dsnEnvID(dl.GetEnvelope().GetEnvelopeId()), Return: "HDRS"},
	}
	switch dl.GetRoute().GetKind() {
	case mailbusv1.RouteKind_ROUTE_KIND_RELAY:
		rs, ok := d.cfg.Relay(dl.GetRoute().GetRelayId())
		if !ok || !rs.Relay.GetActive() {
			return d.fallback(ctx, dl, tenant, "relay_gone", "relay "+dl.GetRoute().GetRelayId()+" is no longer configured or active", false)
		}
		relay, err := smtpclient.FromConfig(rs, d.opts.HeloName)
		if err != nil {
			return d.fallback(ctx, dl, tenant, "relay_misconfigured", err.Error(), false)
		}
		d.useTokens(&relay, rs)
		dest := d.shaping.ForRelay(tenant.GetId(), rs.Relay)
		res, err, held := d.send(ctx, dl, dest, relay, msg)
		if held != nil {
			return *held, nil
		}
		if errors.Is(err, smtpclient.ErrConnSlots) {
			return Outcome{}, err
		}
		if smtpclient.IsRelayFailure(err) {
			return d.fallback(ctx, dl, tenant, "relay_failed", err.Error(), true)
		}
		d.health.RelaySucceeded(ctx, tenant, rs.Relay.GetId())
		return d.outcomes(dl, relayLabel(rs.Relay), res, err, nil), nil
	case mailbusv1.RouteKind_ROUTE_KIND_DEFAULT_RELAY:
		ds := d.cfg.DefaultServer()
		if ds.Relay == nil {
			return d.deferAll(dl, "no_default_relay", "the default server is not a relay any more"), nil
		}
		relay, err := smtpclient.FromConfig(ds.Relay, firstNonEmpty(ds.HeloName, d.opts.HeloName))
		if err != nil {
			return d.deferAll(dl, "default_relay_misconfigured", err.Error()), nil
		}
		d.useTokens(&relay, ds.Relay)
		res, err, held := d.send(ctx, dl, d.shaping.ForDefaultRelay(relay.Addr(), relay.MaxConns), relay, msg)
		if held != nil {
			return *held, nil
		}
		if errors.Is(err, smtpclient.ErrConnSlots) {
			return Outcome{}, err
		}
		return d.outcomes(dl, "default relay "+relay.Addr(), res, err, nil), nil
	case mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX:
		return d.direct(ctx, dl, msg, firstNonEmpty(d.cfg.DefaultServer().HeloName, d.opts.HeloName)), nil
	}
	return d.failAll(dl, "no_route", fmt.Sprintf("delivery has no route (%v)", dl.GetRoute().GetKind())), nil
}

// direct delivers to each recipient domain's MX hosts in preference order,
// moving to the next host only on a failure of the host itself.
//
// Without a shared connection slot (Redis unreachable) a domain's
// recipients are deferred like any other failure to connect: returning an
// error would resend to the domains already done.
func (d *Deliverer) direct(ctx context.Context, dl *mailbusv1.Delivery, msg *smtpclient.Message, helo string) Outcome {
	byDomain := map[string][]string{}
	for _, r := range msg.To {
		dom := strings.ToLower(r[strings.LastIndexByte(r, '@')+1:])
		byDomain[dom] = append(byDomain[dom], r)
	}
	doms := make([]string, 0, len(byDomain))
	for dom := range byDomain {
		doms = append(doms, dom)
	}
	sort.Strings(doms)
	var out Outcome
	for _, dom := range doms {
		m := *msg
		m.To = byDomain[dom]
		hosts, err := mx.Lookup(ctx, d.resolver, dom)
		if err != nil {
			out.merge(d.outcomes(dl, "MX of "+dom, failedResult(m.To, err), err, nil))
			continue
		}
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = h.Name
		}
		dest := d.shaping.ForMX(dom, names)
		var policy *mtasts.Policy
		if d.opts.MTASTS != nil {
			if p := d.opts.MTASTS.Lookup(ctx, dom); p != nil && p.Mode != mtasts.ModeNone {
				policy = p
			}
		}
		var res *smtpclient.Result
		var sendErr error
		var held *Outcome
		// stsFailures are the hosts that failed the domain's MTA-STS policy:
		// skipped under enforce, reported with the delivery under testing.
		var stsFailures []string
		where := "MX of " + dom
	hostLoop:
		for _, h := range hosts {
			verify := false
			if policy != nil {
				if !policy.Allows(h.Name) {
					why := h.Name + " is not in the policy"
					d.opts.MTASTS.Report(policy, "mx_not_in_policy", why)
					stsFailures = append(stsFailures, why)
					if policy.Mode == mtasts.ModeEnforce {
						continue
					}
				} else {
					verify = true
				}
			}
			for _, a := range h.Addrs {
				relay := smtpclient.Relay{Host: a.String(), Port: 25, ServerName: h.Name, Security: smtpclient.SecurityOpportunistic,
					PlaintextFallback: true, HeloName: helo, SkipVerify: true,
					Budget: dest.Key, MaxConns: dest.Rule.MaxConnections, MaxMessagesPerConn: dest.Rule.MaxMessagesPerConnection}
				// MX certificates are rarely valid for the MX name (RFC
				// 7672 needs DANE for that); opportunistic TLS encrypts
				// without authenticating, as Postfix's "may" level does.
				// A domain's MTA-STS policy asks for more of the hosts it
				// lists: STARTTLS, and a certificate valid for the host.
				strict := relay
				if verify {
					strict.Security, strict.SkipVerify, strict.PlaintextFallback = smtpclient.SecurityStartTLS, false, false
				}
				res, sendErr, held = d.send(ctx, dl, dest, strict, &m)
				where = h.Name + " (" + a.String() + ")"
				if verify && held == nil && tlsFailure(sendErr) {
					why := "TLS to " + h.Name + " failed: " + tlsReason(sendErr)
					d.opts.MTASTS.Report(policy, "tls", why)
					stsFailures = append(stsFailures, why)
					if policy.Mode == mtasts.ModeEnforce {
						continue
					}
					// testing: deliver as without a policy, on a new
					// connection (nothing was sent on the failed one).
					res, sendErr, held = d.send(ctx, dl, dest, relay, &m)
				}
				if held != nil || !smtpclient.IsRelayFailure(sendErr) {
					// A throttling provider is throttling from every
					// host: the next one would only be refused again.
					break hostLoop
				}
			}
		}
		if held != nil {
			out.merge(*held)
			continue
		}
		if len(stsFailures) > 0 {
			note := fmt.Sprintf("MTA-STS policy of %s (%s): %s", dom, policy.Mode, strings.Join(stsFailures, "; "))
			if policy.Mode == mtasts.ModeEnforce && (res == nil && sendErr == nil || smtpclient.IsRelayFailure(sendErr)) {
				// No host qualified, or those that did failed too: the
				// domain's mail waits for the domain to fix its servers
				// or its policy, with the reason.
				var re *smtpclient.RelayError
				if errors.As(sendErr, &re) && !tlsFailure(sendErr) {
					note += "; " + where + ": " + re.Err.Message
				}
				sendErr = &mail.SMTPError{Code: 451, Enhanced: "4.7.5", Stage: "mta-sts", Message: note}
				out.merge(d.outcomes(dl, "MX of "+dom, failedResult(m.To, sendErr), sendErr, nil))
				continue
			}
			if policy.Mode == mtasts.ModeTesting {
				where += "; " + note
			}
		}
		if res == nil {
			res = failedResult(m.To, sendErr)
		}
		if smtpclient.IsRelayFailure(sendErr) {
			// Every MX host failed: the domain's mail waits, as an MTA's would.
			var re *smtpclient.RelayError
			errors.As(sendErr, &re)
			tmp := *re.Err
			if exterr.IsPermanent(&tmp) {
				tmp.Code, tmp.Enhanced = 451, "4.4.1"
			}
			sendErr = &tmp
			res = failedResult(m.To, sendErr)
		}
		out.merge(d.outcomes(dl, where, res, sendErr, nil))
	}
	return out
}

// tlsFailure reports whether err is a failure to set up TLS, the part of a
// session MTA-STS makes a condition.
func tlsFailure(err error) bool {
	var re *smtpclient.RelayError
	return errors.As(err, &re) && (re.Err.Stage == "starttls" || re.Err.Stage == "tls")
}

// tlsReason is what went wrong with TLS, without the relay-failure wrapping.
func tlsReason(err error) string {
	var re *smtpclient.RelayError
	if errors.As(err, &re) {
		return re.Err.Message
	}
	return err.Error()
}

func failedResult(rcpts []string, err error) *smtpclient.Result {
	se := &mail.SMTPError{Message: fmt.Sprint(err), Err: err}
	var e *mail.SMTPError
	if errors.As(err, &e) {
		se = e
	}
	res := &smtpclient.Result{}
	for _, r := range rcpts {
		res.Recipients = append(res.Recipients, smtpclient.RecipientResult{Address: r, Err: se})
	}
	return res
}

func (o *Outcome) merge(p Outcome) {
	o.Events = append(o.Events, p.Events...)
	if p.Retry != nil {
		if o.Retry == nil {
			o.Retry, o.RetryAt = p.Retry, p.RetryAt
		} else {
			o.Retry.Envelope.RcptTo = append(o.Retry.Envelope.RcptTo, p.Retry.GetEnvelope().GetRcptTo()...)
		}
	}
}

// outcomes turns a transaction's result into events and a retry. The
// deferred recipients wait for hold when it is set.
func (d *Deliverer) outcomes(dl *mailbusv1.Delivery, where string, res *smtpclient.Result, sendErr error, h *hold) Outcome {
	now := d.opts.Now()
	if res == nil {
		return d.deferAll(dl, "send_error", fmt.Sprint(sendErr))
	}
	var out Outcome
	var sent, deferred []string
	var lastTemp *mail.SMTPError
	for _, rc := range res.Recipients {
		switch {
		case rc.Err == nil:
			sent = append(sent, rc.Address)
		case exterr.IsPermanent(rc.Err):
			reason, hard := d.classify(rc.Err.Code, rc.Err.Enhanced, rc.Err.Message)
			e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED, reason,
				"refused by "+where+" at "+rc.Err.Stage, now, rc.Address)
			events.WithReply(e, rc.Err.Code, rc.Err.Enhanced, rc.Err.Message)
			e.Permanent = hard
			out.Events = append(out.Events, e)
		default:
			deferred = append(deferred, rc.Address)
			lastTemp = rc.Err
		}
	}
	if len(sent) > 0 {
		e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT, "", "accepted by "+where, now, sent...)
		events.WithReply(e, res.Data.Code, res.Data.Enhanced, res.Data.Text)
		out.Events = append(out.Events, e)
	}
	if len(deferred) > 0 {
		out.merge(d.retry(dl, deferred, lastTemp, where, now, h))
	}
	return out
}

// retry schedules the deferred recipients, or fails them once the queue
// lifetime is over. As Postfix's maximal_queue_lifetime, the lifetime is
// checked when an attempt fails: a recipient still deferred at or after it
// fails "expired". A retry that would come after the lifetime is brought
// forward to it, so that the last attempt is made at the lifetime rather
// than skipped (up to 6 hours too early) or made up to 6 hours late.
//
// Recipients held back by a destination's pause or rate (h set) wait for
// it to end instead of the usual backoff, and say so.
func (d *Deliverer) retry(dl *mailbusv1.Delivery, rcpts []string, why *mail.SMTPError, where string, now time.Time, h *hold) Outcome {
	var out Outcome
	queued := dl.GetQueueTime().AsTime()
	next := bus.RetryTopicFor(int(dl.GetAttempt())).Delay
	if h != nil {
		next = max(h.until.Sub(now), time.Second)
	}
	if dl.GetQueueTime() != nil {
		if left := queued.Add(d.opts.MaxQueueLifetime).Sub(now); left < next {
			next = left
		}
	}
	detail := "deferred by " + where
	if why != nil && why.Stage != "" {
		detail += " at " + why.Stage
	}
	if h != nil {
		detail = h.detail
	}
	if dl.GetQueueTime() != nil && next <= 0 {
		e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, "expired",
			fmt.Sprintf("%s; still deferred after %d attempts over %s, the maximum queue lifetime", detail, dl.GetAttempt(), now.Sub(queued).Round(time.Minute)), now, rcpts...)
		if why != nil {
			events.WithReply(e, why.Code, why.Enhanced, why.Message)
		}
		e.Permanent = true
		out.Events = append(out.Events, e)
		return out
	}
	e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, "",
		fmt.Sprintf("%s; attempt %d, next in %s", detail, dl.GetAttempt(), next.Round(time.Second)), now, rcpts...)
	if why != nil {
		e.Reason, _ = d.classify(why.Code, why.Enhanced, why.Message)
		events.WithReply(e, why.Code, why.Enhanced, why.Message)
	}
	if h != nil {
		e.Reason = h.reason
	}
	out.Events = append(out.Events, e)
	r := cloneDelivery(dl)
	r.Envelope.RcptTo = rcpts
	r.Attempt = dl.GetAttempt() + 1
	out.Retry, out.RetryAt = r, now.Add(next)
	return out
}

// fallback sends the delivery back to the router without its relay.
func (d *Deliverer) fallback(ctx context.Context, dl *mailbusv1.Delivery, tenant *mailbusv1.Tenant, reason, detail string, countFailure bool) (Outcome, error) {
	now := d.opts.Now()
	relayID := dl.GetRoute().GetRelayId()
	var out Outcome
	if countFailure {
		n, disabled, err := d.health.RelayFailed(ctx, tenant, relayID)
		if err != nil {
			return Outcome{}, fmt.Errorf("record failure of relay %s: %w", relayID, err)
		}
		detail = fmt.Sprintf("%s (consecutive failure %d today)", detail, n)
		if disabled {
			w := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED, "relay_disabled",
				fmt.Sprintf("relay %s failed %d times in a row today and is disabled until the next day in %s", relayID, n, tenant.GetTimeZone()), now)
			w.Warning = "relay_disabled"
			w.Recipients = nil
			out.Events = append(out.Events, w)
		}
	}
	if _, err := d.limits.Refund(ctx, tenant.GetId(), dl.GetDeliveryId()); err != nil {
		return Outcome{}, fmt.Errorf("release quota of delivery %s: %w", dl.GetDeliveryId(), err)
	}
	e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, reason, detail+"; falling back", now)
	out.Events = append(out.Events, e)
	out.Fallback = health.Fallback(dl)
	return out, nil
}

func (d *Deliverer) failAll(dl *mailbusv1.Delivery, reason, detail string) Outcome {
	e := events.ForDelivery(dl, events.StageSender, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, reason, detail, d.opts.Now())
	e.Permanent = true
	return Outcome{Events: []*mailbusv1.DeliveryEvent{e}}
}

func (d *Deliverer) deferAll(dl *mailbusv1.Delivery, reason, detail string) Outcome {
	return d.retry(dl, dl.GetEnvelope().GetRcptTo(), &mail.SMTPError{Message: detail, Stage: reason}, "the default server", d.opts.Now(), nil)
}

func relayLabel(r *mailbusv1.Relay) string {
	if r.GetName() != "" {
		return "relay " + r.GetName()
	}
	return "relay " + r.GetId()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// dsnEnvID keeps ENVID to the xtext-safe characters of our delivery ids.
func dsnEnvID(id string) string {
	return strings.Map(func(r rune) rune {
		if r > ' ' && r < 127 && r != '+' && r != '=' {
			return r
		}
		return -1
	}, id)
}

// useTokens lets an XOAUTH2 relay with an OAuth client and a refresh token
// get its access tokens from the shared, refreshed ones instead of the
// stored token, which expires within the hour.
func (d *Deliverer) useTokens(relay *smtpclient.Relay, rs *configclient.RelayWithSecrets) {
	if d.opts.Tokens == nil || relay.Auth.Mechanism != smtpclient.MechanismXOAUTH2 {
		return
	}
	c := oauthtoken.Client{RelayID: rs.Relay.GetId(), OAuth: rs.Relay.GetAuth().GetOauth(),
		ClientSecret: rs.OAuthClientSecret, RefreshToken: rs.OAuthRefreshToken}
	if !c.Usable() {
		return
	}
	relay.Auth.Tokens = relayTokens{t: d.opts.Tokens, c: c}
}

// relayTokens is one relay's smtpclient.TokenProvider.
type relayTokens struct {
	t *oauthtoken.Tokens
	c oauthtoken.Client
}

func (r relayTokens) Token(ctx context.Context) (string, error) { return r.t.Token(ctx, r.c) }

func (r relayTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	return r.t.Refresh(ctx, r.c, rejected)
}
