// Package dnstest serves a small DNS zone on loopback (UDP and TCP on one
// port) for tests of code that resolves with github.com/miekg/dns against
// a configurable server list. It is its own package so that only the
// modules whose tests resolve names depend on miekg/dns.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Zone is what the server knows: records by owner name and type. It
// answers NXDOMAIN for a name with no record of any type, an empty answer
// (NODATA) for a known name without records of the asked type. Records can
// be replaced while the server runs.
type Zone struct {
	mu       sync.Mutex
	records  map[string][]dns.RR
	servfail map[string]bool
	silent   map[string]bool
	truncate map[string]bool
	queries  map[string]int
}

// NewZone parses records in zone-file form ("acme.example. 300 IN TXT \"v=spf1 -all\"").
func NewZone(t testing.TB, records ...string) *Zone {
	t.Helper()
	z := &Zone{records: map[string][]dns.RR{}, servfail: map[string]bool{}, silent: map[string]bool{},
		truncate: map[string]bool{}, queries: map[string]int{}}
	z.Add(t, records...)
	return z
}

// Add adds records.
func (z *Zone) Add(t testing.TB, records ...string) {
	t.Helper()
	parsed := parse(t, records)
	z.mu.Lock()
	defer z.mu.Unlock()
	for key, rrs := range parsed {
		z.records[key] = append(z.records[key], rrs...)
	}
}

// Reset replaces every record of the zone with records at once.
func (z *Zone) Reset(t testing.TB, records ...string) {
	t.Helper()
	parsed := parse(t, records)
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records = parsed
}

// parse reads zone-file lines into records by "name TYPE".
func parse(t testing.TB, records []string) map[string][]dns.RR {
	t.Helper()
	out := map[string][]dns.RR{}
	for _, s := range records {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("dnstest: bad record %q: %v", s, err)
		}
		if r == nil {
			t.Fatalf("dnstest: record %q is empty", s)
		}
		key := strings.ToLower(r.Header().Name) + " " + dns.TypeToString[r.Header().Rrtype]
		out[key] = append(out[key], r)
	}
	return out
}

// Remove drops every record of typ ("TXT", "MX", …) at name (fully
// qualified, with the trailing dot).
func (z *Zone) Remove(name, typ string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.records, strings.ToLower(name)+" "+typ)
}

// Replace sets the records of typ at name to records (nothing removes them).
func (z *Zone) Replace(t testing.TB, name, typ string, records ...string) {
	t.Helper()
	z.Remove(name, typ)
	z.Add(t, records...)
}

// ServFail makes every query for name fail with SERVFAIL.
func (z *Zone) ServFail(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.servfail[strings.ToLower(name)] = true
}

// Silent leaves every query for name unanswered, like a name server that
// is down: the client times out.
func (z *Zone) Silent(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.silent[strings.ToLower(name)] = true
}

// TruncateOverUDP answers queries for name over UDP with the truncated
// flag and no records, so that the client must ask again over TCP, where
// the records are.
func (z *Zone) TruncateOverUDP(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.truncate[strings.ToLower(name)] = true
}

func (z *Zone) exists(name string) bool {
	for key := range z.records {
		if strings.HasPrefix(key, name+" ") {
			return true
		}
	}
	return false
}

// Queries returns how many queries for typ at name (fully qualified) the
// zone has answered, so that a test can wait until a periodic job has
// looked instead of sleeping.
func (z *Zone) Queries(name, typ string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[strings.ToLower(name)+" "+typ]
}

// ServeDNS answers one query.
func (z *Zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	if len(req.Question) == 1 {
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		z.mu.Lock()
		z.queries[name+" "+dns.TypeToString[q.Qtype]]++
		if z.silent[name] {
			z.mu.Unlock()
			return
		}
		switch {
		case z.truncate[name] && w.RemoteAddr().Network() == "udp":
			resp.Truncated = true
		case z.servfail[name]:
			resp.Rcode = dns.RcodeServerFailure
		case !z.exists(name):
			resp.Rcode = dns.RcodeNameError
		default:
			resp.Answer = append(resp.Answer, z.records[name+" "+dns.TypeToString[q.Qtype]]...)
		}
		z.mu.Unlock()
	}
	_ = w.WriteMsg(resp)
}

// Start serves z over UDP and TCP on one loopback port until the test ends
// and returns the "127.0.0.1:port" address.
func Start(t testing.TB, z *Zone) string {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close() // the TCP port is taken; try another
			continue
		}
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: z}, {Listener: ln, Handler: z}} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go func() { _ = srv.ActivateAndServe() }()
			<-started
			t.Cleanup(func() { _ = srv.Shutdown() })
		}
		return pc.LocalAddr().String()
	}
	t.Fatal("dnstest: no free port for both UDP and TCP")
	return ""
}
