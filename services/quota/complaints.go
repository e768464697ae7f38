package quota

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/complaints"
	"github.com/mailbus/mailbus/pkg/delay"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
)

// noticeKey is the router's plan.NoticeKey: a system submission that
// carries it leaves through the default server, not through the tenant's
// relays (whose reputation may be what the notice is about).
const noticeKey = "mailbus_notice"

// complaintGuard defers d, a mass delivery that Admit has just counted,
// when its tenant's complaint rate today is over the limit, and warns the
// tenant's administrators the first time. It reports whether d was
// deferred.
//
// A paused delivery waits for the tenant's next midnight, when the
// counters start again from zero, rather than being looked at again every
// hour: within a day the rate only falls when more mass mail is delivered,
// and a pause stops exactly that, so an earlier look would find the same
// answer at the cost of every paused delivery going round the retry topics
// once more. It is deferred under a new id of that day (deferredDelivery),
// so a tenant paused two days in a row gets an event for each day.
func (s *Service) complaintGuard(ctx context.Context, meta message.Metadata, d *mailbusv1.Delivery, tenant *mailbusv1.Tenant, loc *time.Location, now time.Time) (bool, error) {
	policy := s.cfg.Complaints
	if policy.Off {
		return false, nil
	}
	st, err := complaints.Today(ctx, s.deps.Redis, tenant.GetId(), loc, now)
	if err != nil {
		return false, err
	}
	if !policy.Over(st) {
		return false, nil
	}
	// Admit counted d a moment ago, but it does not leave today: give the
	// recipients back to the relay's and the tenant's limits.
	if _, err := s.limits.Refund(ctx, d.GetTenantId(), d.GetDeliveryId()); err != nil {
		return false, fmt.Errorf("refund paused delivery %s: %w", d.GetDeliveryId(), err)
	}
	next := limits.NextMidnight(now, loc)
	if err := s.warnComplaints(ctx, tenant, loc, policy, st, next, now); err != nil {
		return false, err
	}
	s.decision.WithLabelValues("complaint_paused").Inc()
	nd := deferredDelivery(d, limits.DayKey(next, loc))
	detail := fmt.Sprintf("%s: mass mail is paused until %s; transactional mail still flows; deferred as delivery %s",
		policy.Describe(tenant.GetId(), st), next.Format(time.RFC3339), nd.GetDeliveryId())
	e := events.ForDelivery(d, events.StageQuota, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED, complaints.Reason, detail, now)
	if err := delay.Enqueue(s.pub, meta, nd, bus.TopicRouted, next, now); err != nil {
		return false, err
	}
	return true, bus.Publish(s.pub, bus.TopicEvents, e, meta)
}

// warnComplaints logs that tenant's mass mail is paused and submits the
// notice to its administrators, unless that was done today. Several replicas may
// find the mark missing at once and all submit it: the notice's
// idempotency id is the tenant and the day, so the router makes one
// message of them, with the same delivery ids, which quota and the sender
// treat as redeliveries. The mark is set after the submission is
// published, so a crash in between means one more submission of the same
// notice, never none.
func (s *Service) warnComplaints(ctx context.Context, tenant *mailbusv1.Tenant, loc *time.Location, policy complaints.Policy, st complaints.Stats, until, now time.Time) error {
	if warned, err := complaints.Warned(ctx, s.deps.Redis, tenant.GetId(), st.Day); err != nil || warned {
		return err
	}
	s.log.WarnContext(ctx, "mass mail paused for the complaint rate", "tenant", tenant.GetId(), "day", st.Day,
		"complaints", st.Complaints, "delivered_mass", st.Delivered, "until", until, "admins", len(tenant.GetAdminEmails()))
	if len(tenant.GetAdminEmails()) == 0 {
		// Nobody to mail: the log line above and the deferred events
		// are the warning, once a day too.
		return complaints.MarkWarned(ctx, s.deps.Redis, tenant.GetId(), loc, now)
	}
	name := tenant.GetName()
	if name == "" {
		name = tenant.GetId()
	}
	sub := &mailbusv1.Submission{
		IdempotencyId: complaints.NoticeIdempotencyID(tenant.GetId(), st.Day), TenantId: tenant.GetId(),
		Kind:     mailbusv1.EmailKind_EMAIL_KIND_SYSTEM,
		From:     &mailbusv1.Address{Name: "mailbus", Email: tenant.GetDefaultFrom() + "@" + tenant.GetDomainAlias()},
		Subject:  fmt.Sprintf("Mass mail of %s is paused: complaint rate %s today", name, complaints.Percent(st.Rate())),
		Metadata: map[string]string{noticeKey: complaints.Reason, "day": st.Day},
		TextBody: fmt.Sprintf("Recipients marked too much of %s's mail as spam on %s: %s.\n\n"+
			"Mailbox providers stop delivering the mail of senders over that rate (Gmail asks bulk senders to stay under 0.3%%), "+
			"and the addresses and domains mailbus sends from are shared, so the mass mail of %s is paused until midnight (%s, %s). "+
			"It is deferred, not lost: it goes out when the pause ends. Transactional mail still flows.\n\n"+
			"The addresses that complained are on the suppression list already. Before the next campaign, check where its "+
			"addresses came from (only people who asked for the mail), that the unsubscribe link is visible, and remove "+
			"recipients who have not opened anything in months.\n",
			name, st.Day, policy.Describe(tenant.GetId(), st), name, until.Format(time.RFC3339), loc),
	}
	for _, a := range tenant.GetAdminEmails() {
		sub.To = append(sub.To, &mailbusv1.Address{Email: strings.TrimSpace(a)})
	}
	if err := bus.Publish(s.pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
		return fmt.Errorf("submit the complaint-rate notice of tenant %s: %w", tenant.GetId(), err)
	}
	return complaints.MarkWarned(ctx, s.deps.Redis, tenant.GetId(), loc, now)
}
