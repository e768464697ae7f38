// Package dnscheck looks up what a sender domain's mail needs from DNS on
// the path it really takes — the tenant's relays and the default server,
// the return path the router gives it, the keys the signer signs with, the
// From it leaves with — and says, per record, whether it is found, missing
// or wrong, and the exact record to publish. ConfigService.CheckDomain and
// the config service's periodic check (Monitor) both run Check; nothing
// else decides what a domain needs.
package dnscheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"
	"golang.org/x/net/publicsuffix"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/resolve"
)

// Item kinds.
const (
	KindSPF       = "spf"
	KindDKIM      = "dkim"
	KindDMARC     = "dmarc"
	KindAlignment = "dmarc_alignment"
	KindBounceMX  = "bounce_mx"
	KindPTR       = "ptr"
)

const (
	found   = pb.DnsCheckStatus_DNS_CHECK_STATUS_FOUND
	absent  = pb.DnsCheckStatus_DNS_CHECK_STATUS_MISSING
	wrong   = pb.DnsCheckStatus_DNS_CHECK_STATUS_WRONG
	envPTR  = "MAILBUS_SENDING_ADDRS"
	envBMX  = "MAILBUS_BOUNCE_MX_HOST"
	anyHost = "<the bounce service's host name>"
)

// Input is the configuration that decides a domain's mail path.
type Input struct {
	Domain *pb.Domain
	Tenant *pb.Tenant
	// Relays are the tenant's relays.
	Relays []*pb.Relay
	// Default is the platform's default server; nil when none is set.
	Default *pb.DefaultServer
	// Alias is the tenant's domain_alias domain when it is one of the
	// tenant's domains (its keys sign rewritten mail); nil otherwise.
	Alias *pb.Domain
}

// Options configure a Checker.
type Options struct {
	// Resolver asks the name servers; nil means /etc/resolv.conf's.
	Resolver *resolve.Resolver
	// BounceMXHost is the host the tenants' bounce domains' MX must point
	// at (the bounce service's public name); empty means unknown.
	BounceMXHost string
	// SendingAddrs are the addresses direct MX delivery leaves from, whose
	// PTR and forward DNS receivers check; empty means unknown.
	SendingAddrs []netip.Addr
}

// Checker runs checks.
type Checker struct{ opts Options }

// New returns a Checker.
func New(opts Options) *Checker {
	if opts.Resolver == nil {
		opts.Resolver = &resolve.Resolver{}
	}
	opts.BounceMXHost = resolve.HostName(opts.BounceMXHost)
	return &Checker{opts: opts}
}

// Key identifies an item across checks of the same domain ("spf acme.example").
func Key(it *pb.DnsCheckItem) string { return it.GetKind() + " " + it.GetName() }

// Result is a check's items and which of them could not be decided.
type Result struct {
	Items []*pb.DnsCheckItem
	// Inconclusive holds the keys of items whose status comes from a
	// failed lookup (a timeout, SERVFAIL) rather than from what DNS
	// says, and of the alignment items that depend on them: a monitor
	// keeps their last known status instead of warning.
	Inconclusive map[string]bool
}

// Check looks up everything in's domain needs and returns one item per record.
func (c *Checker) Check(ctx context.Context, in Input) Result {
	r := &run{c: c, res: c.opts.Resolver, in: in, spf: newSPFWalker(c.opts.Resolver),
		addrs: map[string][]netip.Addr{}, dkimOK: map[string]bool{}, spfOK: map[string]bool{},
		dmarc: map[string]*dmarc.Record{}, seen: map[string]bool{}, failed: map[string]bool{}}
	items := r.check(ctx)
	if len(r.failed) > 0 {
		for _, it := range items {
			if it.GetKind() == KindAlignment {
				r.failed[Key(it)] = true
			}
		}
	}
	return Result{Items: items, Inconclusive: r.failed}
}

