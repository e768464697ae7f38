// Package route decides how a delivery leaves mailbus, the way CRM relay
// products define it for their administrators:
//
//  1. Eligible relays are the tenant's relays that are active, serve the
//     submission's kind (no kinds = all kinds), are configured for the
//     sender's domain (no domains = every domain of the tenant), are not
//     disabled for today and were not excluded by an earlier failure or
//     exhausted limit of this delivery.
//  2. Among them, a relay whose From filter is the exact From address wins
//     over one whose filter is the From domain, which wins over one with an
//     empty filter. Within a class the lowest priority number wins; ties go
//     to the lowest relay id, so every replica decides the same way.
//  3. When relays are eligible but none accepts the From, the best of them
//     by priority carries the message and From is rewritten to the tenant's
//     {default_from}@{domain_alias} so the relay and DMARC accept it.
//  4. When no relay is eligible for the sender's domain, relays configured
//     for the alias domain are tried with the rewritten From; failing that
//     the platform's default server carries the message. The default server
//     accepts any From of the tenant's own domains; a From outside them is
//     rewritten so that DKIM can sign for the alias domain.
//  5. A request marked DefaultOnly (mailbus's own notices) goes straight to
//     the default server.
package route

import (
	"cmp"
	"slices"
	"strings"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// Filter match classes, best first.
const (
	matchNone = iota
	matchAny
	matchDomain
	matchAddress
)

// Request is what the router knows about a delivery when it picks a route.
type Request struct {
	Tenant *mailbusv1.Tenant
	Kind   mailbusv1.EmailKind
	// From is the addr-spec the producer asked for.
	From string
	// TenantDomain reports whether a (lower-case) domain is one of the
	// tenant's configured sender domains.
	TenantDomain func(domain string) bool
	// Relays are the tenant's relays.
	Relays []*mailbusv1.Relay
	// Excluded relays failed or were exhausted for this delivery.
	Excluded []string
	// Disabled reports whether a relay is disabled for today.
	Disabled func(relayID string) bool
	// Default is the platform's default server; nil means none configured.
	Default *mailbusv1.DefaultServer
	// DefaultOnly skips the tenant's relays: mailbus's own notices (a relay
	// was disabled) must not depend on the relays they warn about.
	DefaultOnly bool
}

// Decision is the chosen route.
type Decision struct {
	Kind mailbusv1.RouteKind
	// Relay is the chosen tenant relay (ROUTE_KIND_RELAY) or the default
	// system relay (ROUTE_KIND_DEFAULT_RELAY); nil for direct MX.
	Relay *mailbusv1.Relay
	// HeaderFrom is the From address the message leaves with.
	HeaderFrom string
	// Rewritten is true when HeaderFrom differs from the requested From.
	Rewritten bool
	// DKIMDomain is the domain whose keys sign the message.
	DKIMDomain string
	// Reason explains the decision for the message log.
	Reason string
}

// Decide picks the route for req. ok is false only when nothing at all can
// carry the message (no eligible relay and no default server).
func Decide(req Request) (Decision, bool) {
	from := strings.ToLower(req.From)
	fromDomain := domainOf(from)
	alias := aliasAddress(req.Tenant)

	var candidates []*mailbusv1.Relay
	if !req.DefaultOnly {
		candidates = eligible(req, fromDomain)
	}
	if best, class := bestMatch(candidates, from); best != nil {
		return Decision{
			Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, Relay: best, HeaderFrom: req.From,
			DKIMDomain: fromDomain, Reason: "relay " + relayName(best) + " " + classReason(class),
		}, true
	}
	if len(candidates) > 0 && alias != "" {
		best := candidates[0] // sorted by priority, then id
		return Decision{
			Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, Relay: best, HeaderFrom: alias, Rewritten: true,
			DKIMDomain: domainOf(alias),
			Reason: "no eligible relay accepts From " + req.From + "; relay " + relayName(best) +
				" carries it with From rewritten to " + alias,
		}, true
	}
	if alias != "" && domainOf(alias) != fromDomain && !req.DefaultOnly {
		aliasCandidates := eligible(req, domainOf(alias))
		if best, _ := bestMatch(aliasCandidates, alias); best != nil {
			return Decision{
				Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, Relay: best, HeaderFrom: alias, Rewritten: true,
				DKIMDomain: domainOf(alias),
				Reason: "no eligible relay for " + fromDomain + "; relay " + relayName(best) +
					" of the alias domain carries it with From rewritten to " + alias,
			}, true
		}
	}
	if req.Default == nil || req.Default.GetMode() == mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_UNSPECIFIED {
		return Decision{Reason: "no eligible relay for " + req.From + " and no default server configured"}, false
	}
	d := Decision{HeaderFrom: req.From, DKIMDomain: fromDomain}
	if !req.isTenantDomain(fromDomain) && alias != "" {
		d.HeaderFrom, d.Rewritten, d.DKIMDomain = alias, true, domainOf(alias)
	}
	why := "no eligible relay"
	if len(req.Excluded) > 0 {
		why = "no eligible relay left after " + strings.Join(req.Excluded, ", ")
	}
	switch req.Default.GetMode() {
	case mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY:
		d.Kind, d.Relay = mailbusv1.RouteKind_ROUTE_KIND_DEFAULT_RELAY, req.Default.GetRelay()
		d.Reason = why + "; the default system relay carries it"
	default:
		d.Kind = mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX
		d.Reason = why + "; delivered directly to the recipient's MX"
	}
	if d.Rewritten {
		d.Reason += " with From rewritten to " + d.HeaderFrom
	}
	return d, true
}

func (req Request) isTenantDomain(d string) bool {
	return req.TenantDomain != nil && req.TenantDomain(d)
}

// eligible returns the relays that may carry mail from domain, best
// priority first.
func eligible(req Request, domain string) []*mailbusv1.Relay {
	var out []*mailbusv1.Relay
	for _, r := range req.Relays {
		switch {
		case !r.GetActive():
		case req.Tenant != nil && r.GetTenantId() != req.Tenant.GetId():
		case len(r.GetKinds()) > 0 && !slices.Contains(r.GetKinds(), req.Kind):
		case len(r.GetDomains()) > 0 && !containsFold(r.GetDomains(), domain):
		case len(r.GetDomains()) == 0 && !req.isTenantDomain(domain):
		case slices.Contains(req.Excluded, r.GetId()):
		case req.Disabled != nil && req.Disabled(r.GetId()):
		default:
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *mailbusv1.Relay) int {
		return cmp.Or(cmp.Compare(a.GetPriority(), b.GetPriority()), cmp.Compare(a.GetId(), b.GetId()))
	})
	return out
}

// bestMatch returns the best relay whose From filter accepts from, with its
// match class. relays must be sorted by priority.
func bestMatch(relays []*mailbusv1.Relay, from string) (*mailbusv1.Relay, int) {
	var best *mailbusv1.Relay
	bestClass := matchNone
	for _, r := range relays {
		if c := filterClass(r.GetFromFilter(), from); c > bestClass {
			best, bestClass = r, c
		}
	}
	return best, bestClass
}

// filterClass says how a From filter (an address, a domain or empty)
// accepts a lower-case From address.
func filterClass(filter, from string) int {
	filter = strings.ToLower(strings.TrimSpace(filter))
	switch {
	case filter == "":
		return matchAny
	case strings.Contains(filter, "@"):
		if filter == from {
			return matchAddress
		}
	case filter == domainOf(from):
		return matchDomain
	}
	return matchNone
}

func classReason(c int) string {
	switch c {
	case matchAddress:
		return "matches the From address"
	case matchDomain:
		return "matches the From domain"
	default:
		return "accepts any From"
	}
}

func aliasAddress(t *mailbusv1.Tenant) string {
	if t.GetDefaultFrom() == "" || t.GetDomainAlias() == "" {
		return ""
	}
	return strings.ToLower(t.GetDefaultFrom() + "@" + t.GetDomainAlias())
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func relayName(r *mailbusv1.Relay) string {
	if r.GetName() != "" {
		return r.GetName()
	}
	return r.GetId()
}
