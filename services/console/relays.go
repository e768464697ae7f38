package console

import (
	"context"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/limits"
)

// relayRow is one relay on the relays page, with what the message log
// says about it today.
type relayRow struct {
	Relay *mailbusv1.Relay
	// SentToday counts the recipients sent through the relay since the
	// tenant's midnight.
	SentToday int64
	// UsagePercent is SentToday against the daily limit, capped at 100.
	UsagePercent int
	// DisabledUntil is set when the relay failed three times in a row
	// today: the router's notice to the administrators is in the log.
	DisabledUntil time.Time
	// Failures are the latest recipients that failed, bounced or were
	// deferred on the relay, newest first.
	Failures []*relayFailure
}

// relayFailure is one thing that went wrong on a relay: a recipient it
// refused or deferred, or an attempt that failed on the relay itself
// (connection, TLS, authentication) and fell back.
type relayFailure struct {
	MessageID string
	Who       string
	Status    mailbusv1.DeliveryStatus
	Reason    string
	// Words are the server's reply, or the error when there was none.
	Words string
	When  time.Time
}

// historyScan is how many of today's newest messages the relays page
// reads the history of, for relay failures.
const historyScan = 50

type relaysData struct {
	Rows    []*relayRow
	Zone    string
	Scanned int
	Partial bool
}

func (q *req) relays() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	if tenant == nil {
		q.render(http.StatusOK, "relays", "Relays", "relays", relaysData{}, errNoTenant)
		return nil
	}
	ctx, cancel := q.call()
	defer cancel()
	resp, err := q.s.api.Config.ListRelays(ctx, &mailbusv1.ListRelaysRequest{TenantId: tenant.GetId(), PageSize: 500})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		q.render(http.StatusOK, "relays", "Relays", "relays", relaysData{}, err)
		return nil
	}
	loc := limits.Zone(tenant.GetTimeZone())
	now := q.s.now()
	data := relaysData{Zone: loc.String()}
	byID := map[string]*relayRow{}
	for _, r := range resp.GetRelays() {
		row := &relayRow{Relay: r}
		byID[r.GetId()] = row
		data.Rows = append(data.Rows, row)
		// The router mails the tenant's administrators once per relay and
		// day when a relay is disabled; the notice's message id derives
		// from the relay and the day, so finding it finds the state. (The
		// id is the router's plan.RelayDisabledIdempotencyID, which is
		// internal to it; TestConsole_showsARelayDisabledAfterThreeFailures
		// keeps the two in step.) A tenant without admin_emails gets no
		// notice, and the page cannot tell.
		day := limits.DayKey(now, loc)
		notice := ids.MessageID(tenant.GetId(), "relay-disabled/"+r.GetId()+"/"+day)
		if _, err := q.s.api.Messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: notice}); err == nil {
			row.DisabledUntil = limits.NextMidnight(now, loc)
		}
	}
	// Today's usage and failures come from the message log.
	midnight := limits.NextMidnight(now, loc).AddDate(0, 0, -1)
	msgs, scanned, partial, err := q.scanMessages(&mailbusv1.ListMessagesRequest{
		TenantId: tenant.GetId(), StartTime: timestamppb.New(midnight),
	}, nil, 0)
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	data.Scanned, data.Partial = scanned, partial
	for _, m := range msgs {
		for _, rc := range m.GetRecipients() {
			row := byID[rc.GetRelayId()]
			if row == nil {
				continue
			}
			switch rc.GetStatus() {
			case mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT:
				row.SentToday++
			case mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED, mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
				mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED:
				row.Failures = append(row.Failures, &relayFailure{
					MessageID: m.GetId(), Who: rc.GetAddress(), Status: rc.GetStatus(), Reason: rc.GetReason(),
					Words: orDash(replyText(rc.GetReply()), rc.GetDetail()), When: rc.GetUpdateTime().AsTime(),
				})
			}
		}
	}
	// A failure of the relay itself (refused connection, TLS, AUTH) sends
	// the delivery elsewhere, so the recipient's state no longer names the
	// relay: it is in the message's history. The newest messages' histories
	// are read for it.
	for _, m := range msgs[:min(len(msgs), historyScan)] {
		full, err := q.s.api.Messages.GetMessage(ctx, &mailbusv1.GetMessageRequest{Id: m.GetId()})
		if err != nil {
			continue
		}
		for _, ev := range full.GetMessage().GetHistory() {
			row := byID[ev.GetRelayId()]
			if row == nil || ev.GetReason() != "relay_failed" {
				continue
			}
			row.Failures = append(row.Failures, &relayFailure{
				MessageID: m.GetId(), Who: strings.Join(ev.GetRecipients(), ", "), Status: ev.GetStatus(), Reason: ev.GetReason(),
				Words: orDash(replyText(ev.GetReply()), ev.GetDetail()), When: ev.GetOccurTime().AsTime(),
			})
		}
	}
	for _, row := range data.Rows {
		if l := row.Relay.GetDailyLimit(); l > 0 {
			row.UsagePercent = int(min(100, row.SentToday*100/l))
		}
		sort.Slice(row.Failures, func(i, j int) bool { return row.Failures[i].When.After(row.Failures[j].When) })
		if len(row.Failures) > 3 {
			row.Failures = row.Failures[:3]
		}
	}
	q.render(http.StatusOK, "relays", "Relays", "relays", data, err)
	return nil
}

