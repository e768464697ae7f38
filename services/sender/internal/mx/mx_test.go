package mx

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
)

func names(hosts []Host) []string {
	var out []string
	for _, h := range hosts {
		out = append(out, h.Name)
	}
	return out
}

func TestLookup_ordersMXHostsByPreferenceWithTheirAddresses(t *testing.T) {
	z := dnstest.NewZone(t,
		"dest.test. 300 IN MX 20 backup.dest.test.",
		"dest.test. 300 IN MX 10 mx1.dest.test.",
		"dest.test. 300 IN MX 10 mx2.dest.test.",
		"mx1.dest.test. 300 IN A 192.0.2.1",
		"mx1.dest.test. 300 IN AAAA 2001:db8::1",
		"mx2.dest.test. 300 IN A 192.0.2.2",
		"backup.dest.test. 300 IN A 192.0.2.3",
	)
	r := resolve.New(dnstest.Start(t, z))
	seen := map[string]bool{}
	for range 40 {
		hosts, err := Lookup(context.Background(), r, "Dest.Test.")
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		got := names(hosts)
		if len(got) != 3 || got[2] != "backup.dest.test" {
			t.Fatalf("hosts = %v, want the two preference-10 hosts, then backup", got)
		}
		seen[strings.Join(got[:2], ",")] = true
		for _, h := range hosts {
			if h.Name == "mx1.dest.test" {
				want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
				if fmt.Sprint(h.Addrs) != fmt.Sprint(want) || h.Preference != 10 || h.Implicit {
					t.Errorf("mx1 = %+v", h)
				}
			}
		}
	}
	// Equal preferences come in random order: in 40 lookups both orders
	// show up (the chance that one never does is 2^-39).
	if !seen["mx1.dest.test,mx2.dest.test"] || !seen["mx2.dest.test,mx1.dest.test"] {
		t.Errorf("orders of the equal-preference hosts seen: %v", seen)
	}
}

func TestLookup_outcomes(t *testing.T) {
	z := dnstest.NewZone(t,
		"implicit.test. 300 IN A 192.0.2.10",
		"implicit.test. 300 IN TXT \"no mx here\"",
		"nullmx.test. 300 IN MX 0 .",
		"bare.test. 300 IN TXT \"no mx, no address\"",
		"noaddr.test. 300 IN MX 10 missing.noaddr.test.",
		"skip.test. 300 IN MX 10 missing.skip.test.",
		"skip.test. 300 IN MX 20 mx.skip.test.",
		"mx.skip.test. 300 IN A 192.0.2.20",
		"big.test. 300 IN MX 10 mx.big.test.",
		"mx.big.test. 300 IN A 192.0.2.30",
		"hostfail.test. 300 IN MX 10 mx.hostfail.test.",
	)
	z.ServFail("servfail.test.")
	z.ServFail("mx.hostfail.test.")
	z.Silent("slow.test.")
	z.TruncateOverUDP("big.test.")
	addr := dnstest.Start(t, z)
	// Answers may take long on a busy machine: only the name the server
	// never answers gets a short timeout, which then always fires.
	r := &resolve.Resolver{Servers: []string{addr}, Timeout: 10 * time.Second}
	silent := &resolve.Resolver{Servers: []string{addr}, Timeout: 200 * time.Millisecond}

	tests := []struct {
		domain    string
		wantHosts string
		implicit  bool
		code      int
		enhanced  string
		permanent bool
	}{
		{domain: "implicit.test", wantHosts: "implicit.test", implicit: true},
		{domain: "skip.test", wantHosts: "mx.skip.test"},
		{domain: "big.test", wantHosts: "mx.big.test"},
		{domain: "nullmx.test", code: 556, enhanced: "5.1.10", permanent: true},
		{domain: "nowhere.test", code: 550, enhanced: "5.1.2", permanent: true},
		{domain: "bare.test", code: 550, enhanced: "5.1.2", permanent: true},
		{domain: "servfail.test", code: 451, enhanced: "4.4.3"},
		{domain: "slow.test", code: 451, enhanced: "4.4.3"},
		{domain: "noaddr.test", code: 451, enhanced: "4.4.4"},
		{domain: "hostfail.test", code: 451, enhanced: "4.4.3"},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			res := r
			if tt.domain == "slow.test" {
				res = silent
			}
			hosts, err := Lookup(context.Background(), res, tt.domain)
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("Lookup: %v", err)
				}
				if got := strings.Join(names(hosts), " "); got != tt.wantHosts || hosts[0].Implicit != tt.implicit {
					t.Errorf("hosts = %+v, want %s (implicit %v)", hosts, tt.wantHosts, tt.implicit)
				}
				return
			}
			var se *mail.SMTPError
			if !errors.As(err, &se) {
				t.Fatalf("error = %v (%T), want *mail.SMTPError", err, err)
			}
			if se.Code != tt.code || se.Enhanced != tt.enhanced || se.Permanent() != tt.permanent || se.Stage != "dns" {
				t.Errorf("error = %+v (%s)", se, se)
			}
		})
	}
}

func TestLookup_triesTheNextServerWhenOneFails(t *testing.T) {
	good := dnstest.Start(t, dnstest.NewZone(t, "dest.test. 300 IN MX 10 mx.dest.test.", "mx.dest.test. 300 IN A 192.0.2.1"))
	bad := dnstest.NewZone(t)
	bad.ServFail("dest.test.")
	bad.ServFail("mx.dest.test.")
	r := &resolve.Resolver{Servers: []string{dnstest.Start(t, bad), good}, Timeout: 10 * time.Second}
	hosts, err := Lookup(context.Background(), r, "dest.test")
	if err != nil || len(hosts) != 1 || hosts[0].Name != "mx.dest.test" {
		t.Fatalf("Lookup = %+v, %v", hosts, err)
	}
}
