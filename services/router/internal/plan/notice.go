package plan

import (
	"context"
	"fmt"
	"strings"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
)

// NoticeKey marks mailbus's own notices in Submission.metadata (and so in
// Delivery.metadata). A notice of kind system leaves through the default
// server: it must not depend on the tenant's relays, which it may be
// warning about.
const NoticeKey = "mailbus_notice"

// NoticeRelayDisabled is the NoticeKey value of the warning that a relay
// was disabled for the rest of the day.
const NoticeRelayDisabled = "relay_disabled"

func isNotice(d *mailbusv1.Delivery) bool {
	return d.GetKind() == mailbusv1.EmailKind_EMAIL_KIND_SYSTEM && d.GetMetadata()[NoticeKey] != ""
}

// RelayDisabledIdempotencyID is the idempotency id of the notice that relay
// was disabled on day (YYYY-MM-DD in the tenant's zone): one notice per
// relay per day, however many deliveries fall back from it and however
// often their records are redelivered.
func RelayDisabledIdempotencyID(relayID, day string) string {
	return "relay-disabled/" + relayID + "/" + day
}

// noticeRelayDisabled adds to res the notice to the tenant's administrators
// when the relay that d just fell back from is disabled for today.
//
// The router notices it here, on the fallback path, because every delivery
// that fails on a relay comes back through mail.fallback, including the one
// whose failure disabled it; and it cannot send the notice twice, because
// the notice's message and delivery ids derive from the relay and the day,
// so quota and the sender treat every later copy as a redelivery.
func (p *Planner) noticeRelayDisabled(ctx context.Context, tenant *mailbusv1.Tenant, d *mailbusv1.Delivery, res *Result) error {
	excl := d.GetExcludedRelayIds()
	if p.health == nil || len(excl) == 0 || len(tenant.GetAdminEmails()) == 0 || isNotice(d) {
		return nil
	}
	relayID := excl[len(excl)-1]
	if !p.health.Disabled(ctx, tenant, relayID) {
		return nil
	}
	name := relayID
	for _, r := range p.cfg.Relays(tenant.GetId()) {
		if r.GetId() == relayID && r.GetName() != "" {
			name = r.GetName()
		}
	}
	now := p.opts.Now()
	loc := limits.Zone(tenant.GetTimeZone())
	day := limits.DayKey(now, loc)
	from := tenant.GetDefaultFrom() + "@" + tenant.GetDomainAlias()
	sub := &mailbusv1.Submission{
		IdempotencyId: RelayDisabledIdempotencyID(relayID, day), TenantId: tenant.GetId(),
		Kind:     mailbusv1.EmailKind_EMAIL_KIND_SYSTEM,
		From:     &mailbusv1.Address{Name: "mailbus", Email: from},
		Subject:  fmt.Sprintf("Relay %s is disabled until tomorrow", name),
		Metadata: map[string]string{NoticeKey: NoticeRelayDisabled, "relay_id": relayID, "day": day},
		TextBody: fmt.Sprintf("The relay server %s (%s) of %s failed several times in a row on %s and is not used again until midnight (%s).\n\n"+
			"Mail that would have left through it goes through the next eligible relay or the platform's default server meanwhile.\n"+
			"Check the relay's host, credentials and limits, and test it with the relay test before the next day begins.\n",
			name, relayID, tenant.GetName(), day, loc),
	}
	for _, a := range tenant.GetAdminEmails() {
		sub.To = append(sub.To, &mailbusv1.Address{Email: strings.TrimSpace(a)})
	}
	notice, err := p.Plan(ctx, sub, "")
	if err != nil {
		return fmt.Errorf("plan the notice that relay %s is disabled: %w", relayID, err)
	}
	res.Deliveries = append(res.Deliveries, notice.Deliveries...)
	res.Events = append(res.Events, notice.Events...)
	return nil
}
