// Package plan turns a submission into deliveries: it validates the
// submission, drops suppressed recipients, builds the MIME message, picks
// the route (package route), rewrites From when the route needs it, sets
// the return path, and splits recipients into envelopes (one per recipient
// when the return path is VERP, so a bounce names its recipient). It also
// re-plans a delivery that came back through mail.fallback.
//
// Outcomes that are the submission's fault (unknown tenant, bad address,
// header injection, too large) are not errors: they become a failed event
// with a reason a person can act on, and the record is done. Errors are
// returned only for what a retry can fix.
package plan

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/unsub"
	"github.com/mailbus/mailbus/services/router/internal/route"
)

// Reasons recorded on failed and suppressed events.
const (
	ReasonUnknownTenant   = "unknown_tenant"
	ReasonInactiveTenant  = "inactive_tenant"
	ReasonInvalidKind     = "invalid_kind"
	ReasonNoRecipients    = "no_recipients"
	ReasonInvalidAddress  = "invalid_address"
	ReasonInvalidHeader   = "invalid_header"
	ReasonHeaderInjection = "header_injection"
	ReasonInvalidMessage  = "invalid_message"
	ReasonTooLarge        = events.ReasonTooLarge
	ReasonTooManyRcpts    = "too_many_recipients"
	ReasonNoRoute         = "no_route"
	ReasonSuppressed      = "suppressed"
	ReasonReturnPathError = "return_path_error"
)

// Config is the source of tenants, domains, relays and the default server.
// The pipeline reads it from a local cache (configclient), never per call.
type Config interface {
	Tenant(id string) (*mailbusv1.Tenant, bool)
	Domain(tenantID, name string) (*mailbusv1.Domain, bool)
	Relays(tenantID string) []*mailbusv1.Relay
	DefaultServer() configclient.DefaultServer
}

// Suppressions reports which recipients are on the tenant's suppression
// list, with the reason they are.
type Suppressions interface {
	// SuppressedFor returns the addrs suppressed for a message of the
	// tenant; mass says whether it is mass mail, which unsubscribed
	// addresses also stop.
	SuppressedFor(ctx context.Context, tenantID string, addrs []string, mass bool) (map[string]string, error)
}

// RelayHealth reports relays disabled for today after repeated failures.
type RelayHealth interface {
	Disabled(ctx context.Context, tenant *mailbusv1.Tenant, relayID string) bool
}

// Options are the planner's limits.
type Options struct {
	// MaxMessageBytes bounds a built message; 0 means mail.DefaultMaxSize.
	MaxMessageBytes int64
	// MaxRecordBytes bounds a delivery as a protobuf record: the message
	// and, beside it, the submission's subject, metadata and envelope. 0
	// means the default bus.Config's DeliveryLimit. The router passes its
	// bus configuration's, so that what it plans fits Kafka on the whole
	// way (see "Size budget" in pkg/bus).
	MaxRecordBytes int
	// MaxRecipients bounds one submission; default 1000.
	MaxRecipients int
	// EnvelopeRecipients bounds one envelope when not using VERP; default
	// 50, Postfix's smtp_destination_recipient_limit.
	EnvelopeRecipients int
	// VERPKey signs VERP return paths, and the one-click unsubscribe
	// links (pkg/unsub).
	VERPKey []byte
	// UnsubscribeURL is where the bounce service serves one-click
	// unsubscribe links ("https://links.example.com/unsubscribe/"); the
	// signed token is appended. Empty: mass mail gets only the mailto:
	// link on the tenant's bounce domain, and no List-Unsubscribe-Post
	// (RFC 8058 one-click needs an HTTPS link).
	UnsubscribeURL string
	Now            func() time.Time
}

// Planner plans deliveries.
type Planner struct {
	cfg    Config
	supp   Suppressions
	health RelayHealth
	opts   Options
}

// New builds a planner. supp and health may be nil.
func New(cfg Config, supp Suppressions, health RelayHealth, opts Options) *Planner {
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 1000
	}
	if opts.EnvelopeRecipients <= 0 {
		opts.EnvelopeRecipients = 50
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxRecordBytes <= 0 {
		opts.MaxRecordBytes = bus.Config{}.DeliveryLimit()
	}
	return &Planner{cfg: cfg, supp: supp, health: health, opts: opts}
}

