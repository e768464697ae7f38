package bounce

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bounce"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/suppress"
)

// Reasons the bounce stage gives besides the classifier's.
const (
	// ReasonSoftThreshold is the suppression detail's prefix when soft
	// bounces reached the tenant's threshold.
	ReasonSoftThreshold = "soft_bounce_threshold"
)

// target is a mailbox the listener accepted mail for: a verified VERP
// address, or a feedback-loop address.
type target struct {
	tenant *mailbusv1.Tenant
	// deliveryID and rcptHash come from a VERP address; empty for a
	// feedback-loop address.
	deliveryID string
	rcptHash   string
	// unsubscribe is the local part of an unsubscribe address
	// (pkg/unsub); such a target is not about a bounce.
	unsubscribe string
}

// match is what a record is about.
type match struct {
	tenant     *mailbusv1.Tenant
	messageID  string
	deliveryID string
	recipient  string
	how        string // verp, header-verp, message-id: for the log
}

// messageIDOf returns the message id of a delivery id: ids.DeliveryID puts
// the message id before the first dot.
func messageIDOf(deliveryID string) string {
	if i := strings.IndexByte(deliveryID, '.'); i > 0 {
		return deliveryID[:i]
	}
	return deliveryID
}

// isMailbusMessageID reports an id of the form ids.MessageID makes, so
// that a Message-ID header someone else chose is not taken for one.
func isMailbusMessageID(s string) bool {
	if len(s) != 25 || s[0] != 'm' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// verifyVERP finds, among tenants, the one whose delivery the VERP address
// addr names: the address's MAC covers the tenant (see pkg/mail), so it
// verifies for that tenant alone. Every key is tried, the current one
// first, then retired ones whose mail may still bounce. Errors:
// mail.ErrNotVERP for an address that is not a VERP address at all,
// mail.ErrVERPForged for one that verifies for none of tenants (altered,
// made with a key no longer configured, or another tenant's).
func verifyVERP(keys [][]byte, tenants []*mailbusv1.Tenant, addr string) (t *mailbusv1.Tenant, deliveryID, hash string, err error) {
	// With no key, VERPDecode only tells the form of the address.
	if _, _, err := mail.VERPDecode(nil, "", addr); errors.Is(err, mail.ErrNotVERP) {
		return nil, "", "", err
	}
	for _, cand := range tenants {
		for _, k := range keys {
			if id, h, err := mail.VERPDecode(k, cand.GetId(), addr); err == nil {
				return cand, id, h, nil
			}
		}
	}
	return nil, "", "", mail.ErrVERPForged
}

// matchRecord finds the message and recipient a record is about. The VERP
// address the bounce was sent to names the delivery, and its recipient
// hash must agree with the record's recipient (a report about another
// address, say the target of a forward, is not about our recipient). Mail
// to a feedback-loop address has no VERP address: the reported message's
// own Return-Path (a VERP address), or its Message-ID when mailbus made it,
// names the message instead.
//
// The match carries the tenant of the delivery, which is what suppression
// and the event follow: for a VERP address, the tenant it verified for.
func (s *Service) matchRecord(ctx context.Context, targets []target, rec bounce.Record) (match, bool, error) {
	rcpt := suppress.Normalize(rec.Recipient)
	if rcpt == bounce.UndisclosedRecipient {
		rcpt = ""
	}
	verp := false
	for _, t := range targets {
		if t.deliveryID == "" {
			continue
		}
		verp = true
		if rcpt != "" && mail.RecipientHash(rcpt) == t.rcptHash {
			return match{tenant: t.tenant, messageID: messageIDOf(t.deliveryID), deliveryID: t.deliveryID, recipient: rcpt, how: "verp"}, true, nil
		}
	}
	if verp || rcpt == "" {
		return match{}, false, nil
	}
	var tenant *mailbusv1.Tenant
	for _, t := range targets {
		tenant = t.tenant
	}
	if rp := rec.Headers.Get("Return-Path"); rp != "" {
		candidates, err := s.returnPathTenants(ctx, rp, tenant)
		if err != nil {
			return match{}, false, err
		}
		t, id, hash, err := verifyVERP(s.cfg.VERPKeys, candidates, rp)
		switch {
		case err == nil && hash == mail.RecipientHash(rcpt):
			// A provider's feedback loop may send a tenant the complaints
			// about every message from a shared IP address: the return
			// path says whose message it was.
			return match{tenant: t, messageID: messageIDOf(id), deliveryID: id, recipient: rcpt, how: "header-verp"}, true, nil
		case err == nil && (tenant == nil || t.GetId() != tenant.GetId()):
			// Another tenant's message, but not to this recipient: nothing
			// here says which message of ours the report is about.
			return match{}, false, nil
		case errors.Is(err, mail.ErrVERPForged):
			// A return path of ours that verifies for none of the
			// tenants it could be: altered, or signed with a key we no
			// longer have. The Message-ID cannot be trusted to say whose
			// message it was either.
			return match{}, false, nil
		}
	}
	if tenant == nil {
		return match{}, false, nil
	}
	if id := strings.TrimSpace(rec.Headers.Get("X-Mailbus-Message-Id")); isMailbusMessageID(id) {
		return match{tenant: tenant, messageID: id, recipient: rcpt, how: "x-mailbus-header"}, true, nil
	}
	if left, _, ok := strings.Cut(rec.OriginalMessageID, "@"); ok && isMailbusMessageID(left) {
		return match{tenant: tenant, messageID: left, recipient: rcpt, how: "message-id"}, true, nil
	}
	return match{}, false, nil
}

// returnPathTenants returns the tenants a VERP address found in a reported
// message may belong to: the tenant the report came to, and the owners of
// the address's bounce domain.
func (s *Service) returnPathTenants(ctx context.Context, addr string, tenant *mailbusv1.Tenant) ([]*mailbusv1.Tenant, error) {
	var out []*mailbusv1.Tenant
	if tenant != nil {
		out = append(out, tenant)
	}
	a := strings.Trim(strings.TrimSpace(addr), "<>")
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return out, nil
	}
	ts, err := s.dir.BounceTenants(ctx, normalizeDomain(a[at+1:]))
	if err != nil {
		return nil, fmt.Errorf("look up the bounce domain of reported return path %s: %w", a, err)
	}
	for _, t := range ts {
		if tenant == nil || t.GetId() != tenant.GetId() {
			out = append(out, t)
		}
	}
	return out, nil
}