type run struct {
	c   *Checker
	res *resolve.Resolver
	in  Input
	spf *spfWalker

	addrs  map[string][]netip.Addr
	dkimOK map[string]bool // From domain -> an active key's record is right
	spfOK  map[string]bool // return-path domain -> authorizes every sender
	dmarc  map[string]*dmarc.Record
	seen   map[string]bool
	failed map[string]bool // keys of items a lookup failure decided
	items  []*pb.DnsCheckItem
}

// lookupFailed marks it as decided by a failed lookup.
func (r *run) lookupFailed(it *pb.DnsCheckItem) { r.failed[Key(it)] = true }

// path is one way this domain's mail leaves: the From it carries, the
// return path and the servers it goes through.
type path struct {
	from      string
	cfg       *pb.Domain // the From domain's configuration (keys, return path); nil when not configured
	rp, rpHow string
	senders   []sender
	rewritten string // why From is rewritten; empty when it is not
}

func (r *run) add(it *pb.DnsCheckItem) {
	if r.seen[Key(it)] {
		return
	}
	r.seen[Key(it)] = true
	r.items = append(r.items, it)
}

func (r *run) check(ctx context.Context) []*pb.DnsCheckItem {
	dom := strings.ToLower(r.in.Domain.GetName())
	t := r.in.Tenant
	own := path{from: dom, cfg: r.in.Domain, senders: r.senders(eligible(r.in.Relays, dom))}
	own.rp, own.rpHow = returnPath(r.in.Domain, t, dom)
	paths := []path{own}
	rewriteWhy := rewriteFor(dom, t, r.in.Relays)
	if rewriteWhy != "" {
		alias := domainOf(aliasAddress(t))
		rw := path{from: alias, cfg: r.in.Alias, rewritten: rewriteWhy,
			senders: r.senders(append(eligible(r.in.Relays, dom), eligible(r.in.Relays, alias)...))}
		rw.rp, rw.rpHow = returnPath(r.in.Alias, t, alias)
		paths = append(paths, rw)
	}

	for _, p := range paths {
		r.add(r.spfItem(ctx, p.rp, p.senders, "return path ("+p.rpHow+")", true))
		if p.from != p.rp {
			r.add(r.spfItem(ctx, p.from, p.senders, "From domain", false))
		}
	}
	for _, p := range paths {
		r.dkimItems(ctx, p.from, p.cfg)
	}
	for _, p := range paths {
		r.add(r.dmarcItem(ctx, p.from))
	}
	for _, p := range paths {
		r.add(r.alignmentItem(p, rewriteWhy))
	}
	for _, p := range paths {
		if bd := strings.ToLower(t.GetBounceDomain()); bd != "" && p.rp == bd {
			r.add(r.bounceMXItem(ctx, bd))
		}
	}
	if r.in.Default.GetMode() == pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX {
		r.ptrItems(ctx)
	}
	return r.items
}

// SPF.

// sender is a server this domain's mail leaves through.
type sender struct {
	what    string
	host    string
	include string // the provider's SPF include, for well-known relays
	addrs   []netip.Addr
	fixed   bool // addrs are configured, not looked up
}

// providers maps well-known relay hosts (by suffix) to the include their
// operators document: their submission host's addresses are not the
// addresses their mail leaves from.
var providers = []struct{ suffix, include string }{
	{"smtp.gmail.com", "_spf.google.com"},
	{"smtp-relay.gmail.com", "_spf.google.com"},
	{"aspmx.l.google.com", "_spf.google.com"},
	{"smtp.office365.com", "spf.protection.outlook.com"},
	{".mail.protection.outlook.com", "spf.protection.outlook.com"},
	{"smtp-mail.outlook.com", "spf.protection.outlook.com"},
	{"sendgrid.net", "sendgrid.net"},
	{"mailgun.org", "mailgun.org"},
	{"amazonaws.com", "amazonses.com"},
	{"smtp.postmarkapp.com", "spf.mtasv.net"},
	{"smtp-relay.brevo.com", "spf.brevo.com"},
	{"smtp-relay.sendinblue.com", "spf.brevo.com"},
	{"smtp.sparkpostmail.com", "sparkpostmail.com"},
	{"smtp.mandrillapp.com", "spf.mandrillapp.com"},
	{"smtp.zoho.com", "zoho.com"},
	{"smtp.zoho.eu", "zoho.eu"},
}

