package plan

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/mail"
)

// memConfig is an in-memory plan.Config, the planner's own port: the
// configuration cache is not what these tests are about.
type memConfig struct {
	tenants map[string]*mailbusv1.Tenant
	domains map[string]*mailbusv1.Domain // by tenant/name
	relays  []*mailbusv1.Relay
	def     configclient.DefaultServer
}

func (c *memConfig) Tenant(id string) (*mailbusv1.Tenant, bool) { t, ok := c.tenants[id]; return t, ok }
func (c *memConfig) Domain(tenantID, name string) (*mailbusv1.Domain, bool) {
	d, ok := c.domains[tenantID+"/"+strings.ToLower(name)]
	return d, ok
}
func (c *memConfig) Relays(tenantID string) []*mailbusv1.Relay {
	var out []*mailbusv1.Relay
	for _, r := range c.relays {
		if r.GetTenantId() == tenantID {
			out = append(out, r)
		}
	}
	return out
}
func (c *memConfig) DefaultServer() configclient.DefaultServer { return c.def }

var verpKey = []byte("0123456789abcdef0123456789abcdef")

// newConfig is tenant acme with acme.example (VERP), fast.example (return
// path = From), custom.example (a custom return path), the alias domain
// mail.acme.example, one relay for acme.example and a direct-MX default.
func newConfig() *memConfig {
	c := &memConfig{
		tenants: map[string]*mailbusv1.Tenant{"acme": {
			Id: "acme", Name: "Acme", Active: true, DefaultFrom: "noreply", DomainAlias: "mail.acme.example",
			BounceDomain: "bounce.acme.example", TimeZone: "Europe/Berlin",
		}},
		domains: map[string]*mailbusv1.Domain{},
		relays: []*mailbusv1.Relay{{
			Id: "acme-relay", Name: "acme relay", TenantId: "acme", Active: true, Priority: 10,
			Domains: []string{"acme.example", "fast.example", "custom.example"}, FromFilter: "",
		}},
		def: configclient.DefaultServer{Mode: mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX},
	}
	for _, d := range []*mailbusv1.Domain{
		{Name: "acme.example", ReturnPathMode: mailbusv1.ReturnPathMode_RETURN_PATH_MODE_VERP},
		{Name: "fast.example", ReturnPathMode: mailbusv1.ReturnPathMode_RETURN_PATH_MODE_FROM},
		{Name: "custom.example", ReturnPathMode: mailbusv1.ReturnPathMode_RETURN_PATH_MODE_CUSTOM, CustomReturnPath: "bounces@custom.example"},
		{Name: "mail.acme.example", ReturnPathMode: mailbusv1.ReturnPathMode_RETURN_PATH_MODE_VERP},
	} {
		d.TenantId = "acme"
		c.domains["acme/"+d.Name] = d
	}
	return c
}

func newPlanner(c *memConfig) *Planner {
	now := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	return New(c, nil, nil, Options{VERPKey: verpKey, Now: func() time.Time { return now }})
}

func submission(from string, rcpts ...string) *mailbusv1.Submission {
	s := &mailbusv1.Submission{
		IdempotencyId: "order-" + from, TenantId: "acme", UserId: "u1", Kind: mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW,
		From: &mailbusv1.Address{Name: "Alice", Email: from}, Subject: "Hello", TextBody: "Hi.",
	}
	for _, r := range rcpts {
		s.To = append(s.To, &mailbusv1.Address{Email: r})
	}
	return s
}

func rcptList(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("r%03d@example.net", i)
	}
	return out
}

func plan(t *testing.T, p *Planner, sub *mailbusv1.Submission) Result {
	t.Helper()
	res, err := p.Plan(context.Background(), sub, "test/0/0")
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if len(res.Deliveries) == 0 {
		t.Fatalf("Plan made no delivery; events: %v", res.Events)
	}
	return res
}

