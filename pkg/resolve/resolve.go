// Package resolve asks DNS questions with miekg/dns against one set of
// name servers: the sender's MX and MTA-STS lookups and the config
// service's domain checks both go through it, so that tests point them at
// an in-process server (pkg/testkit/dnstest) and operators at the resolver
// their receivers see, and so that both read answers alike.
//
// It is written on miekg/dns rather than net.Resolver because the checks
// need what the standard resolver hides: NXDOMAIN told apart from SERVFAIL
// and timeouts ("missing" versus "could not look"), null MX records, PTR
// and TXT answers as published, and a server chosen per resolver instead
// of per process.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ErrNoName says a name does not exist (NXDOMAIN). Lookups return it
// with no records, so that callers can tell "missing" from "the lookup
// failed" (timeouts, SERVFAIL, REFUSED), which is any other error.
var ErrNoName = errors.New("no such name (NXDOMAIN)")

// Resolver asks Servers in turn. The zero value uses the name servers of
// /etc/resolv.conf. It is safe for concurrent use.
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

// New returns a resolver that asks servers ("host:port") only.
func New(servers ...string) *Resolver { return &Resolver{Servers: servers} }

// Query returns the first answer of a server that said NOERROR or
// NXDOMAIN, asking over UDP and again over TCP when the answer was
// truncated. A server that answers SERVFAIL or REFUSED, or none at all,
// makes the next one asked; when none answered usefully, the error says
// what the last one did.
func (r *Resolver) Query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
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
	var lastErr error
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
			lastErr = fmt.Errorf("server %s answered %s", s, dns.RcodeToString[resp.Rcode])
		}
	}
	return nil, lastErr
}

// Records returns the answer records of qtype at name: ErrNoName when the
// name does not exist, none when it has no records of that type.
func (r *Resolver) Records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	resp, err := r.Query(ctx, name, qtype)
	if err != nil {
		return nil, fmt.Errorf("%s lookup for %s: %w", dns.TypeToString[qtype], HostName(name), err)
	}
	if resp.Rcode == dns.RcodeNameError {
		return nil, ErrNoName
	}
	var out []dns.RR
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	return out, nil
}

// TXT returns the TXT records at name, each with its strings joined (RFC
// 7208 3.3 and RFC 8461 3.1 read a record so), or ErrNoName.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.Records(ctx, name, dns.TypeTXT)
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, err
}

// MX returns the MX hosts of name (see HostName) in the order served, or
// ErrNoName. A null MX (RFC 7505) is the host ".".
func (r *Resolver) MX(ctx context.Context, name string) ([]MX, error) {
	rrs, err := r.Records(ctx, name, dns.TypeMX)
	var out []MX
	for _, rr := range rrs {
		m := rr.(*dns.MX)
		host := HostName(m.Mx)
		if m.Mx == "." {
			host = "."
		}
		out = append(out, MX{Host: host, Preference: m.Preference})
	}
	return out, err
}

// MX is one MX record.
type MX struct {
	Host       string
	Preference uint16
}

// Addrs returns name's IPv4 then IPv6 addresses; a name that does not
// exist has none. Only failed lookups are errors.
func (r *Resolver) Addrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.Records(ctx, name, qt)
		if errors.Is(err, ErrNoName) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		for _, rr := range rrs {
			var ip net.IP
			switch v := rr.(type) {
			case *dns.A:
				ip = v.A
			case *dns.AAAA:
				ip = v.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

// PTR returns the names (see HostName) an address points back to, or
// ErrNoName.
func (r *Resolver) PTR(ctx context.Context, addr netip.Addr) ([]string, error) {
	rev, err := dns.ReverseAddr(addr.String())
	if err != nil {
		return nil, fmt.Errorf("reverse name of %s: %w", addr, err)
	}
	rrs, err := r.Records(ctx, rev, dns.TypePTR)
	var out []string
	for _, rr := range rrs {
		out = append(out, HostName(rr.(*dns.PTR).Ptr))
	}
	return out, err
}

// HostName is name in lower case without the trailing dot, as names are
// compared and shown.
func HostName(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

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