func providerInclude(host string) string {
	for _, p := range providers {
		if host == strings.TrimPrefix(p.suffix, ".") || strings.HasSuffix(host, "."+strings.TrimPrefix(p.suffix, ".")) {
			return p.include
		}
	}
	return ""
}

// senders are the relays given and the default server.
func (r *run) senders(relays []*pb.Relay) []sender {
	var out []sender
	seen := map[string]bool{}
	for _, rl := range relays {
		h := resolve.HostName(rl.GetHost())
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		out = append(out, sender{what: "relay " + cmpOr(rl.GetName(), rl.GetId()) + " (" + h + ")", host: h, include: providerInclude(h)})
	}
	switch ds := r.in.Default; ds.GetMode() {
	case pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY:
		if h := resolve.HostName(ds.GetRelay().GetHost()); h != "" && !seen[h] {
			out = append(out, sender{what: "the default relay (" + h + ")", host: h, include: providerInclude(h)})
		}
	case pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX:
		if len(r.c.opts.SendingAddrs) > 0 {
			out = append(out, sender{what: "direct delivery", addrs: r.c.opts.SendingAddrs, fixed: true})
		} else if h := resolve.HostName(ds.GetHeloName()); h != "" {
			out = append(out, sender{what: "direct delivery (EHLO " + h + "; " + envPTR + " unset)", host: h})
		}
	}
	return out
}

func (r *run) hostAddrs(ctx context.Context, s sender) ([]netip.Addr, error) {
	if s.fixed {
		return s.addrs, nil
	}
	if a, ok := r.addrs[s.host]; ok {
		return a, nil
	}
	a, err := r.res.Addrs(ctx, s.host)
	if err == nil {
		r.addrs[s.host] = a
	}
	return a, err
}

// authorize returns the terms domain's record lacks for s, and notes.
func (r *run) authorize(ctx context.Context, domain string, s sender) (add, notes []string) {
	if s.include != "" {
		if !r.spf.reaches(ctx, domain, s.include, 0) {
			return []string{"include:" + s.include}, []string{s.what + " sends from the addresses of include:" + s.include + ", which the record does not reach"}
		}
		return nil, nil
	}
	addrs, err := r.hostAddrs(ctx, s)
	if err != nil {
		return nil, []string{fmt.Sprintf("%s: cannot look up its addresses: %v", s.what, err)}
	}
	if len(addrs) == 0 {
		return nil, []string{s.what + ": its host has no address, so the check cannot tell which addresses to authorize"}
	}
	var missed []string
	for _, a := range addrs {
		if res := r.spf.check(ctx, a, domain, 0); res != "pass" {
			mech := "ip4:"
			if a.Is6() {
				mech = "ip6:"
			}
			add = append(add, mech+a.String())
			missed = append(missed, a.String()+" ("+res+")")
		}
	}
	if len(missed) > 0 {
		notes = append(notes, s.what+" is not authorized: "+strings.Join(missed, ", "))
	}
	return add, notes
}

