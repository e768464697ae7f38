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
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"

	"github.com/mailbus/mailbus/pkg/mail"
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

// Resolver looks up MX records with miekg/dns against one set of servers.
// The zero value uses the name servers of /etc/resolv.conf.
type Resolver struct {
	// Servers are "host:port" addresses tried in order; empty means those
	// of /etc/resolv.conf.
	Servers []string
	// Timeout bounds each query (default 5s).
	Timeout time.Duration

	once    sync.Once
	servers []string
	confErr error
}

// NewResolver returns a resolver that asks servers ("host:port") only.
func NewResolver(servers ...string) *Resolver { return &Resolver{Servers: servers} }

// Lookup resolves domain with the system's name servers.
func Lookup(ctx context.Context, domain string) ([]Host, error) {
	return (&Resolver{}).Lookup(ctx, domain)
}

// Lookup returns the hosts to try for domain, best first, each with its
// addresses; hosts without an address are left out.
func (r *Resolver) Lookup(ctx context.Context, domain string) ([]Host, error) {
	name, err := idna.Lookup.ToASCII(strings.TrimSuffix(strings.ToLower(domain), "."))
	if err != nil || name == "" {
		return nil, &mail.SMTPError{Code: 550, Enhanced: "5.1.2", Stage: "dns",
			Message: fmt.Sprintf("invalid recipient domain %q", domain), Err: err}
	}

	resp, err := r.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, temporary(name, "MX", err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, &mail.SMTPError{Code: 550, Enhanced: "5.1.2", Stage: "dns",
			Message: fmt.Sprintf("domain %s does not exist (NXDOMAIN)", name)}
	default:
		return nil, temporary(name, "MX", rcodeError(resp.Rcode))
	}

	var hosts []Host
	null := false
	for _, rr := range resp.Answer {
		m, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		if m.Mx == "." {
			null = true
			continue
		}
		hosts = append(hosts, Host{Name: strings.TrimSuffix(strings.ToLower(m.Mx), "."), Preference: m.Preference})
	}
	if len(hosts) == 0 && null {
		return nil, &mail.SMTPError{Code: 556, Enhanced: "5.1.10", Stage: "dns",
			Message: fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", name)}
	}

	if len(hosts) == 0 {
		// RFC 5321 5.1: without MX records the domain is its own mail host.
		addrs, err := r.addresses(ctx, name)
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
		addrs, err := r.addresses(ctx, h.Name)
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

// Addresses returns name's A then AAAA addresses; a name that does not
// exist has none. Only resolver failures are errors. The MTA-STS policy
// host is reached through it, so that it resolves with the same servers as
// the MX hosts.
func (r *Resolver) Addresses(ctx context.Context, name string) ([]netip.Addr, error) {
	return r.addresses(ctx, strings.TrimSuffix(strings.ToLower(name), "."))
}

// TXT returns name's TXT records, each with its strings joined (RFC 7208
// 3.3 and RFC 8461 3.1 read a record so); a name that does not exist has
// none. Only resolver failures are errors.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	resp, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, fmt.Errorf("TXT lookup for %s: %w", name, err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, nil
	default:
		return nil, fmt.Errorf("TXT lookup for %s: %w", name, rcodeError(resp.Rcode))
	}
	var out []string
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// addresses returns name's A then AAAA addresses; a name that does not
// exist has none. Only resolver failures are errors.
func (r *Resolver) addresses(ctx context.Context, name string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := r.query(ctx, name, qt)
		if err != nil {
			return nil, temporary(name, dns.TypeToString[qt], err)
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, nil
		default:
			return nil, temporary(name, dns.TypeToString[qt], rcodeError(resp.Rcode))
		}
		for _, rr := range resp.Answer {
			var ip net.IP
			switch v := rr.(type) {
			case *dns.A:
				ip = v.A
			case *dns.AAAA:
				ip = v.AAAA
			default:
				continue
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	return addrs, nil
}

// query asks each server in turn until one answers, over UDP and again over
// TCP when the answer was truncated.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	servers, err := r.serverList()
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	var (
		lastErr  error
		lastResp *dns.Msg
	)
	for _, s := range servers {
		resp, _, err := (&dns.Client{Net: "udp", Timeout: timeout}).ExchangeContext(ctx, m, s)
		if err == nil && resp.Truncated {
			resp, _, err = (&dns.Client{Net: "tcp", Timeout: timeout}).ExchangeContext(ctx, m, s)
		}
		switch {
		case err != nil:
			lastErr = err
			if ctx.Err() != nil {
				return nil, err
			}
		case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
			return resp, nil
		default:
			// SERVFAIL or REFUSED: another server may do better.
			lastResp = resp
		}
	}
	if lastResp != nil {
		return lastResp, nil
	}
	return nil, lastErr
}

func (r *Resolver) serverList() ([]string, error) {
	if len(r.Servers) > 0 {
		return r.Servers, nil
	}
	r.once.Do(func() {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			r.confErr = fmt.Errorf("read /etc/resolv.conf: %w", err)
			return
		}
		for _, s := range conf.Servers {
			r.servers = append(r.servers, net.JoinHostPort(s, conf.Port))
		}
		if len(r.servers) == 0 {
			r.confErr = errors.New("/etc/resolv.conf lists no name server")
		}
	})
	return r.servers, r.confErr
}

func rcodeError(rcode int) error {
	return fmt.Errorf("server answered %s", dns.RcodeToString[rcode])
}

func temporary(name, qtype string, err error) *mail.SMTPError {
	return &mail.SMTPError{Code: 451, Enhanced: "4.4.3", Stage: "dns",
		Message: fmt.Sprintf("%s lookup for %s failed: %v", qtype, name, err), Err: err}
}
