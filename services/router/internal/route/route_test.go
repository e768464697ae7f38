package route

import (
	"slices"
	"strings"
	"testing"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

const (
	workflow = mailbusv1.EmailKind_EMAIL_KIND_WORKFLOW
	mass     = mailbusv1.EmailKind_EMAIL_KIND_MASS
)

func relay(id string, prio int32, filter string, mod ...func(*mailbusv1.Relay)) *mailbusv1.Relay {
	r := &mailbusv1.Relay{Id: id, Name: id, TenantId: "acme", Priority: prio, FromFilter: filter, Active: true}
	for _, m := range mod {
		m(r)
	}
	return r
}

func kinds(k ...mailbusv1.EmailKind) func(*mailbusv1.Relay) {
	return func(r *mailbusv1.Relay) { r.Kinds = k }
}
func domains(d ...string) func(*mailbusv1.Relay) {
	return func(r *mailbusv1.Relay) { r.Domains = d }
}
func inactive(r *mailbusv1.Relay) { r.Active = false }

var tenant = &mailbusv1.Tenant{Id: "acme", DefaultFrom: "noreply", DomainAlias: "mail.platform.test"}

func TestDecide(t *testing.T) {
	directMX := &mailbusv1.DefaultServer{Mode: mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX}
	sysRelay := &mailbusv1.DefaultServer{Mode: mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY,
		Relay: &mailbusv1.Relay{Id: "system", Host: "smtp.platform.test", Port: 587}}
	tests := []struct {
		name        string
		req         Request
		wantKind    mailbusv1.RouteKind
		wantRelay   string
		wantFrom    string
		wantDKIM    string
		wantRewrite bool
	}{
		{
			name: "lowest priority number wins among equal filters",
			req: Request{From: "bob@acme.example", Relays: []*mailbusv1.Relay{
				relay("r2", 20, ""), relay("r1", 10, ""), relay("r3", 30, "")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "r1", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "priority ties are broken by relay id",
			req: Request{From: "bob@acme.example", Relays: []*mailbusv1.Relay{
				relay("rb", 10, ""), relay("ra", 10, "")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "ra", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "exact address filter beats domain filter beats empty filter regardless of priority",
			req: Request{From: "News@Acme.example", Relays: []*mailbusv1.Relay{
				relay("any", 1, ""), relay("dom", 2, "acme.example"), relay("addr", 3, "news@acme.example")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "addr", wantFrom: "News@Acme.example", wantDKIM: "acme.example",
		},
		{
			name: "domain filter beats empty filter",
			req: Request{From: "bob@acme.example", Relays: []*mailbusv1.Relay{
				relay("any", 1, ""), relay("dom", 2, "acme.example"), relay("addr", 3, "news@acme.example")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "dom", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "relay not serving the kind is skipped",
			req: Request{From: "bob@acme.example", Kind: mass, Relays: []*mailbusv1.Relay{
				relay("wf", 1, "", kinds(workflow)), relay("bulk", 5, "", kinds(mass))}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "bulk", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "inactive, excluded and disabled relays are skipped",
			req: Request{From: "bob@acme.example", Excluded: []string{"failed"},
				Disabled: func(id string) bool { return id == "off-today" },
				Relays: []*mailbusv1.Relay{relay("off", 1, "", inactive), relay("failed", 2, ""),
					relay("off-today", 3, ""), relay("ok", 4, "")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "ok", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "relay configured for another domain is skipped",
			req: Request{From: "bob@acme.example", TenantDomain: domainsOf("acme.example", "other.example"),
				Relays: []*mailbusv1.Relay{relay("other", 1, "", domains("other.example")), relay("mine", 2, "", domains("acme.example"))}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "mine", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name: "rewrites From when no eligible relay's filter accepts it",
			req: Request{From: "bob@acme.example", Relays: []*mailbusv1.Relay{
				relay("news", 2, "news@acme.example"), relay("sales", 1, "sales@acme.example")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "sales", wantFrom: "noreply@mail.platform.test",
			wantDKIM: "mail.platform.test", wantRewrite: true,
		},
		{
			name: "falls to the default system relay when every relay is excluded",
			req: Request{From: "bob@acme.example", Excluded: []string{"r1"}, Default: sysRelay,
				Relays: []*mailbusv1.Relay{relay("r1", 1, "")}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_DEFAULT_RELAY, wantRelay: "system", wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name:     "falls to direct MX delivery when the default server is direct",
			req:      Request{From: "bob@acme.example", Default: directMX},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX, wantFrom: "bob@acme.example", wantDKIM: "acme.example",
		},
		{
			name:     "a From outside the tenant's domains is rewritten on the default server",
			req:      Request{From: "bob@gmail.example", Default: directMX},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX, wantFrom: "noreply@mail.platform.test",
			wantDKIM: "mail.platform.test", wantRewrite: true,
		},
		{
			name: "a relay of the alias domain carries a From outside the tenant's domains",
			req: Request{From: "bob@gmail.example", Default: directMX, TenantDomain: domainsOf("acme.example", "mail.platform.test"),
				Relays: []*mailbusv1.Relay{relay("alias", 1, "", domains("mail.platform.test"))}},
			wantKind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, wantRelay: "alias", wantFrom: "noreply@mail.platform.test",
			wantDKIM: "mail.platform.test", wantRewrite: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Tenant = tenant
			if tt.req.Kind == 0 {
				tt.req.Kind = workflow
			}
			if tt.req.TenantDomain == nil {
				tt.req.TenantDomain = domainsOf("acme.example")
			}
			d, ok := Decide(tt.req)
			if !ok {
				t.Fatalf("no route: %s", d.Reason)
			}
			if d.Kind != tt.wantKind {
				t.Errorf("kind = %v, want %v (%s)", d.Kind, tt.wantKind, d.Reason)
			}
			if got := d.Relay.GetId(); got != tt.wantRelay {
				t.Errorf("relay = %q, want %q (%s)", got, tt.wantRelay, d.Reason)
			}
			if d.HeaderFrom != tt.wantFrom || d.Rewritten != tt.wantRewrite || d.DKIMDomain != tt.wantDKIM {
				t.Errorf("from = %q rewritten=%v dkim=%q, want %q %v %q", d.HeaderFrom, d.Rewritten, d.DKIMDomain,
					tt.wantFrom, tt.wantRewrite, tt.wantDKIM)
			}
			if d.Reason == "" {
				t.Error("decision has no reason for the message log")
			}
		})
	}
}

func TestDecide_failsWithReasonWhenNothingCanCarryTheMessage(t *testing.T) {
	d, ok := Decide(Request{Tenant: tenant, From: "bob@acme.example", Kind: workflow, TenantDomain: domainsOf("acme.example")})
	if ok {
		t.Fatalf("expected no route, got %+v", d)
	}
	if !strings.Contains(d.Reason, "no default server") {
		t.Fatalf("reason %q does not say what is missing", d.Reason)
	}
}

func domainsOf(names ...string) func(string) bool {
	return func(d string) bool { return slices.Contains(names, d) }
}