func (r *run) spfItem(ctx context.Context, domain string, senders []sender, role string, mustAuthorize bool) *pb.DnsCheckItem {
	it := &pb.DnsCheckItem{Kind: KindSPF, Name: domain}
	rec, err := r.spf.record(ctx, domain)
	if err != nil {
		if strings.Contains(err.Error(), "lookup for") {
			it.Status, it.Detail = absent, "SPF of the "+role+": could not look it up: "+err.Error()
			r.lookupFailed(it)
		} else {
			it.Status, it.Detail = wrong, "SPF of the "+role+": "+err.Error()
		}
		return it
	}
	var add, notes []string
	for _, s := range senders {
		a, n := r.authorize(ctx, domain, s)
		for _, t := range a {
			if !slices.Contains(add, t) {
				add = append(add, t)
			}
		}
		notes = append(notes, n...)
	}
	if rec == nil {
		it.Status, it.Detail = absent, "no SPF record at "+domain+", the "+role
		value := strings.Join(append(append([]string{"v=spf1"}, add...), "~all"), " ")
		it.Publish = dkimkey.ZoneTXT(domain, value)
		if !mustAuthorize {
			it.Advice = append(it.Advice, "receivers check the return path's SPF, not this one, for mailbus's mail; publish it for mail that leaves with this domain as return path")
		}
		return it
	}
	var problems []string
	n := r.spf.lookups(ctx, domain, 0, &problems)
	it.Status = found
	it.Detail = fmt.Sprintf("SPF of the %s: %q (%d DNS lookups)", role, rec.raw, n)
	var why []string
	if n > maxLookups {
		why = append(why, fmt.Sprintf("%d DNS lookups (include, a, mx, ptr, exists, redirect, counted through every include), over RFC 7208's limit of %d: receivers fail SPF (permerror)", n, maxLookups))
		it.Advice = append(it.Advice, "replace includes you control by the ip4:/ip6: ranges they list, or drop senders this domain no longer uses")
	}
	why = append(why, problems...)
	switch rec.allQualifier() {
	case '+':
		why = append(why, "+all authorizes every server on the Internet to send as "+domain)
	case '?':
		why = append(why, "?all makes every unlisted server neutral: it protects nothing")
	case '~':
		it.Advice = append(it.Advice, "~all: unlisted servers soft-fail; once every server that sends for "+domain+" is listed, -all lets receivers without DMARC reject forgeries")
	case '-':
	default:
		if rec.redirect == "" {
			it.Advice = append(it.Advice, "the record has no all: unlisted servers are neutral; end it with ~all or -all")
		}
	}
	for _, t := range rec.terms {
		if t.mechanism == "ptr" {
			it.Advice = append(it.Advice, "ptr is deprecated (RFC 7208 5.5), slow, and many receivers ignore it; use ip4:/ip6: instead")
			break
		}
	}
	if len(add) > 0 {
		if mustAuthorize {
			why = append(why, notes...)
			it.Publish = dkimkey.ZoneTXT(domain, withTerms(rec, add))
		} else {
			it.Advice = append(it.Advice, "the return path carries SPF for mailbus's mail; for mail that leaves with this domain as return path add "+strings.Join(add, " "))
		}
	} else if len(notes) > 0 {
		it.Advice = append(it.Advice, notes...)
	}
	if len(why) > 0 {
		it.Status = wrong
		it.Detail += ": " + strings.Join(why, "; ")
		if it.Publish == "" && rec.allQualifier() != 0 && rec.allQualifier() != '-' && rec.allQualifier() != '~' {
			it.Publish = dkimkey.ZoneTXT(domain, withTerms(rec, nil))
		}
	}
	if it.Status == found && mustAuthorize {
		r.spfOK[domain] = true
	}
	return it
}

// DKIM.

func (r *run) dkimItems(ctx context.Context, domain string, cfg *pb.Domain) {
	var active []*pb.DkimKey
	for _, k := range cfg.GetDkimKeys() {
		if k.GetActive() {
			active = append(active, k)
		}
	}
	if len(active) == 0 {
		it := &pb.DnsCheckItem{Kind: KindDKIM, Name: domain, Status: absent}
		if cfg == nil {
			it.Detail = domain + " is not one of the tenant's domains, so mailbus has no key to sign its mail with"
			it.Advice = []string{"add " + domain + " as a domain of the tenant and generate a DKIM key for it (GenerateDkimKey), then publish its record"}
		} else {
			it.Detail = "no active DKIM key: mailbus does not sign mail from " + domain
			it.Advice = []string{"generate a key (GenerateDkimKey) and publish the record `mailbus domains` prints"}
		}
		r.add(it)
		return
	}
	for _, k := range active {
		r.add(r.dkimItem(ctx, domain, k))
	}
}

func dkimTags(txt string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.ToLower(strings.TrimSpace(k))] = strings.Join(strings.Fields(v), "")
	}
	return tags
}