// Result is what a submission or a re-route turned into.
type Result struct {
	MessageID  string
	Deliveries []*mailbusv1.Delivery
	Events     []*mailbusv1.DeliveryEvent
}

// refusal is a submission's fault: it becomes a failed event.
type refusal struct{ reason, detail string }

func (r *refusal) Error() string { return r.reason + ": " + r.detail }

func refuse(reason, format string, args ...any) error {
	return &refusal{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// Plan plans a submission. recordKey identifies the record when the
// submission has no idempotency id (ids.RecordKey of its Kafka position),
// so a redelivered record still gets the same message id.
func (p *Planner) Plan(ctx context.Context, sub *mailbusv1.Submission, recordKey string) (Result, error) {
	idem := sub.GetIdempotencyId()
	if idem == "" {
		idem = recordKey
	}
	return p.plan(ctx, sub, ids.MessageID(sub.GetTenantId(), idem), nil)
}

// ReasonRetried is the reason of the queued event of a retry.
const ReasonRetried = "retried"

// Retry plans a retry that the tracker asked for through mail.resubmit:
// the message's original submission, sent again to the recipients named
// in rs only, through the same checks as a new submission (tenant, kind,
// suppression list, routing) and then quota's limits. The message keeps
// its id, Message-ID header and log entry; the deliveries get new ids of
// the retry (ids.RetryDeliveryID), so quota counts them and the sender
// sends them, and the same retry planned twice gives the same ids and
// events. A recipient on the suppression list stays suppressed: a retry
// does not override the tenant's list.
func (p *Planner) Retry(ctx context.Context, rs *mailbusv1.Resubmission) (Result, error) {
	sub := rs.GetSubmission()
	if rs.GetMessageId() == "" || rs.GetRetry() < 1 || sub == nil {
		return Result{}, bus.Permanent(fmt.Errorf("resubmission %q needs a message id, a retry number and the submission", rs.GetRetryId()))
	}
	return p.plan(ctx, sub, rs.GetMessageId(), rs)
}

// plan plans sub as message msgID: a new submission, or a retry of some of
// its recipients when rs is set.
func (p *Planner) plan(ctx context.Context, sub *mailbusv1.Submission, msgID string, rs *mailbusv1.Resubmission) (Result, error) {
	res := Result{MessageID: msgID}
	now := p.opts.Now()
	rcpts := recipients(sub)
	summary := &mailbusv1.MessageSummary{
		From: sub.GetFrom().GetEmail(), Subject: sub.GetSubject(), Kind: sub.GetKind(),
		CampaignId: sub.GetCampaignId(), Recipients: rcpts, IdempotencyId: sub.GetIdempotencyId(),
	}
	deliveryID := func(i int) string { return ids.DeliveryID(msgID, i, 0) }
	if rs != nil {
		// The log has the message's summary; the retry only adds events.
		summary = nil
		want := map[string]bool{}
		for _, a := range rs.GetRecipients() {
			want[strings.ToLower(strings.TrimSpace(a))] = true
		}
		var only []string
		for _, r := range rcpts {
			if want[strings.ToLower(r)] {
				only = append(only, r)
			}
		}
		rcpts = only
		deliveryID = func(i int) string { return ids.RetryDeliveryID(msgID, i, rs.GetRetry()) }
		defer func() { markRetry(&res, rs) }()
		if len(rcpts) == 0 {
			// Nothing of what the tracker asked for is in the submission:
			// the log says so instead of the retry vanishing.
			e := events.ForMessage(sub.GetTenantId(), sub.GetUserId(), msgID, events.StageRouter,
				mailbusv1.DeliveryStatus_DELIVERY_STATUS_UNSPECIFIED, ReasonNoRecipients,
				"none of the retried recipients is a recipient of the stored submission", now, nil)
			res.Events = append(res.Events, e)
			return res, nil
		}
	}
	fail := func(err error) (Result, error) {
		var r *refusal
		if !errors.As(err, &r) {
			return Result{}, err
		}
		e := events.ForMessage(sub.GetTenantId(), sub.GetUserId(), msgID, events.StageRouter,
			mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, r.reason, r.detail, now, rcpts)
		e.Summary = summary
		e.Permanent = true
		res.Events = append(res.Events, e)
		return res, nil
	}

	tenant, err := p.checkSubmission(sub, rcpts)
	if err != nil {
		return fail(err)
	}

	// Suppressed recipients are dropped before anything else happens.
	if p.supp != nil {
		supp, err := p.supp.SuppressedFor(ctx, tenant.GetId(), rcpts, sub.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_MASS)
		if err != nil {
			return Result{}, fmt.Errorf("check suppression list of %s: %w", tenant.GetId(), err)
		}
		if len(supp) > 0 {
			var kept []string
			for _, r := range rcpts {
				if why, ok := supp[strings.ToLower(r)]; ok {
					e := events.ForMessage(tenant.GetId(), sub.GetUserId(), msgID, events.StageRouter,
						mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED, ReasonSuppressed,
						"recipient is on the tenant's suppression list: "+why, now, []string{r})
					e.Summary = summary
					res.Events = append(res.Events, e)
					continue
				}
				kept = append(kept, r)
			}
			rcpts = kept
			if len(rcpts) == 0 {
				return res, nil
			}
		}
	}

	built, err := p.build(sub, msgID)
	if err != nil {
		return fail(err)
	}
	if summary != nil {
		summary.HeaderMessageId = built.MessageID
		summary.From = built.From.Email
		// A raw message's subject is in its header, not in the submission.
		summary.Subject = built.Subject
	}

	d := &mailbusv1.Delivery{
		MessageId: msgID, TenantId: tenant.GetId(), UserId: sub.GetUserId(), Kind: sub.GetKind(),
		Message: built.Data, CampaignId: sub.GetCampaignId(), Metadata: sub.GetMetadata(), Attempt: 1,
		QueueTime: timestamppb.New(now), HeaderMessageId: built.MessageID, IdempotencyId: sub.GetIdempotencyId(),
		Subject: built.Subject,
		Route:   &mailbusv1.Route{OriginalFrom: built.From.Email},
	}
	deliveries, err := p.route(ctx, tenant, d, rcpts, deliveryID)
	if err == nil {
		err = p.checkRecordSize(deliveries)
	}
	if err != nil {
		return fail(err)
	}
	reason, detail := "", deliveries[0].GetRoute().GetReason()
	if rs != nil {
		reason = ReasonRetried
		detail = fmt.Sprintf("retry %d requested by %s: %s", rs.GetRetry(), rs.GetRequestedBy(), detail)
	}
	queued := events.ForMessage(tenant.GetId(), sub.GetUserId(), msgID, events.StageRouter,
		mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED, reason, detail, now, rcpts)
	queued.Summary = summary
	queued.RelayId = deliveries[0].GetRoute().GetRelayId()
	queued.Attributes = routeAttributes(deliveries[0].GetRoute())
	res.Deliveries = deliveries
	res.Events = append(res.Events, queued)
	return res, nil
}

// markRetry gives the events of a retry their own ids (the message's
// first attempt made events about the same recipients with the same
// status and reason) and says in their attributes which retry they are.
func markRetry(res *Result, rs *mailbusv1.Resubmission) {
	for _, e := range res.Events {
		if e.GetMessageId() != res.MessageID {
			continue
		}
		e.Attempt = rs.GetRetry() + 1
		e.EventId = ids.EventID(res.MessageID, e.GetStage(), e.GetStatus().String(), e.GetAttempt(),
			e.GetReason(), strings.Join(e.GetRecipients(), ","), "retry", rs.GetRetryId())
		if e.Attributes == nil {
			e.Attributes = map[string]string{}
		}
		e.Attributes["retry"] = fmt.Sprint(rs.GetRetry())
		e.Attributes["retry_id"] = rs.GetRetryId()
		e.Attributes["requested_by"] = rs.GetRequestedBy()
	}
}

// Reroute plans a delivery again after its relay failed or was exhausted
// (the relay is in excluded_relay_ids). The message keeps its id; the new
// delivery gets a new id so that quota counts it against the new route.
func (p *Planner) Reroute(ctx context.Context, d *mailbusv1.Delivery) (Result, error) {
	res := Result{MessageID: d.GetMessageId()}
	now := p.opts.Now()
	tenant, ok := p.cfg.Tenant(d.GetTenantId())
	if !ok {
		e := events.ForDelivery(d, events.StageRouter, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED,
			ReasonUnknownTenant, fmt.Sprintf("tenant %q no longer exists", d.GetTenantId()), now)
		e.Permanent = true
		res.Events = append(res.Events, e)
		return res, nil
	}
	nd := proto.Clone(d).(*mailbusv1.Delivery)
	nd.DkimSignature = nil
	nd.QuotaDay = ""
	nd.NotBefore = nil
	// The new id is <base>.rN: base is the delivery's id without a trailing
	// re-route marker, N counts the relays excluded so far. A redelivered
	// fallback record therefore maps to the same new delivery, and ids stay
	// unique per message: a re-route that split an envelope (onto a VERP
	// domain) gave ids such as <base>.r1.2, whose envelope index must stay
	// in the base, or all of that split's next re-routes would share one id
	// and quota and the sender, idempotent on it, would drop all but one.
	base := rerouteBase(d.GetDeliveryId())
	reroute := len(d.GetExcludedRelayIds())
	idFor := func(i int) string {
		id := fmt.Sprintf("%s.r%d", base, reroute)
		if i > 0 {
			id += fmt.Sprintf(".%d", i)
		}
		return id
	}
	deliveries, err := p.route(ctx, tenant, nd, d.GetEnvelope().GetRcptTo(), idFor)
	if err == nil {
		err = p.checkRecordSize(deliveries)
	}
	if err != nil {
		var r *refusal
		if !errors.As(err, &r) {
			return Result{}, err
		}
		e := events.ForDelivery(d, events.StageRouter, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, r.reason, r.detail, now)
		e.Permanent = true
		res.Events = append(res.Events, e)
		return res, nil
	}
	for _, nd := range deliveries {
		e := events.ForDelivery(nd, events.StageRouter, mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED,
			"rerouted", nd.GetRoute().GetReason(), now)
		e.Attributes = routeAttributes(nd.GetRoute())
		e.Attributes["previous_delivery_id"] = d.GetDeliveryId()
		res.Events = append(res.Events, e)
	}
	res.Deliveries = deliveries
	if err := p.noticeRelayDisabled(ctx, tenant, d, &res); err != nil {
		return Result{}, err
	}
	return res, nil
}

// checkRecordSize refuses deliveries whose records would be over
// MaxRecordBytes. The message itself is within the mail limit (build
// checked it), but a delivery also carries the submission's subject,
// metadata and envelope, which the mail limit does not bound; a record
// that Kafka cannot carry must fail here, with a status, and not in a
// later stage.
func (p *Planner) checkRecordSize(deliveries []*mailbusv1.Delivery) error {
	for _, d := range deliveries {
		if n := proto.Size(d); n > p.opts.MaxRecordBytes {
			return refuse(ReasonTooLarge, "the delivery is %s as a Kafka record, over the %s limit: the message of %s and the submission's subject, metadata and recipients must fit in it together",
				bus.FormatBytes(n), bus.FormatBytes(p.opts.MaxRecordBytes), bus.FormatBytes(len(d.GetMessage())))
		}
	}
	return nil
}

// Fail turns a result that could not be published, because a record was
// too large for Kafka after all (a topic with a lower limit than the
// router's, a producer's huge headers), into failed events: the queued
// events of res.MessageID become failed ones for the same recipients, its
// deliveries are dropped, and whatever else res holds (suppressed
// recipients, a notice about another message) is kept.
func (p *Planner) Fail(res Result, reason, detail string) Result {
	now := p.opts.Now()
	out := Result{MessageID: res.MessageID}
	for _, d := range res.Deliveries {
		if d.GetMessageId() != res.MessageID {
			out.Deliveries = append(out.Deliveries, d)
		}
	}
	for _, e := range res.Events {
		if e.GetMessageId() == res.MessageID && e.GetStatus() == mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED {
			e = events.Failed(e, events.StageRouter, reason, detail, now)
		}
		out.Events = append(out.Events, e)
	}
	return out
}

// rerouteBase strips a trailing ".r<digits>" re-route marker from a
// delivery id.
func rerouteBase(id string) string {
	i := strings.LastIndex(id, ".r")
	if i < 0 || i+2 == len(id) {
		return id
	}
	for _, c := range id[i+2:] {
		if c < '0' || c > '9' {
			return id
		}
	}
	return id[:i]
}

func (p *Planner) checkSubmission(sub *mailbusv1.Submission, rcpts []string) (*mailbusv1.Tenant, error) {
	tenant, ok := p.cfg.Tenant(sub.GetTenantId())
	if !ok {
		return nil, refuse(ReasonUnknownTenant, "tenant %q is not configured; create it with ConfigService.CreateTenant or the seed file", sub.GetTenantId())
	}
	if !tenant.GetActive() {
		return nil, refuse(ReasonInactiveTenant, "tenant %q is inactive", sub.GetTenantId())
	}
	if _, ok := mailbusv1.EmailKind_name[int32(sub.GetKind())]; !ok || sub.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_UNSPECIFIED {
		return nil, refuse(ReasonInvalidKind, "kind must be one of workflow, mass, individual, transactional, system; got %v", sub.GetKind())
	}
	if len(rcpts) == 0 {
		return nil, refuse(ReasonNoRecipients, "the submission has no recipients in to, cc or bcc")
	}
	if len(rcpts) > p.opts.MaxRecipients {
		return nil, refuse(ReasonTooManyRcpts, "%d recipients; at most %d per submission", len(rcpts), p.opts.MaxRecipients)
	}
	if err := checkInjection(sub); err != nil {
		return nil, err
	}
	for _, field := range []struct {
		name  string
		addrs []*mailbusv1.Address
	}{{"to", sub.GetTo()}, {"cc", sub.GetCc()}, {"bcc", sub.GetBcc()}} {
		for i, a := range field.addrs {
			if err := mail.ValidateMailbox(a.GetEmail()); err != nil {
				return nil, refuse(ReasonInvalidAddress, "%s[%d]: %v", field.name, i, err)
			}
		}
	}
	return tenant, nil
}

// checkInjection refuses CR or LF in any field that becomes a header: the
// classic header injection (a Bcc smuggled in through a subject). The
// builder would refuse it too; naming it here tells the producer exactly
// what was wrong and where.
func checkInjection(sub *mailbusv1.Submission) error {
	bad := func(s string) bool { return strings.ContainsAny(s, "\r\n") }
	if bad(sub.GetSubject()) {
		return refuse(ReasonHeaderInjection, "subject contains CR or LF (a line break would start a new header): %q", sub.GetSubject())
	}
	for i, h := range sub.GetHeaders() {
		if bad(h.GetName()) || bad(h.GetValue()) {
			return refuse(ReasonHeaderInjection, "headers[%d] %s contains CR or LF (a line break would start a new header)", i, strings.TrimSpace(h.GetName()))
		}
	}
	addrs := map[string][]*mailbusv1.Address{"from": {sub.GetFrom()}, "reply_to": sub.GetReplyTo(), "to": sub.GetTo(), "cc": sub.GetCc(), "bcc": sub.GetBcc()}
	for _, field := range []string{"from", "reply_to", "to", "cc", "bcc"} {
		for i, a := range addrs[field] {
			if bad(a.GetName()) || bad(a.GetEmail()) {
				return refuse(ReasonHeaderInjection, "%s[%d] contains CR or LF (a line break would start a new header)", field, i)
			}
		}
	}
	return nil
}

// build makes the MIME message. The Message-ID's left part is the message
// id, so a redelivered submission builds the same message.
func (p *Planner) build(sub *mailbusv1.Submission, msgID string) (mail.Message, error) {
	opts := mail.Options{MaxSize: p.opts.MaxMessageBytes, Now: p.opts.Now, MessageIDLeft: msgID}
	m, err := mail.Build(sub, opts)
	if err != nil {
		reason := ReasonInvalidMessage
		var ae *mail.AddressError
		var he *mail.HeaderError
		switch {
		case errors.Is(err, mail.ErrTooLarge):
			reason = ReasonTooLarge
		case errors.As(err, &ae):
			reason = ReasonInvalidAddress
		case errors.As(err, &he):
			reason = ReasonInvalidHeader
		}
		return mail.Message{}, refuse(reason, "%v", err)
	}
	return m, nil
}

// route decides the route and makes the deliveries of one message.
func (p *Planner) route(ctx context.Context, tenant *mailbusv1.Tenant, d *mailbusv1.Delivery, rcpts []string, idFor func(envelope int) string) ([]*mailbusv1.Delivery, error) {
	isTenantDomain := func(name string) bool { _, ok := p.cfg.Domain(tenant.GetId(), name); return ok }
	req := route.Request{
		Tenant: tenant, Kind: d.GetKind(), From: d.GetRoute().GetOriginalFrom(), TenantDomain: isTenantDomain,
		Relays: p.cfg.Relays(tenant.GetId()), Excluded: d.GetExcludedRelayIds(), Default: defaultServer(p.cfg.DefaultServer()),
		DefaultOnly: isNotice(d),
	}
	if p.health != nil {
		req.Disabled = func(id string) bool { return p.health.Disabled(ctx, tenant, id) }
	}
	dec, ok := route.Decide(req)
	if !ok {
		return nil, refuse(ReasonNoRoute, "%s", dec.Reason)
	}
	msg := d.GetMessage()
	if dec.Rewritten {
		cur, err := mail.HeaderFrom(msg)
		if err == nil && !strings.EqualFold(cur.Email, dec.HeaderFrom) {
			msg, _, err = mail.RewriteFrom(msg, mail.Address{Email: dec.HeaderFrom}, tenant.GetName())
		}
		if err != nil {
			return nil, refuse(ReasonInvalidMessage, "rewrite From to %s: %v", dec.HeaderFrom, err)
		}
	}
	r := &mailbusv1.Route{
		Kind: dec.Kind, RelayId: dec.Relay.GetId(), DkimDomain: dec.DKIMDomain, FromRewritten: dec.Rewritten,
		OriginalFrom: d.GetRoute().GetOriginalFrom(), HeaderFrom: dec.HeaderFrom, Reason: dec.Reason,
	}
	if dec.Kind == mailbusv1.RouteKind_ROUTE_KIND_DEFAULT_RELAY {
		r.RelayId = ""
	}
	if !mail.HasHeader(msg, "Feedback-ID") {
		msg = mail.PrependFields(msg, "Feedback-ID: "+feedbackID(tenant.GetId(), d))
	}
	unsubscribe := p.wantsUnsubscribe(tenant, d) && !mail.HasHeader(msg, "List-Unsubscribe")
	verp, returnPath := p.returnPath(tenant, dec.HeaderFrom)
	var envelopes [][]string
	if verp || unsubscribe {
		for _, rc := range rcpts {
			envelopes = append(envelopes, []string{rc})
		}
	} else {
		for chunk := range slices.Chunk(rcpts, p.opts.EnvelopeRecipients) {
			envelopes = append(envelopes, chunk)
		}
	}
	out := make([]*mailbusv1.Delivery, 0, len(envelopes))
	// Every copy gets msg below: cloning d's own message as well copied
	// the whole mail once more per delivery (BenchmarkPlanner_
	// transactional10KB: 53 → 42 KB allocated per message).
	orig := d.Message
	d.Message = nil
	defer func() { d.Message = orig }()
	for i, env := range envelopes {
		nd := proto.Clone(d).(*mailbusv1.Delivery)
		nd.Message = msg
		if unsubscribe {
			nd.Message = mail.PrependFields(msg, p.unsubscribeFields(tenant, env[0], d.GetMessageId())...)
		}
		nd.Route = r
		nd.DeliveryId = idFor(i)
		mailFrom := returnPath
		if verp {
			var err error
			mailFrom, err = mail.VERPEncode(p.opts.VERPKey, tenant.GetId(), nd.GetDeliveryId(), env[0], tenant.GetBounceDomain())
			if err != nil {
				return nil, refuse(ReasonReturnPathError, "make VERP return path: %v", err)
			}
		}
		nd.Envelope = &mailbusv1.Envelope{MailFrom: mailFrom, RcptTo: env, EnvelopeId: nd.GetDeliveryId()}
		out = append(out, nd)
	}
	return out, nil
}

// UnsubscribeMetadata in a submission's metadata asks for the one-click
// unsubscribe headers on mail that is not of kind mass ("true").
const UnsubscribeMetadata = "list_unsubscribe"

// wantsUnsubscribe reports whether d gets List-Unsubscribe: mass mail, and
// any submission that asks, when a link can be made (an HTTPS endpoint or
// the tenant's bounce domain, and the signing key). mailbus's own notices
// never do.
func (p *Planner) wantsUnsubscribe(tenant *mailbusv1.Tenant, d *mailbusv1.Delivery) bool {
	if isNotice(d) || len(p.opts.VERPKey) == 0 || (p.opts.UnsubscribeURL == "" && tenant.GetBounceDomain() == "") {
		return false
	}
	return d.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_MASS || d.GetMetadata()[UnsubscribeMetadata] == "true"
}

// unsubscribeFields are the RFC 2369/8058 fields of one recipient's copy:
// a signed HTTPS link that takes a one-click POST, and a mailto: on the
// bounce domain that the bounce service reads. Each link sits on its own
// folded line, so the field stays readable and under 998 octets.
func (p *Planner) unsubscribeFields(tenant *mailbusv1.Tenant, rcpt, messageID string) []string {
	var links []string
	token := unsub.Token(p.opts.VERPKey, unsub.Link{Tenant: tenant.GetId(), Recipient: rcpt, MessageID: messageID})
	if p.opts.UnsubscribeURL != "" {
		links = append(links, "<"+p.opts.UnsubscribeURL+token+">")
	}
	if bd := tenant.GetBounceDomain(); bd != "" {
		// The subject's token names the message for the message log.
		links = append(links, "<mailto:"+unsub.MailtoLocal(p.opts.VERPKey, tenant.GetId(), rcpt)+"@"+bd+"?subject=unsubscribe%20"+token+">")
	}
	fields := []string{"List-Unsubscribe: " + strings.Join(links, ",\r\n ")}
	if p.opts.UnsubscribeURL != "" {
		fields = append(fields, "List-Unsubscribe-Post: List-Unsubscribe=One-Click")
	}
	return fields
}

// feedbackID is Gmail's Feedback-ID, "campaign:kind:tenant:mailbus" (the
// last part names the sender; Gmail's feedback loop reports complaint
// rates per value of each part). Colons and spaces would shift the parts.
func feedbackID(tenantID string, d *mailbusv1.Delivery) string {
	clean := func(s string) string {
		s = strings.Map(func(r rune) rune {
			if r == ':' || r <= ' ' || r > '~' {
				return '-'
			}
			return r
		}, s)
		if s == "" {
			return "none"
		}
		return s
	}
	kind := strings.ToLower(strings.TrimPrefix(d.GetKind().String(), "EMAIL_KIND_"))
	return clean(d.GetCampaignId()) + ":" + clean(kind) + ":" + clean(tenantID) + ":mailbus"
}

// returnPath applies the sender domain's return-path policy. A domain
// without one uses VERP when the tenant has a bounce domain (so bounces
// come back to mailbus), and the From address otherwise.
func (p *Planner) returnPath(tenant *mailbusv1.Tenant, headerFrom string) (verp bool, addr string) {
	mode := mailbusv1.ReturnPathMode_RETURN_PATH_MODE_UNSPECIFIED
	custom := ""
	if d, ok := p.cfg.Domain(tenant.GetId(), domainOf(headerFrom)); ok {
		mode, custom = d.GetReturnPathMode(), d.GetCustomReturnPath()
	}
	canVERP := tenant.GetBounceDomain() != "" && len(p.opts.VERPKey) > 0
	switch mode {
	case mailbusv1.ReturnPathMode_RETURN_PATH_MODE_CUSTOM:
		if custom != "" {
			return false, custom
		}
	case mailbusv1.ReturnPathMode_RETURN_PATH_MODE_FROM:
		return false, headerFrom
	}
	if canVERP {
		return true, ""
	}
	return false, headerFrom
}

// defaultServer is the route package's view of the default server; nil when
// none is configured.
func defaultServer(ds configclient.DefaultServer) *mailbusv1.DefaultServer {
	if ds.Mode == mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_UNSPECIFIED {
		return nil
	}
	out := &mailbusv1.DefaultServer{Mode: ds.Mode, HeloName: ds.HeloName}
	if ds.Relay != nil {
		out.Relay = ds.Relay.Relay
	}
	return out
}

func routeAttributes(r *mailbusv1.Route) map[string]string {
	a := map[string]string{"route": strings.ToLower(strings.TrimPrefix(r.GetKind().String(), "ROUTE_KIND_")), "header_from": r.GetHeaderFrom()}
	if r.GetFromRewritten() {
		a["from_rewritten"] = "true"
		a["original_from"] = r.GetOriginalFrom()
	}
	return a
}

func recipients(sub *mailbusv1.Submission) []string {
	seen := map[string]bool{}
	var out []string
	for _, list := range [][]*mailbusv1.Address{sub.GetTo(), sub.GetCc(), sub.GetBcc()} {
		for _, a := range list {
			k := strings.ToLower(strings.TrimSpace(a.GetEmail()))
			if k == "" || seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, strings.TrimSpace(a.GetEmail()))
		}
	}
	return out
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}
