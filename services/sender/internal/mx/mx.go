// Package mx finds where to deliver mail for a domain when mailbus delivers
// directly instead of through a relay: the domain's MX hosts in order of
// preference (random among equal preferences, RFC 5321 5.1), the domain's
// own A/AAAA records when it has no MX (the implicit MX), and the answers
// that mean "never": a null MX (RFC 7505) or a domain that does not exist.
//
// Outcomes are *mail.SMTPError with Stage "dns": permanent (5xx) for
// NXDOMAIN, null MX and a domain without any address, temporary (4.4.3)
// for timeouts, SERVFAIL and other resolver failures, so that the sender
// bounces the first kind and retries the second.
package mx

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/idna"

	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/resolve"
)

// Host is one place to deliver to.
type Host struct {
	// Name is the MX exchange, or the domain itself for an implicit MX,
	// without the trailing dot. It is the name to verify the server's
	// certificate against.
	Name       string
	Preference uint16
	// Implicit says the domain has no MX records and Name is the domain.
	Implicit bool
	// Addrs are the host's IPv4 then IPv6 addresses, in DNS order.
	Addrs []netip.Addr
}

// Lookup returns the hosts to try for domain, best first, each with its
// addresses, asking r (nil: the name servers of /etc/resolv.conf); hosts
// without an address are left out.
func Lookup(ctx context.Context, r *resolve.Resolver, domain string) ([]Host, error) {
	if r == nil {
		r = &resolve.Resolver{}
	}
	name, err := idna.Lookup.ToASCII(strings.TrimSuffix(strings.ToLower(domain), "."))
	if err != nil || name == "" {
		return nil, &mail.SMTPError{Code: 550, Enhanced: "5.1.2", Stage: "dns",
			Message: fmt.Sprintf("invalid recipient domain %q", domain), Err: err}
	}

	mxs, err := r.MX(ctx, name)
	if errors.Is(err, resolve.ErrNoName) {
		return nil, &mail.SMTPError{Code: 550, Enhanced: "5.1.2", Stage: "dns",
			Message: fmt.Sprintf("domain %s does not exist (NXDOMAIN)", name)}
	}
	if err != nil {
		return nil, temporary(err)
	}

	var hosts []Host
	null := false
	for _, m := range mxs {
		if m.Host == "." {
			null = true
			continue
		}
		hosts = append(hosts, Host{Name: m.Host, Preference: m.Preference})
	}
	if len(hosts) == 0 && null {
		return nil, &mail.SMTPError{Code: 556, Enhanced: "5.1.10", Stage: "dns",
			Message: fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", name)}
	}

	if len(hosts) == 0 {
		// RFC 5321 5.1: without MX records the domain is its own mail host.
		addrs, err := addresses(ctx, r, name)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, &mail.SMTPError{Code: 550, Enhanced: "5.1.2", Stage: "dns",
				Message: fmt.Sprintf("domain %s has no MX, A or AAAA records", name)}
		}
		return []Host{{Name: name, Implicit: true, Addrs: addrs}}, nil
	}

	// Shuffle first, then sort stably by preference: equal preferences end
	// up in random order, which spreads load as RFC 5321 5.1 asks.
	rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
	slices.SortStableFunc(hosts, func(a, b Host) int { return int(a.Preference) - int(b.Preference) })

	var lastErr error
	out := hosts[:0]
	for _, h := range hosts {
		addrs, err := addresses(ctx, r, h.Name)
		if err != nil {
			lastErr = err
			continue
		}
		if len(addrs) > 0 {
			h.Addrs = addrs
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		if lastErr != nil {
			return nil, lastErr
		}
		// Treated as temporary, like Postfix: a broken MX set is usually
		// fixed by its owner, and the queue lifetime bounds the retries.
		return nil, &mail.SMTPError{Code: 451, Enhanced: "4.4.4", Stage: "dns",
			Message: fmt.Sprintf("no MX host of %s has an address", name)}
	}
	return out, nil
}

// addresses returns name's addresses; a lookup that failed is a temporary
// SMTP error.
func addresses(ctx context.Context, r *resolve.Resolver, name string) ([]netip.Addr, error) {
	addrs, err := r.Addrs(ctx, name)
	if err != nil {
		return nil, temporary(err)
	}
	return addrs, nil
}

func temporary(err error) *mail.SMTPError {
	return &mail.SMTPError{Code: 451, Enhanced: "4.4.3", Stage: "dns",
		Message: err.Error(), Err: err}
}