func (r *run) dkimItem(ctx context.Context, domain string, k *pb.DkimKey) *pb.DnsCheckItem {
	name := cmpOr(k.GetDnsName(), dkimkey.DNSName(k.GetSelector(), domain))
	it := &pb.DnsCheckItem{Kind: KindDKIM, Name: name, Publish: dkimkey.ZoneTXT(name, k.GetDnsTxtValue())}
	txts, err := r.res.TXT(ctx, name)
	switch {
	case err != nil && !missing(err):
		it.Status, it.Detail = absent, "could not look it up: "+err.Error()
		r.lookupFailed(it)
		return it
	case len(txts) == 0:
		it.Status, it.Detail = absent, "no TXT record at "+name+": receivers cannot verify signatures of selector "+k.GetSelector()
		return it
	case len(txts) > 1:
		it.Status, it.Detail = wrong, fmt.Sprintf("%d TXT records at %s; receivers need exactly one", len(txts), name)
		return it
	}
	want, got := dkimTags(k.GetDnsTxtValue()), dkimTags(txts[0])
	switch {
	case got["p"] == "":
		it.Status, it.Detail = wrong, fmt.Sprintf("%q has an empty or no p= (a revoked key): signatures of selector %s fail", txts[0], k.GetSelector())
	case got["p"] != want["p"]:
		it.Status, it.Detail = wrong, fmt.Sprintf("the record publishes another key (p=%s…), not the one mailbus signs with under selector %s (p=%s…): signatures fail", abbrev(got["p"]), k.GetSelector(), abbrev(want["p"]))
	case cmpOr(got["k"], "rsa") != want["k"]:
		it.Status, it.Detail = wrong, fmt.Sprintf("the record says k=%s but the key is %s", cmpOr(got["k"], "rsa"), want["k"])
	default:
		it.Status, it.Detail, it.Publish = found, "publishes the key mailbus signs with (selector "+k.GetSelector()+", "+want["k"]+")", ""
		r.dkimOK[domain] = true
	}
	return it
}

func abbrev(s string) string {
	if len(s) > 16 {
		return s[len(s)-16:]
	}
	return s
}

// DMARC.

func (r *run) dmarcRecord(ctx context.Context, domain string) (rec *dmarc.Record, raw string, status pb.DnsCheckStatus, detail string) {
	name := "_dmarc." + domain
	txts, err := r.res.TXT(ctx, name)
	if err != nil && !missing(err) {
		r.failed[KindDMARC+" _dmarc."+domain] = true
		return nil, "", absent, "could not look up " + name + ": " + err.Error()
	}
	var recs []string
	for _, t := range txts {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(t)), "v=dmarc1") {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return nil, "", absent, "no DMARC record at " + name
	case 1:
	default:
		return nil, "", wrong, fmt.Sprintf("%d DMARC records at %s; receivers then apply none", len(recs), name)
	}
	rec, err = dmarc.Parse(recs[0])
	if err != nil {
		return nil, recs[0], wrong, fmt.Sprintf("%q at %s does not parse: %v", recs[0], name, err)
	}
	return rec, recs[0], found, ""
}

func (r *run) dmarcItem(ctx context.Context, domain string) *pb.DnsCheckItem {
	it := &pb.DnsCheckItem{Kind: KindDMARC, Name: "_dmarc." + domain}
	rec, raw, status, detail := r.dmarcRecord(ctx, domain)
	policy := dmarc.Policy("")
	if rec != nil {
		policy = rec.Policy
		it.Detail = fmt.Sprintf("%q: policy %s", raw, rec.Policy)
	}
	if status == absent {
		if org := orgDomain(domain); org != domain {
			if orec, oraw, ostatus, _ := r.dmarcRecord(ctx, org); ostatus == found {
				rec, status = orec, found
				policy = cmpOr(orec.SubdomainPolicy, orec.Policy)
				it.Detail = fmt.Sprintf("no record at %s; the organizational domain's %q applies (policy %s for subdomains)", it.Name, oraw, policy)
			}
		}
	}
	it.Status = status
	if detail != "" && status != found {
		it.Detail = detail
	}
	if rec != nil {
		r.dmarc[domain] = &dmarc.Record{Policy: policy, DKIMAlignment: rec.DKIMAlignment, SPFAlignment: rec.SPFAlignment}
	}
	switch {
	case status == absent:
		it.Publish = dkimkey.ZoneTXT(it.Name, "v=DMARC1; p=none")
		it.Advice = append(it.Advice, "Gmail and Yahoo require a DMARC record from bulk senders; add rua=mailto:<address> to get aggregate reports, and move to p=quarantine or p=reject once they show all mail aligned")
	case status == found && policy == dmarc.PolicyNone:
		it.Advice = append(it.Advice, "p=none only monitors: forged mail is still delivered; move to p=quarantine or p=reject once reports show all mail aligned")
	}
	return it
}