// outcome is what the stage does with one record.
type outcome int

const (
	outcomeIgnore outcome = iota
	outcomeHard
	outcomeSoft
	outcomeDelayed
	outcomeComplaint
)

func decideOutcome(rec bounce.Record) outcome {
	switch {
	case rec.Reason == "feedback" || rec.FeedbackType != "":
		return outcomeComplaint
	case rec.Reason == "delivered" || rec.Reason == "vacation":
		// Success notices and auto-replies say nothing about the address.
		return outcomeIgnore
	}
	switch strings.ToLower(rec.Action) {
	case "delivered", "relayed", "expanded":
		return outcomeIgnore
	case "delayed":
		// Still being tried: the final answer will come later.
		return outcomeDelayed
	}
	if rec.Hard {
		return outcomeHard
	}
	return outcomeSoft
}

// Result says what Process did with one message.
type Result struct {
	// Records is how many records the parser found.
	Records int
	// Events are the events published, one per matched record.
	Events []*mailbusv1.DeliveryEvent
	// Unmatched counts records that named no message of ours.
	Unmatched int
}

// Process parses one received message that was accepted for targets and
// acts on every record: an event to mail.events, and for hard bounces and
// complaints an entry on the tenant's suppression list (soft bounces count
// towards the tenant's threshold). It returns an error only for what a
// retry can fix (Kafka, Redis or the configuration unavailable); the
// caller then answers 4xx so that the sending MTA tries again. Every step
// is idempotent, so a retried message does no harm.
func (s *Service) Process(ctx context.Context, targets []target, raw []byte) (Result, error) {
	recs, err := bounce.Parse(raw)
	if err != nil {
		// A parser bug: retrying the same bytes would fail the same way.
		s.log.ErrorContext(ctx, "bounce parser failed; message dropped", "err", err)
		s.metrics.messages.WithLabelValues("parse_error").Inc()
		return Result{}, nil
	}
	res := Result{Records: len(recs)}
	if len(recs) == 0 {
		s.metrics.messages.WithLabelValues("not_a_bounce").Inc()
		s.log.InfoContext(ctx, "received mail that is not a bounce", "bytes", len(raw))
		return res, nil
	}
	now := s.now()
	for _, rec := range recs {
		oc := decideOutcome(rec)
		if oc == outcomeIgnore {
			s.metrics.records.WithLabelValues("ignored").Inc()
			continue
		}
		m, ok, err := s.matchRecord(ctx, targets, rec)
		if err != nil {
			return res, err
		}
		if !ok {
			res.Unmatched++
			s.metrics.records.WithLabelValues("unmatched").Inc()
			s.log.WarnContext(ctx, "bounce record matches no message of ours", "recipient", rec.Recipient,
				"reason", rec.Reason, "original_message_id", rec.OriginalMessageID)
			continue
		}
		ev := s.event(m, rec, oc, now)
		if err := s.publish(ctx, ev); err != nil {
			return res, err
		}
		res.Events = append(res.Events, ev)
		if err := s.suppress(ctx, m, rec, oc, now); err != nil {
			return res, err
		}
		if oc == outcomeComplaint {
			if err := s.countComplaint(ctx, m, now); err != nil {
				return res, err
			}
		}
		s.metrics.records.WithLabelValues(outcomeName(oc)).Inc()
	}
	s.metrics.messages.WithLabelValues("bounce").Inc()
	return res, nil
}

