package dnscheck

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mailbus/mailbus/pkg/resolve"
)

// This file reads SPF (RFC 7208) far enough to give advice: whether a
// record authorizes an address, how many DNS lookups it costs, and how it
// ends. It is not a receiver's SPF evaluator (receivers run their own); a
// library such as blitiri.com.ar/go/spf answers pass/fail for one address
// but neither counts a record's lookups nor tells which include a record
// reaches, which is what the advice needs.

// maxLookups is RFC 7208 section 4.6.4's limit on terms that cause DNS
// lookups (include, a, mx, ptr, exists, redirect), over the whole
// evaluation; one more is a permerror.
const maxLookups = 10

// maxDepth bounds include/redirect recursion (loops, absurd chains).
const maxDepth = 10

type spfTerm struct {
	qualifier byte // '+', '-', '~', '?'
	mechanism string
	arg       string // domain-spec or address, "" when none
	cidr4     int    // -1 when not given
	cidr6     int
}

type spfRecord struct {
	raw      string
	terms    []spfTerm
	redirect string
}

// isSPF reports whether a TXT value is an SPF record ("v=spf1" alone or
// followed by a space).
func isSPF(txt string) bool {
	l := strings.ToLower(strings.TrimSpace(txt))
	return l == "v=spf1" || strings.HasPrefix(l, "v=spf1 ")
}

func parseSPF(txt string) (*spfRecord, error) {
	fields := strings.Fields(txt)
	rec := &spfRecord{raw: strings.TrimSpace(txt)}
	for _, f := range fields[1:] {
		name, value, isMod := strings.Cut(f, "=")
		if isMod && !strings.ContainsAny(name, ":/") {
			switch strings.ToLower(name) {
			case "redirect":
				rec.redirect = strings.ToLower(value)
			default:
				// exp= and unknown modifiers are ignored (RFC 7208 6).
			}
			continue
		}
		t := spfTerm{qualifier: '+', cidr4: -1, cidr6: -1}
		if strings.ContainsRune("+-~?", rune(f[0])) {
			t.qualifier, f = f[0], f[1:]
		}
		mech, rest := f, ""
		if i := strings.IndexAny(f, ":/"); i >= 0 {
			mech, rest = f[:i], f[i:]
		}
		t.mechanism = strings.ToLower(mech)
		switch t.mechanism {
		case "all":
			if rest != "" {
				return nil, fmt.Errorf("%q: all takes no argument", f)
			}
		case "include", "exists":
			if !strings.HasPrefix(rest, ":") || len(rest) < 2 {
				return nil, fmt.Errorf("%q: %s needs a domain", f, t.mechanism)
			}
			t.arg = strings.ToLower(rest[1:])
		case "a", "mx", "ptr":
			if strings.HasPrefix(rest, ":") {
				rest = rest[1:]
				i := strings.IndexByte(rest, '/')
				if i < 0 {
					i = len(rest)
				}
				t.arg, rest = strings.ToLower(rest[:i]), rest[i:]
			}
			if err := t.parseCIDR(rest); err != nil {
				return nil, fmt.Errorf("%q: %w", f, err)
			}
		case "ip4", "ip6":
			if !strings.HasPrefix(rest, ":") {
				return nil, fmt.Errorf("%q: %s needs an address", f, t.mechanism)
			}
			t.arg = rest[1:]
			p, err := parsePrefix(t.arg)
			if err != nil || (t.mechanism == "ip4") != p.Addr().Is4() {
				return nil, fmt.Errorf("%q: not an %s address or network", f, t.mechanism)
			}
		default:
			return nil, fmt.Errorf("unknown mechanism %q", f)
		}
		rec.terms = append(rec.terms, t)
	}
	return rec, nil
}