// aligned reports whether a identifier domain aligns with the From domain:
// equal in strict mode, the same organizational domain in relaxed mode
// (RFC 7489 3.1).
func aligned(id, from string, mode dmarc.AlignmentMode) bool {
	if id == from {
		return true
	}
	return mode != dmarc.AlignmentStrict && orgDomain(id) == orgDomain(from)
}

func (r *run) alignmentItem(p path, rewriteWhy string) *pb.DnsCheckItem {
	it := &pb.DnsCheckItem{Kind: KindAlignment, Name: p.from}
	rec := r.dmarc[p.from]
	var aspf, adkim dmarc.AlignmentMode
	if rec != nil {
		aspf, adkim = rec.SPFAlignment, rec.DKIMAlignment
	}
	_ = adkim // the signer signs with d= the From domain itself, aligned in either mode
	dkimOK := r.dkimOK[p.from]
	spfAligned := aligned(p.rp, p.from, aspf)
	spfOK := spfAligned && r.spfOK[p.rp]

	var parts []string
	if p.rewritten != "" {
		parts = append(parts, "mail from "+r.in.Domain.GetName()+" leaves with From rewritten to "+aliasAddress(r.in.Tenant)+" ("+p.rewritten+")")
	}
	if dkimOK {
		parts = append(parts, "DKIM d="+p.from+" is aligned and its key is published")
	} else if len(p.cfg.GetDkimKeys()) == 0 {
		parts = append(parts, "no DKIM signature with d="+p.from+" (no key)")
	} else {
		parts = append(parts, "DKIM d="+p.from+" fails: its key's record is missing or wrong")
	}
	switch {
	case !spfAligned:
		parts = append(parts, "return path "+p.rp+" ("+p.rpHow+") is not aligned with "+p.from)
	case !r.spfOK[p.rp]:
		parts = append(parts, "return path "+p.rp+" is aligned but its SPF does not pass for every sender")
	default:
		parts = append(parts, "return path "+p.rp+" is aligned and its SPF passes")
	}
	it.Detail = strings.Join(parts, "; ")
	if dkimOK || spfOK {
		it.Status = found
		if p.rewritten == "" && rewriteWhy != "" {
			it.Advice = append(it.Advice, "some mail from "+p.from+" leaves with From rewritten to "+aliasAddress(r.in.Tenant)+" ("+rewriteWhy+"); see the "+domainOf(aliasAddress(r.in.Tenant))+" items")
		}
		return it
	}
	it.Status = wrong
	policy := dmarc.Policy("")
	if rec != nil {
		policy = rec.Policy
	}
	switch policy {
	case dmarc.PolicyReject, dmarc.PolicyQuarantine:
		it.Advice = append(it.Advice, fmt.Sprintf("WARNING: %s publishes p=%s and this mail leaves unaligned: receivers will %s it", p.from, policy, map[dmarc.Policy]string{dmarc.PolicyReject: "reject", dmarc.PolicyQuarantine: "put it in spam"}[policy]))
	default:
		it.Advice = append(it.Advice, "DMARC fails for this mail; Gmail, Yahoo and Microsoft require aligned SPF or DKIM from bulk senders")
	}
	switch {
	case dkimOK:
	case len(p.cfg.GetDkimKeys()) > 0:
		it.Advice = append(it.Advice, "publish the DKIM record of "+p.from+" (see its dkim item): an aligned signature is the most robust fix, it survives forwarding")
	default:
		it.Advice = append(it.Advice, "sign with d="+p.from+": generate a DKIM key for "+p.from+" and publish its record (the most robust fix: it survives forwarding)")
	}
	if !spfAligned {
		it.Advice = append(it.Advice, "or use a return path under "+orgDomain(p.from)+" (a bounce domain such as bounces."+orgDomain(p.from)+", or return path mode FROM)")
	}
	return it
}