func TestPlanner_VERPGivesOneDeliveryPerRecipientWithAVERPMailFromThatDecodes(t *testing.T) {
	rcpts := []string{"a@example.net", "b@example.org", "c@example.com"}
	res := plan(t, newPlanner(newConfig()), submission("alice@acme.example", rcpts...))
	if len(res.Deliveries) != len(rcpts) {
		t.Fatalf("%d deliveries for %d recipients with VERP; want one each", len(res.Deliveries), len(rcpts))
	}
	ids := map[string]bool{}
	for i, d := range res.Deliveries {
		env := d.GetEnvelope()
		if len(env.GetRcptTo()) != 1 || env.GetRcptTo()[0] != rcpts[i] {
			t.Errorf("delivery %d goes to %v, want [%s]", i, env.GetRcptTo(), rcpts[i])
		}
		if !strings.HasSuffix(env.GetMailFrom(), "@bounce.acme.example") {
			t.Errorf("MAIL FROM %q is not on the tenant's bounce domain", env.GetMailFrom())
		}
		id, hash, err := mail.VERPDecode(verpKey, "acme", env.GetMailFrom())
		if err != nil {
			t.Fatalf("VERPDecode(%q): %v", env.GetMailFrom(), err)
		}
		if id != d.GetDeliveryId() || hash != mail.RecipientHash(rcpts[i]) {
			t.Errorf("VERP of delivery %s names delivery %s and recipient hash %s; want %s", d.GetDeliveryId(), id, hash, mail.RecipientHash(rcpts[i]))
		}
		if ids[d.GetDeliveryId()] {
			t.Errorf("delivery id %s used twice", d.GetDeliveryId())
		}
		ids[d.GetDeliveryId()] = true
	}
	// A MAIL FROM signed with another key is refused: the token is
	// tamper-evident.
	if _, _, err := mail.VERPDecode([]byte("another key of sixteen+ octets"), "acme", res.Deliveries[0].GetEnvelope().GetMailFrom()); err == nil {
		t.Error("VERPDecode accepted a return path under another key")
	}
	// ...and it names the tenant: it is worthless as another tenant's.
	if _, _, err := mail.VERPDecode(verpKey, "globex", res.Deliveries[0].GetEnvelope().GetMailFrom()); err == nil {
		t.Error("VERPDecode accepted acme's return path as another tenant's")
	}
}