type relayFormData struct {
	New     bool
	Relay   *mailbusv1.Relay
	Domains []string
	Kinds   []mailbusv1.EmailKind
	Test    *mailbusv1.TestRelayResponse
	TestErr *apiError
	SendTo  string
	// Inline says the test was of the form's settings, not the stored relay.
	Inline bool
}

var allKinds = []mailbusv1.EmailKind{
	mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW, mailbusv1.EmailKind_EMAIL_KIND_MASS, mailbusv1.EmailKind_EMAIL_KIND_INDIVIDUAL,
	mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL, mailbusv1.EmailKind_EMAIL_KIND_SYSTEM,
}

func (q *req) tenantDomains(ctx context.Context, tenantID string) []string {
	resp, err := q.s.api.Config.ListDomains(ctx, &mailbusv1.ListDomainsRequest{TenantId: tenantID, PageSize: 500})
	if err != nil {
		return nil
	}
	var out []string
	for _, d := range resp.GetDomains() {
		out = append(out, d.GetName())
	}
	return out
}

func (q *req) relayForm() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	d := relayFormData{Kinds: allKinds, Domains: q.tenantDomains(ctx, tenant.GetId())}
	id := q.r.PathValue("id")
	if id == "" {
		d.New = true
		d.Relay = &mailbusv1.Relay{Port: 587, Security: mailbusv1.RelaySecurity_RELAY_SECURITY_STARTTLS, Active: true,
			Priority: 10, Auth: &mailbusv1.RelayAuth{Mechanism: mailbusv1.AuthMechanism_AUTH_MECHANISM_PLAIN}}
		q.render(http.StatusOK, "relay", "New relay", "relays", d, nil)
		return nil
	}
	resp, err := q.s.api.Config.GetRelay(ctx, &mailbusv1.GetRelayRequest{Id: id})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		q.render(http.StatusNotFound, "relay", "Relay", "relays", d, err)
		return nil
	}
	d.Relay = resp.GetRelay()
	q.render(http.StatusOK, "relay", "Relay "+d.Relay.GetName(), "relays", d, nil)
	return nil
}

// relayFromForm reads the form into a Relay as the API takes it; numbers
// that do not parse are sent as the API's own zero so that its validation
// message (not a second one written here) tells the person what is wrong.
func relayFromForm(r *http.Request, tenantID string) *mailbusv1.Relay {
	f := r.PostForm
	num := func(name string) int64 { n, _ := strconv.ParseInt(strings.TrimSpace(f.Get(name)), 10, 64); return n }
	rate, _ := strconv.ParseFloat(strings.TrimSpace(f.Get("rate_per_second")), 64)
	rl := &mailbusv1.Relay{
		Id: strings.TrimSpace(f.Get("id")), TenantId: tenantID, Name: f.Get("name"), Host: strings.TrimSpace(f.Get("host")),
		Port: int32(num("port")), Security: mailbusv1.RelaySecurity(mailbusv1.RelaySecurity_value[f.Get("security")]),
		SkipCertVerify: f.Get("skip_cert_verify") == "on", FromFilter: strings.TrimSpace(f.Get("from_filter")),
		Priority: int32(num("priority")), DailyLimit: num("daily_limit"), RatePerSecond: rate,
		MaxConnections: int32(num("max_connections")), Active: f.Get("active") == "on",
		AllowPlaintextAuth: f.Get("allow_plaintext_auth") == "on",
		Auth: &mailbusv1.RelayAuth{
			Mechanism: mailbusv1.AuthMechanism(mailbusv1.AuthMechanism_value[f.Get("auth_mechanism")]),
			Username:  strings.TrimSpace(f.Get("username")), Password: f.Get("password"), OauthToken: f.Get("oauth_token"),
		},
	}
	for _, k := range f["kinds"] {
		rl.Kinds = append(rl.Kinds, mailbusv1.EmailKind(mailbusv1.EmailKind_value[k]))
	}
	rl.Domains = append(rl.Domains, f["domains"]...)
	return rl
}