func (t *spfTerm) parseCIDR(s string) error {
	if s == "" {
		return nil
	}
	if !strings.HasPrefix(s, "/") {
		return fmt.Errorf("bad CIDR length %q", s)
	}
	v4, v6, dual := strings.Cut(s[1:], "//")
	if v4 != "" {
		n, err := strconv.Atoi(v4)
		if err != nil || n < 0 || n > 32 {
			return fmt.Errorf("bad IPv4 CIDR length %q", v4)
		}
		t.cidr4 = n
	}
	if dual {
		n, err := strconv.Atoi(v6)
		if err != nil || n < 0 || n > 128 {
			return fmt.Errorf("bad IPv6 CIDR length %q", v6)
		}
		t.cidr6 = n
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// allQualifier returns the qualifier of the record's "all" term, 0 when it
// has none.
func (r *spfRecord) allQualifier() byte {
	for _, t := range r.terms {
		if t.mechanism == "all" {
			return t.qualifier
		}
	}
	return 0
}

// spfWalker looks records up once per check and counts what evaluating
// them costs.
type spfWalker struct {
	r       *resolve.Resolver
	records map[string]spfLookup
}

type spfLookup struct {
	rec *spfRecord
	err error // lookup failure or permerror (several records, bad syntax)
}

func newSPFWalker(r *resolve.Resolver) *spfWalker {
	return &spfWalker{r: r, records: map[string]spfLookup{}}
}

// record returns domain's SPF record; nil with a nil error when it has none.
func (w *spfWalker) record(ctx context.Context, domain string) (*spfRecord, error) {
	if l, ok := w.records[domain]; ok {
		return l.rec, l.err
	}
	l := w.fetch(ctx, domain)
	w.records[domain] = l
	return l.rec, l.err
}

func (w *spfWalker) fetch(ctx context.Context, domain string) spfLookup {
	txts, err := w.r.TXT(ctx, domain)
	if err != nil && !missing(err) {
		return spfLookup{err: err}
	}
	var spf []string
	for _, t := range txts {
		if isSPF(t) {
			spf = append(spf, t)
		}
	}
	switch len(spf) {
	case 0:
		return spfLookup{}
	case 1:
		rec, err := parseSPF(spf[0])
		if err != nil {
			return spfLookup{err: fmt.Errorf("SPF record of %s: %w", domain, err)}
		}
		return spfLookup{rec: rec}
	default:
		return spfLookup{err: fmt.Errorf("%s publishes %d SPF records; receivers treat that as an error (permerror): merge them into one", domain, len(spf))}
	}
}

// lookups counts the DNS-querying terms of domain's record and, through
// include and redirect, of every record it reaches: the worst case a
// receiver may have to evaluate, which RFC 7208 caps at 10. problems are
// the includes that are missing or broken (each a permerror at receivers).
func (w *spfWalker) lookups(ctx context.Context, domain string, depth int, problems *[]string) int {
	rec, err := w.record(ctx, domain)
	if err != nil {
		*problems = append(*problems, err.Error())
		return 0
	}
	if rec == nil || depth > maxDepth {
		return 0
	}
	n := 0
	for _, t := range rec.terms {
		switch t.mechanism {
		case "include":
			n++
			if strings.Contains(t.arg, "%") {
				continue // a macro: the target depends on the message
			}
			if sub, err := w.record(ctx, t.arg); err == nil && sub == nil {
				*problems = append(*problems, fmt.Sprintf("include:%s has no SPF record (a permerror at receivers)", t.arg))
			}
			n += w.lookups(ctx, t.arg, depth+1, problems)
		case "a", "mx", "ptr", "exists":
			n++
		}
	}
	if rec.redirect != "" {
		n++
		if !strings.Contains(rec.redirect, "%") {
			n += w.lookups(ctx, rec.redirect, depth+1, problems)
		}
	}
	return n
}

// reaches reports whether domain's record includes (or redirects to)
// target, directly or through other includes.
func (w *spfWalker) reaches(ctx context.Context, domain, target string, depth int) bool {
	rec, err := w.record(ctx, domain)
	if err != nil || rec == nil || depth > maxDepth {
		return false
	}
	for _, t := range rec.terms {
		if t.mechanism == "include" && (t.arg == target || w.reaches(ctx, t.arg, target, depth+1)) {
			return true
		}
	}
	return rec.redirect != "" && (rec.redirect == target || w.reaches(ctx, rec.redirect, target, depth+1))
}

// check is check_host() (RFC 7208 section 4) for ip, without macros (a
// term with a macro never matches): "pass", "fail", "softfail", "neutral",
// "none", "permerror" or "temperror".
func (w *spfWalker) check(ctx context.Context, ip netip.Addr, domain string, depth int) string {
	if depth > maxDepth {
		return "permerror"
	}
	rec, err := w.record(ctx, domain)
	switch {
	case err != nil:
		return "permerror"
	case rec == nil:
		return "none"
	}
	for _, t := range rec.terms {
		match := false
		switch t.mechanism {
		case "all":
			match = true
		case "ip4", "ip6":
			p, _ := parsePrefix(t.arg)
			match = p.Contains(ip)
		case "a", "mx":
			target := t.arg
			if target == "" {
				target = domain
			}
			if strings.Contains(target, "%") {
				continue
			}
			hosts := []string{target}
			if t.mechanism == "mx" {
				hosts, _ = mxHosts(ctx, w.r, target)
			}
			for _, h := range hosts {
				addrs, _ := w.r.Addrs(ctx, h)
				for _, a := range addrs {
					if inCIDR(a, ip, t.cidr4, t.cidr6) {
						match = true
					}
				}
			}
		case "exists":
			if !strings.Contains(t.arg, "%") {
				addrs, _ := w.r.Addrs(ctx, t.arg)
				match = len(addrs) > 0
			}
		case "include":
			if strings.Contains(t.arg, "%") {
				continue
			}
			switch res := w.check(ctx, ip, t.arg, depth+1); res {
			case "pass":
				match = true
			case "none", "permerror":
				return "permerror"
			}
		case "ptr":
			// Deprecated (RFC 7208 5.5) and slow; advice says so. It
			// never authorizes here, which is how many receivers treat it.
		}
		if match {
			return qualifierResult(t.qualifier)
		}
	}
	if rec.redirect != "" && !strings.Contains(rec.redirect, "%") {
		res := w.check(ctx, ip, rec.redirect, depth+1)
		if res == "none" {
			return "permerror"
		}
		return res
	}
	return "neutral"
}

func inCIDR(a, ip netip.Addr, cidr4, cidr6 int) bool {
	if a.Is4() != ip.Is4() {
		return false
	}
	bits := a.BitLen()
	if a.Is4() && cidr4 >= 0 {
		bits = cidr4
	}
	if a.Is6() && cidr6 >= 0 {
		bits = cidr6
	}
	p, err := a.Prefix(bits)
	return err == nil && p.Contains(ip)
}

func qualifierResult(q byte) string {
	switch q {
	case '-':
		return "fail"
	case '~':
		return "softfail"
	case '?':
		return "neutral"
	}
	return "pass"
}

// withTerms returns rec with terms added before its "all" (or redirect),
// ending in "~all" when it ended in "+all"/"?all" or had no ending.
func withTerms(rec *spfRecord, add []string) string {
	out := []string{"v=spf1"}
	all := "~all"
	for _, f := range strings.Fields(rec.raw)[1:] {
		l := strings.ToLower(f)
		switch {
		case l == "-all" || l == "~all":
			all = l
		case l == "all" || l == "+all" || l == "?all":
		case strings.HasPrefix(l, "redirect="):
			// A redirect only applies without "all"; the new "all" ends
			// the record, so the redirect target becomes an include.
			out = append(out, "include:"+f[len("redirect="):])
		default:
			out = append(out, f)
		}
	}
	out = append(out, add...)
	return strings.Join(append(out, all), " ")
}