func outcomeName(oc outcome) string {
	switch oc {
	case outcomeHard:
		return "hard"
	case outcomeSoft:
		return "soft"
	case outcomeDelayed:
		return "delayed"
	case outcomeComplaint:
		return "complaint"
	}
	return "ignored"
}

func (s *Service) event(m match, rec bounce.Record, oc outcome, now time.Time) *mailbusv1.DeliveryEvent {
	status := mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED
	if oc == outcomeComplaint {
		status = mailbusv1.DeliveryStatus_DELIVERY_STATUS_COMPLAINED
	}
	detail := rec.Diagnostic
	switch {
	case oc == outcomeComplaint:
		detail = "complaint (feedback type " + orDefault(rec.FeedbackType, "abuse") + ")"
		if rec.Diagnostic != "" {
			detail += ": " + rec.Diagnostic
		}
	case oc == outcomeDelayed:
		detail = "delivery delayed: " + detail
	case detail == "":
		detail = "bounced: " + rec.Reason
	}
	about := m.deliveryID
	if about == "" {
		about = m.messageID
	}
	ev := &mailbusv1.DeliveryEvent{
		TenantId:   m.tenant.GetId(),
		MessageId:  m.messageID,
		DeliveryId: m.deliveryID,
		Recipients: []string{m.recipient},
		Status:     status,
		Stage:      events.StageBounce,
		Reason:     rec.Reason,
		Detail:     detail,
		Permanent:  oc == outcomeHard || oc == outcomeComplaint,
		// The time of receipt, not the report's own date: the report's
		// clock may be anyone's, and the tracker orders events by time.
		OccurTime:  timestamppb.New(now),
		Attributes: map[string]string{"matched_by": m.how},
	}
	// The event id depends only on the report, so the same report
	// received twice (an MTA retrying after a 4xx) is stored once.
	ev.EventId = ids.EventID(about, events.StageBounce, status.String(), 0, rec.Reason, m.recipient, rec.Status, rec.Diagnostic, rec.FeedbackType)
	events.WithReply(ev, rec.ReplyCode, rec.Status, rec.Diagnostic)
	for k, v := range map[string]string{
		"action": rec.Action, "reporting_mta": rec.ReportingMTA, "remote_mta": rec.RemoteMTA, "feedback_type": rec.FeedbackType,
	} {
		if v != "" {
			ev.Attributes[k] = v
		}
	}
	if !rec.Date.IsZero() {
		ev.Attributes["report_time"] = rec.Date.UTC().Format(time.RFC3339)
	}
	return ev
}

func (s *Service) suppress(ctx context.Context, m match, rec bounce.Record, oc outcome, now time.Time) error {
	if s.supp == nil {
		return nil
	}
	tenantID := m.tenant.GetId()
	switch oc {
	case outcomeHard, outcomeComplaint:
		src := suppress.SourceBounce
		if oc == outcomeComplaint {
			src = suppress.SourceComplaint
		}
		_, err := s.supp.Add(ctx, tenantID, suppress.Entry{Address: m.recipient, Reason: rec.Reason, Source: src, Detail: rec.Diagnostic, Time: now})
		if err != nil {
			return fmt.Errorf("suppress %s for tenant %s after a %s: %w", m.recipient, tenantID, outcomeName(oc), err)
		}
		s.metrics.suppressed.WithLabelValues(src).Inc()
	case outcomeSoft:
		id := m.deliveryID
		if id == "" {
			id = m.messageID
		}
		rule := suppress.SoftRule{Threshold: int(m.tenant.GetSoftBounceThreshold()), WindowDays: int(m.tenant.GetSoftBounceWindowDays())}
		n, suppressed, err := s.supp.SoftBounce(ctx, tenantID, m.recipient, id, rec.Reason, rule, now)
		if err != nil {
			return fmt.Errorf("count a soft bounce of %s for tenant %s: %w", m.recipient, tenantID, err)
		}
		if suppressed {
			s.metrics.suppressed.WithLabelValues(suppress.SourceSoft).Inc()
			s.log.InfoContext(ctx, "suppressed an address after repeated soft bounces", "tenant", tenantID, "recipient", m.recipient, "soft_bounces", n)
		}
	}
	return nil
}

// countComplaint counts a complaint towards its tenant's complaint rate
// of today (pkg/complaints), which the quota stage pauses mass mail by.
// It counts once per message and recipient, so the same report received
// twice, or through a feedback loop and a VERP address both, is one
// complaint.
func (s *Service) countComplaint(ctx context.Context, m match, now time.Time) error {
	if s.rdb == nil {
		return nil
	}
	tenantID := m.tenant.GetId()
	added, err := complaints.AddComplaint(ctx, s.rdb, tenantID, limits.Zone(m.tenant.GetTimeZone()), m.messageID+"/"+m.recipient, now)
	if err != nil {
		return err
	}
	if added {
		s.metrics.complaints.Inc()
	}
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