// Bounce MX.

func (r *run) bounceMXItem(ctx context.Context, bd string) *pb.DnsCheckItem {
	it := &pb.DnsCheckItem{Kind: KindBounceMX, Name: bd}
	want := r.c.opts.BounceMXHost
	publish := bd + ". IN MX 10 " + cmpOr(want, anyHost) + "."
	mxs, err := mxHosts(ctx, r.res, bd)
	switch {
	case err != nil && !missing(err):
		it.Status, it.Detail = absent, "could not look up the MX of "+bd+": "+err.Error()
		r.lookupFailed(it)
	case len(mxs) == 0:
		it.Status, it.Detail, it.Publish = absent, "no MX at "+bd+": bounces to the VERP return path do not come back to mailbus", publish
	case want == "":
		it.Status, it.Detail = found, "MX "+strings.Join(mxs, ", ")
		it.Advice = append(it.Advice, "set "+envBMX+" to the bounce service's host name so the check can tell whether the MX points at it")
	case slices.Contains(mxs, want):
		it.Status, it.Detail = found, "MX "+strings.Join(mxs, ", ")+" includes the bounce service "+want
	default:
		it.Status, it.Detail, it.Publish = wrong, "MX "+strings.Join(mxs, ", ")+" does not point at the bounce service "+want+": bounces go elsewhere", publish
	}
	if want == "" && it.Publish != "" {
		it.Advice = append(it.Advice, "set "+envBMX+" to the bounce service's public host name, so the record to publish names it")
	}
	return it
}

// PTR and forward DNS of direct delivery's addresses.

func (r *run) ptrItems(ctx context.Context) {
	helo := resolve.HostName(r.in.Default.GetHeloName())
	if len(r.c.opts.SendingAddrs) == 0 {
		r.add(&pb.DnsCheckItem{Kind: KindPTR, Name: "direct delivery", Status: absent,
			Detail: "the default server delivers directly to MX hosts, but no sending address is configured (" + envPTR + "), so its PTR and forward DNS cannot be checked",
			Advice: []string{"set " + envPTR + " to the public addresses direct delivery leaves from"}})
		return
	}
	for _, a := range r.c.opts.SendingAddrs {
		rev, _ := dns.ReverseAddr(a.String())
		rev = strings.TrimSuffix(rev, ".")
		it := &pb.DnsCheckItem{Kind: KindPTR, Name: rev}
		ptrs, err := r.res.PTR(ctx, a)
		switch {
		case err != nil && !missing(err):
			it.Status, it.Detail = absent, "could not look up the PTR of "+a.String()+": "+err.Error()
			r.lookupFailed(it)
		case len(ptrs) == 0:
			it.Status, it.Detail = absent, "no PTR for "+a.String()+": many receivers refuse mail from an address without reverse DNS"
			it.Publish = rev + ". IN PTR " + cmpOr(helo, "<host name>") + "."
			it.Advice = append(it.Advice, "the owner of the address block (the hosting provider) sets PTR records")
		default:
			fc := ""
			var seen []string
			for _, p := range ptrs {
				addrs, _ := r.res.Addrs(ctx, p)
				if slices.Contains(addrs, a) {
					fc = p
					break
				}
				for _, x := range addrs {
					seen = append(seen, x.String())
				}
			}
			if fc != "" {
				it.Status, it.Detail = found, a.String()+" → "+fc+" → "+a.String()+" (forward-confirmed)"
				if helo != "" && fc != helo {
					it.Advice = append(it.Advice, "the EHLO name "+helo+" differs from the PTR name "+fc+"; some receivers want them equal")
				}
			} else {
				it.Status = wrong
				it.Detail = fmt.Sprintf("%s → %s, but that name resolves to [%s], not back to %s (not forward-confirmed)", a, strings.Join(ptrs, ", "), strings.Join(seen, ", "), a)
				typ := "A"
				if a.Is6() {
					typ = "AAAA"
				}
				it.Publish = ptrs[0] + ". IN " + typ + " " + a.String()
			}
		}
		r.add(it)
	}
}