func TestPlanner_returnPathFollowsTheSenderDomainPolicy(t *testing.T) {
	tests := []struct {
		name, from, want string
		noBounceDomain   bool
	}{
		{name: "return path from uses the From address", from: "bob@fast.example", want: "bob@fast.example"},
		{name: "custom return path uses the configured address", from: "bob@custom.example", want: "bounces@custom.example"},
		{name: "VERP without a bounce domain falls back to the From address", from: "bob@acme.example", want: "bob@acme.example", noBounceDomain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newConfig()
			if tt.noBounceDomain {
				c.tenants["acme"].BounceDomain = ""
			}
			res := plan(t, newPlanner(c), submission(tt.from, "x@example.net", "y@example.net"))
			if len(res.Deliveries) != 1 {
				t.Fatalf("%d deliveries; without VERP both recipients share one envelope", len(res.Deliveries))
			}
			if got := res.Deliveries[0].GetEnvelope().GetMailFrom(); got != tt.want {
				t.Errorf("MAIL FROM = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPlanner_chunksEnvelopesAtFiftyRecipients(t *testing.T) {
	rcpts := rcptList(120)
	res := plan(t, newPlanner(newConfig()), submission("bob@fast.example", rcpts...))
	var sizes []int
	var all []string
	for _, d := range res.Deliveries {
		sizes = append(sizes, len(d.GetEnvelope().GetRcptTo()))
		all = append(all, d.GetEnvelope().GetRcptTo()...)
	}
	if !slices.Equal(sizes, []int{50, 50, 20}) {
		t.Errorf("envelope sizes %v, want [50 50 20]", sizes)
	}
	if !slices.Equal(all, rcpts) {
		t.Error("envelopes do not hold every recipient exactly once, in order")
	}
}

func TestPlanner_rewritesFromKeepingTheDisplayNameAndAddsReplyToAndRecordsItOnTheEvent(t *testing.T) {
	tests := []struct {
		name        string
		replyTo     string
		wantReplyTo string
	}{
		{name: "Reply-To is added with the original From", wantReplyTo: `"Alice" <alice@partner.example>`},
		{name: "an existing Reply-To is kept", replyTo: "desk@partner.example", wantReplyTo: "desk@partner.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newConfig()
			// The relay only takes acme.example's own senders, so a From of
			// a domain the tenant does not own must be rewritten.
			c.relays[0].FromFilter = "acme.example"
			sub := submission("alice@partner.example", "x@example.net")
			if tt.replyTo != "" {
				sub.ReplyTo = []*mailbusv1.Address{{Email: tt.replyTo}}
			}
			res := plan(t, newPlanner(c), sub)
			d := res.Deliveries[0]
			if !d.GetRoute().GetFromRewritten() || d.GetRoute().GetHeaderFrom() != "noreply@mail.acme.example" ||
				d.GetRoute().GetOriginalFrom() != "alice@partner.example" || d.GetRoute().GetDkimDomain() != "mail.acme.example" {
				t.Errorf("route = %v; want From rewritten to noreply@mail.acme.example, signed for mail.acme.example", d.GetRoute())
			}
			from, err := mail.HeaderFrom(d.GetMessage())
			if err != nil {
				t.Fatal(err)
			}
			// pkg/mail.RewriteFrom's documented style: "<name> (via <tenant>)".
			if from.Email != "noreply@mail.acme.example" || from.Name != "Alice (via Acme)" {
				t.Errorf("From = %q <%s>, want \"Alice (via Acme)\" <noreply@mail.acme.example>", from.Name, from.Email)
			}
			if got := headerValues(d.GetMessage(), "Reply-To"); len(got) != 1 || !strings.Contains(got[0], addrOf(tt.wantReplyTo)) {
				t.Errorf("Reply-To fields %q, want one naming %s", got, tt.wantReplyTo)
			}
			queued := res.Events[len(res.Events)-1]
			if queued.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_QUEUED ||
				queued.GetAttributes()["from_rewritten"] != "true" || queued.GetAttributes()["original_from"] != "alice@partner.example" {
				t.Errorf("queued event %v does not record the rewrite", queued)
			}
		})
	}
}

func TestPlanner_keepsFromWhenARelayAcceptsIt(t *testing.T) {
	res := plan(t, newPlanner(newConfig()), submission("alice@acme.example", "x@example.net"))
	d := res.Deliveries[0]
	if d.GetRoute().GetFromRewritten() || d.GetRoute().GetRelayId() != "acme-relay" {
		t.Errorf("route = %v, want acme-relay with the From as given", d.GetRoute())
	}
	if _, ok := res.Events[len(res.Events)-1].GetAttributes()["from_rewritten"]; ok {
		t.Error("event records a rewrite that did not happen")
	}
	if got := headerValues(d.GetMessage(), "Reply-To"); len(got) != 0 {
		t.Errorf("Reply-To %q added without a rewrite", got)
	}
}

func TestPlanner_rerouteGivesANewDeliveryIDWithoutTheFailedRelay(t *testing.T) {
	c := newConfig()
	c.relays = append(c.relays, &mailbusv1.Relay{Id: "backup", TenantId: "acme", Active: true, Priority: 20, Domains: []string{"fast.example"}})
	p := newPlanner(c)
	first := plan(t, p, submission("bob@fast.example", "x@example.net", "y@example.net")).Deliveries[0]
	if first.GetRoute().GetRelayId() != "acme-relay" {
		t.Fatalf("first route %v, want acme-relay", first.GetRoute())
	}

	failed := cloneWithExcluded(first, "acme-relay")
	res, err := p.Reroute(context.Background(), failed)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deliveries) != 1 {
		t.Fatalf("reroute made %d deliveries: %v", len(res.Deliveries), res.Events)
	}
	d := res.Deliveries[0]
	if want := first.GetDeliveryId() + ".r1"; d.GetDeliveryId() != want {
		t.Errorf("rerouted delivery id %s, want %s", d.GetDeliveryId(), want)
	}
	if d.GetRoute().GetRelayId() != "backup" {
		t.Errorf("rerouted to %v, want relay backup (acme-relay failed)", d.GetRoute())
	}
	if d.GetMessageId() != first.GetMessageId() || !slices.Equal(d.GetEnvelope().GetRcptTo(), first.GetEnvelope().GetRcptTo()) {
		t.Error("reroute changed the message or its recipients")
	}
	if ev := res.Events[0]; ev.GetAttributes()["previous_delivery_id"] != first.GetDeliveryId() || ev.GetReason() != "rerouted" {
		t.Errorf("reroute event %v does not name the previous delivery", ev)
	}

	// A redelivered fallback record plans the very same delivery.
	again, err := p.Reroute(context.Background(), cloneWithExcluded(first, "acme-relay"))
	if err != nil {
		t.Fatal(err)
	}
	if again.Deliveries[0].GetDeliveryId() != d.GetDeliveryId() || again.Deliveries[0].GetEnvelope().GetMailFrom() != d.GetEnvelope().GetMailFrom() {
		t.Errorf("redelivered fallback record planned %s, first time %s", again.Deliveries[0].GetDeliveryId(), d.GetDeliveryId())
	}

	// Both relays gone: the default server carries it, as a third id.
	third, err := p.Reroute(context.Background(), cloneWithExcluded(d, "backup"))
	if err != nil {
		t.Fatal(err)
	}
	if got := third.Deliveries[0]; got.GetDeliveryId() != first.GetDeliveryId()+".r2" ||
		got.GetRoute().GetKind() != mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX {
		t.Errorf("second reroute = %s via %v, want %s.r2 via direct MX", got.GetDeliveryId(), got.GetRoute().GetKind(), first.GetDeliveryId())
	}
}

// A delivery that a reroute split into several envelopes (the rewrite moved
// it onto a VERP domain) and that fails again must still get distinct ids:
// quota and the sender are idempotent on them, so a collision would drop
// mail.
func TestPlanner_rerouteOfSplitEnvelopesKeepsDeliveryIDsDistinct(t *testing.T) {
	c := newConfig()
	c.relays[0].Domains = []string{"fast.example"}
	c.relays = append(c.relays,
		&mailbusv1.Relay{Id: "alias-a", TenantId: "acme", Active: true, Priority: 1, Domains: []string{"mail.acme.example"}},
		&mailbusv1.Relay{Id: "alias-b", TenantId: "acme", Active: true, Priority: 2, Domains: []string{"mail.acme.example"}})
	p := newPlanner(c)
	first := plan(t, p, submission("bob@fast.example", "x@example.net", "y@example.net", "z@example.net")).Deliveries[0]
	if first.GetEnvelope().GetMailFrom() != "bob@fast.example" {
		t.Fatalf("first envelope %v, want one envelope with the From as return path", first.GetEnvelope())
	}
	res, err := p.Reroute(context.Background(), cloneWithExcluded(first, first.GetRoute().GetRelayId()))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deliveries) != 3 {
		t.Fatalf("reroute onto the VERP alias domain made %d deliveries, want 3", len(res.Deliveries))
	}
	seen := map[string]bool{first.GetDeliveryId(): true}
	var next []string
	for _, d := range res.Deliveries {
		again, err := p.Reroute(context.Background(), cloneWithExcluded(d, d.GetRoute().GetRelayId()))
		if err != nil {
			t.Fatal(err)
		}
		next = append(next, d.GetDeliveryId())
		for _, a := range again.Deliveries {
			next = append(next, a.GetDeliveryId())
		}
	}
	for _, id := range next {
		if seen[id] {
			t.Errorf("delivery id %s used twice across re-routes: %v", id, next)
		}
		seen[id] = true
	}
}

func cloneWithExcluded(d *mailbusv1.Delivery, relayID string) *mailbusv1.Delivery {
	c := proto.Clone(d).(*mailbusv1.Delivery)
	c.ExcludedRelayIds = append(c.ExcludedRelayIds, relayID)
	return c
}

// headerValues returns the unfolded values of a header field.
func headerValues(msg []byte, name string) []string {
	head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	head = strings.ReplaceAll(head, "\r\n ", " ")
	head = strings.ReplaceAll(head, "\r\n\t", " ")
	var out []string
	for _, line := range strings.Split(head, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(k, name) {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

func addrOf(s string) string {
	if i := strings.IndexByte(s, '<'); i >= 0 {
		return strings.TrimSuffix(s[i+1:], ">")
	}
	return s
}

// memSuppressions is an in-memory plan.Suppressions.
type memSuppressions map[string]string

func (m memSuppressions) SuppressedFor(_ context.Context, _ string, addrs []string, _ bool) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range addrs {
		if why, ok := m[strings.ToLower(a)]; ok {
			out[strings.ToLower(a)] = why
		}
	}
	return out, nil
}

func TestPlanner_dropsSuppressedRecipientsWithASuppressedEventBeforeRouting(t *testing.T) {
	p := New(newConfig(), memSuppressions{"gone@example.net": "hard bounce"}, nil, Options{VERPKey: verpKey})
	res := plan(t, p, submission("alice@acme.example", "Gone@example.net", "ok@example.net"))
	if len(res.Deliveries) != 1 || !slices.Equal(res.Deliveries[0].GetEnvelope().GetRcptTo(), []string{"ok@example.net"}) {
		t.Fatalf("deliveries %v, want one to ok@example.net", res.Deliveries)
	}
	e := res.Events[0]
	if e.GetStatus() != mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED || e.GetReason() != ReasonSuppressed ||
		!slices.Equal(e.GetRecipients(), []string{"Gone@example.net"}) {
		t.Errorf("first event %v, want suppressed for Gone@example.net", e)
	}
}

func mailHeaderFrom(d *mailbusv1.Delivery) (string, error) {
	a, err := mail.HeaderFrom(d.GetMessage())
	return a.Email, err
}

// A raw message's subject is only in its header; the message log shows it
// (mailbus messages list) as it shows a composed one's.
func TestPlanner_rawMessageSubjectReachesTheSummaryAndTheDelivery(t *testing.T) {
	sub := &mailbusv1.Submission{IdempotencyId: "raw-1", TenantId: "acme", Kind: mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW,
		To:         []*mailbusv1.Address{{Email: "bob@example.net"}},
		RawMessage: []byte("From: Alice <alice@acme.example>\r\nTo: bob@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from\r\n the raw side\r\n\r\nHi.\r\n")}
	res := plan(t, newPlanner(newConfig()), sub)
	want := "Grüße from the raw side"
	if got := res.Deliveries[0].GetSubject(); got != want {
		t.Errorf("delivery subject %q, want %q", got, want)
	}
	for _, e := range res.Events {
		if e.GetSummary() != nil && e.GetSummary().GetSubject() != want {
			t.Errorf("%v event summary subject %q, want %q", e.GetStatus(), e.GetSummary().GetSubject(), want)
		}
	}
}
