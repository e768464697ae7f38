package bounce

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bounce"
	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/events"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/suppress"
)

// RunSync consumes mail.events (consumer group bounce.sync) until ctx is
// cancelled, for the refusals the sender met itself: a relay or MX that
// refuses a recipient at RCPT or DATA with a 5xx reply sends no DSN, so
// without this the address would never reach the suppression list and the
// tenant would keep mailing an address the provider already said does not
// exist. Such a refusal goes through the same rule as a DSN (decideOutcome,
// suppress): hard suppresses at once, soft counts towards the tenant's
// threshold. No event is published: the sender's bounced event is the
// record of it.
func (s *Service) RunSync(ctx context.Context) error {
	r, err := bus.NewRouter(bus.Unhurried(s.cfg.Bus), "bounce", s.log)
	if err != nil {
		return err
	}
	// Only the sender's bounced events matter here; a record without a
	// tenant is someone else's business and is acked, not poisoned.
	if err := r.Handle("sync", bus.TopicEvents, bus.Handle(s.syncBounce, bus.AllowNoTenant())); err != nil {
		_ = r.Close()
		return err
	}
	return r.Run(ctx)
}

// syncBounce applies the suppression rule to a bounced event of the
// sender, once per recipient. Every other event is acked as it is. It is
// idempotent on redelivery: Add writes the same entry again, and
// SoftBounce counts a delivery's bounce of an address once.
func (s *Service) syncBounce(ctx context.Context, _ *message.Message, ev *mailbusv1.DeliveryEvent) error {
	if ev.GetStage() != events.StageSender || ev.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED || ev.GetTenantId() == "" {
		return nil
	}
	tenant, ok := s.tenants.Tenant(ev.GetTenantId())
	if !ok {
		// A tenant removed since, or not yet in the cache: its list is
		// still the place for the address, by the default soft rule.
		s.log.WarnContext(ctx, "bounced event of an unknown tenant; using the default soft-bounce rule",
			"tenant", ev.GetTenantId(), "message_id", ev.GetMessageId())
		tenant = &mailbusv1.Tenant{Id: ev.GetTenantId()}
	}
	reply := ev.GetReply()
	rec := bounce.Record{
		Action: "failed", Status: reply.GetEnhancedCode(), ReplyCode: int(reply.GetCode()),
		Diagnostic: replyLine(reply, ev.GetDetail()), Reason: ev.GetReason(),
		// The sender classified the reply with pkg/bounce as a DSN's
		// diagnostic is: Permanent is its verdict.
		Hard: ev.GetPermanent(),
	}
	oc := decideOutcome(rec)
	if oc != outcomeHard && oc != outcomeSoft {
		return nil
	}
	at := s.now()
	if ev.GetOccurTime() != nil {
		at = ev.GetOccurTime().AsTime()
	}
	for _, rcpt := range ev.GetRecipients() {
		m := match{tenant: tenant, messageID: ev.GetMessageId(), deliveryID: ev.GetDeliveryId(), recipient: suppress.Normalize(rcpt), how: "sender"}
		rec.Recipient = m.recipient
		if err := s.suppress(ctx, m, rec, oc, at); err != nil {
			if errors.Is(err, suppress.ErrInvalid) {
				// An empty address or delivery id: no retry makes it valid.
				s.log.WarnContext(ctx, "bounced event cannot be applied to the suppression list", "tenant", ev.GetTenantId(),
					"message_id", ev.GetMessageId(), "recipient", rcpt, "err", err)
				continue
			}
			return fmt.Errorf("apply the sender's %s bounce of message %s: %w", outcomeName(oc), ev.GetMessageId(), err)
		}
	}
	return nil
}

// replyLine is the remote server's reply as it said it ("550 5.1.1 The
// email account ..."), the way a DSN's Diagnostic-Code reads; the event's
// own detail when it carries no reply.
func replyLine(r *mailbusv1.SmtpReply, detail string) string {
	if r.GetCode() == 0 && r.GetText() == "" {
		return detail
	}
	line := r.GetText()
	if r.GetEnhancedCode() != "" {
		line = r.GetEnhancedCode() + " " + line
	}
	if r.GetCode() != 0 {
		line = fmt.Sprint(r.GetCode()) + " " + line
	}
	return line
}