// What the router decides, restated for the check.

// returnPath mirrors the router's return-path policy (services/router/
// internal/plan, returnPath): custom or From when the domain says so,
// else VERP on the tenant's bounce domain when it has one.
func returnPath(d *pb.Domain, t *pb.Tenant, from string) (domain, how string) {
	switch d.GetReturnPathMode() {
	case pb.ReturnPathMode_RETURN_PATH_MODE_CUSTOM:
		if c := d.GetCustomReturnPath(); c != "" {
			return domainOf(c), "custom return path " + c
		}
	case pb.ReturnPathMode_RETURN_PATH_MODE_FROM:
		return from, "the From address"
	}
	if bd := strings.ToLower(t.GetBounceDomain()); bd != "" {
		return bd, "VERP on the tenant's bounce domain"
	}
	return from, "the From address; the tenant has no bounce domain"
}

// eligible are the active relays that carry mail of domain (a relay with
// no domains serves all of the tenant's).
func eligible(relays []*pb.Relay, domain string) []*pb.Relay {
	var out []*pb.Relay
	for _, rl := range relays {
		if !rl.GetActive() {
			continue
		}
		if len(rl.GetDomains()) == 0 || slices.ContainsFunc(rl.GetDomains(), func(d string) bool { return strings.EqualFold(d, domain) }) {
			out = append(out, rl)
		}
	}
	return out
}

// rewriteFor says why mail from domain leaves with From rewritten to the
// tenant's alias address (services/router/internal/route, Decide), or ""
// when it does not: the relays that carry the domain accept no From of
// it, or none carries it and relays of the alias domain do.
func rewriteFor(domain string, t *pb.Tenant, relays []*pb.Relay) string {
	alias := aliasAddress(t)
	if alias == "" || domainOf(alias) == domain {
		return ""
	}
	if el := eligible(relays, domain); len(el) > 0 {
		var filters []string
		for _, rl := range el {
			f := strings.ToLower(rl.GetFromFilter())
			if f == "" || f == domain {
				return ""
			}
			filters = append(filters, "relay "+cmpOr(rl.GetName(), rl.GetId())+" accepts only From "+f)
		}
		return strings.Join(filters, ", ")
	}
	for _, rl := range eligible(relays, domainOf(alias)) {
		f := strings.ToLower(rl.GetFromFilter())
		if f == "" || f == domainOf(alias) || f == alias {
			return "no relay carries " + domain + "; relay " + cmpOr(rl.GetName(), rl.GetId()) + " of the alias domain does"
		}
	}
	return ""
}

func aliasAddress(t *pb.Tenant) string {
	if t.GetDefaultFrom() == "" || t.GetDomainAlias() == "" {
		return ""
	}
	return strings.ToLower(t.GetDefaultFrom() + "@" + t.GetDomainAlias())
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return strings.ToLower(addr)
}

// orgDomain is the organizational domain (RFC 7489 3.2) by the public
// suffix list; a name the list cannot place is its own.
func orgDomain(d string) string {
	if org, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return org
	}
	return d
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// missing reports whether err means "no such name" rather than a lookup
// that failed.
func missing(err error) bool { return errors.Is(err, resolve.ErrNoName) }

// mxHosts returns the MX hosts of name, or resolve.ErrNoName.
func mxHosts(ctx context.Context, res *resolve.Resolver, name string) ([]string, error) {
	mxs, err := res.MX(ctx, name)
	hosts := make([]string, 0, len(mxs))
	for _, m := range mxs {
		hosts = append(hosts, m.Host)
	}
	return hosts, err
}