// relaySave creates or updates a relay; a refusal shows the form again
// with the API's messages next to their fields.
func (q *req) relaySave() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	id := q.r.PathValue("id")
	rl := relayFromForm(q.r, tenant.GetId())
	var saved *mailbusv1.Relay
	if id == "" {
		var resp *mailbusv1.CreateRelayResponse
		if resp, err = q.s.api.Config.CreateRelay(ctx, &mailbusv1.CreateRelayRequest{Relay: rl}); err == nil {
			saved = resp.GetRelay()
		}
	} else {
		rl.Id = id
		var resp *mailbusv1.UpdateRelayResponse
		if resp, err = q.s.api.Config.UpdateRelay(ctx, &mailbusv1.UpdateRelayRequest{Relay: rl}); err == nil {
			saved = resp.GetRelay()
		}
	}
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		// Secrets are never echoed back into the page.
		rl.Auth.Password, rl.Auth.OauthToken = "", ""
		d := relayFormData{New: id == "", Relay: rl, Kinds: allKinds, Domains: q.tenantDomains(ctx, tenant.GetId())}
		q.render(http.StatusUnprocessableEntity, "relay", "Relay", "relays", d, err)
		return nil
	}
	return q.redirect("/relays", "Relay "+saved.GetName()+" saved.", true)
}

// relayTest runs TestRelay on a stored relay and shows its steps in the
// server's own words.
func (q *req) relayTest() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	// The config service bounds a test itself (RelayTestTimeout).
	ctx, cancel := context.WithTimeout(q.r.Context(), 2*time.Minute)
	defer cancel()
	ctx = outgoing(ctx, q.ss)
	id := q.r.PathValue("id")
	d := relayFormData{Kinds: allKinds, Domains: q.tenantDomains(ctx, tenant.GetId()), SendTo: strings.TrimSpace(q.r.PostFormValue("send_to"))}
	resp, err := q.s.api.Config.GetRelay(ctx, &mailbusv1.GetRelayRequest{Id: id})
	if err != nil {
		if status.Code(err) == codes.Unauthenticated {
			return err
		}
		q.render(http.StatusNotFound, "relay", "Relay", "relays", d, err)
		return nil
	}
	d.Relay = resp.GetRelay()
	d.Test, err = q.s.api.Config.TestRelay(ctx, &mailbusv1.TestRelayRequest{RelayId: id, SendTo: d.SendTo})
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	d.TestErr = toAPIError(err)
	q.render(http.StatusOK, "relay", "Relay "+d.Relay.GetName(), "relays", d, nil)
	return nil
}

// relayTestInline tests the settings in the relay form before they are
// saved. The config service uses the secrets typed into the form, never
// stored ones (which would otherwise go to a host of the caller's
// choosing), so an edited relay's password must be typed again to test
// AUTH. The form comes back with its values and the steps; secrets are
// never echoed.
func (q *req) relayTestInline() error {
	_, tenant, err := q.tenants()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(q.r.Context(), 2*time.Minute)
	defer cancel()
	ctx = outgoing(ctx, q.ss)
	editing := strings.TrimSpace(q.r.PostFormValue("editing"))
	rl := relayFromForm(q.r, tenant.GetId())
	if editing != "" {
		rl.Id = editing
	}
	d := relayFormData{New: editing == "", Kinds: allKinds, Domains: q.tenantDomains(ctx, tenant.GetId()), Inline: true}
	test := proto.Clone(rl).(*mailbusv1.Relay)
	test.Id = ""
	d.Test, err = q.s.api.Config.TestRelay(ctx, &mailbusv1.TestRelayRequest{Relay: test})
	if status.Code(err) == codes.Unauthenticated {
		return err
	}
	d.TestErr = toAPIError(err)
	rl.Auth.Password, rl.Auth.OauthToken = "", ""
	d.Relay = rl
	q.render(http.StatusOK, "relay", "Relay", "relays", d, nil)
	return nil
}
