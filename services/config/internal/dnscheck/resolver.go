package dnscheck

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

// Resolver asks one set of name servers with miekg/dns, so that tests can
// point it at an in-process server and operators at the resolver their
// receivers see. The zero value uses the servers of /etc/resolv.conf.
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

// errNoName says a name does not exist (NXDOMAIN); lookups return it with
// no records so that callers can tell "missing" from "lookup failed".
var errNoName = errors.New("no such name (NXDOMAIN)")

// lookup returns the answer records of qtype at name. A name that does not
// exist returns errNoName, a name without records of that type none; only
// those two are "missing", anything else (timeouts, SERVFAIL) is an error
// that says the check could not look.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
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
		case resp.Rcode == dns.RcodeNameError:
			return nil, errNoName
		case resp.Rcode == dns.RcodeSuccess:
			var out []dns.RR
			for _, rr := range resp.Answer {
				if rr.Header().Rrtype == qtype {
					out = append(out, rr)
				}
			}
			return out, nil
		default:
			// SERVFAIL or REFUSED: another server may do better.
			lastErr = fmt.Errorf("server %s answered %s", s, dns.RcodeToString[resp.Rcode])
		}
	}
	return nil, fmt.Errorf("%s lookup for %s: %w", dns.TypeToString[qtype], strings.TrimSuffix(name, "."), lastErr)
}

// missing reports whether err means "no such record" rather than a failure.
func missing(err error) bool { return errors.Is(err, errNoName) }

// TXT returns the TXT records at name, each with its strings joined.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeTXT)
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, err
}

// MX returns the MX hosts of name (lower case, without the trailing dot).
func (r *Resolver) MX(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeMX)
	var out []string
	for _, rr := range rrs {
		out = append(out, hostName(rr.(*dns.MX).Mx))
	}
	return out, err
}

// Addrs returns name's IPv4 then IPv6 addresses; a missing name has none.
func (r *Resolver) Addrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.lookup(ctx, name, qt)
		if missing(err) {
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

// PTR returns the names an address points back to.
func (r *Resolver) PTR(ctx context.Context, addr netip.Addr) ([]string, error) {
	rev, err := dns.ReverseAddr(addr.String())
	if err != nil {
		return nil, fmt.Errorf("reverse name of %s: %w", addr, err)
	}
	rrs, err := r.lookup(ctx, rev, dns.TypePTR)
	var out []string
	for _, rr := range rrs {
		out = append(out, hostName(rr.(*dns.PTR).Ptr))
	}
	return out, err
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

func hostName(s string) string { return strings.TrimSuffix(strings.ToLower(s), ".") }
