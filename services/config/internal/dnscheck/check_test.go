package dnscheck_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
	"github.com/mailbus/mailbus/services/config/internal/dnscheck"
)

// key returns a stored DKIM key as the config service returns it.
func key(t *testing.T, selector, domain string) *pb.DkimKey {
	t.Helper()
	s, err := dkimkey.Generate(pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256)
	if err != nil {
		t.Fatal(err)
	}
	txt, err := dkimkey.DNSRecord(s)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.DkimKey{Selector: selector, Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256,
		DnsTxtValue: txt, DnsName: dkimkey.DNSName(selector, domain), Active: true}
}

// acme is a tenant whose mail goes through one relay and the default relay,
// with VERP on its own bounce subdomain and one DKIM key.
func acme(t *testing.T) dnscheck.Input {
	return dnscheck.Input{
		Domain: &pb.Domain{Id: "d1", TenantId: "acme", Name: "acme.example", DkimKeys: []*pb.DkimKey{key(t, "s1", "acme.example")}},
		Tenant: &pb.Tenant{Id: "acme", BounceDomain: "bounces.acme.example", DefaultFrom: "noreply", DomainAlias: "alias.example"},
		Relays: []*pb.Relay{{Id: "r1", Name: "office", Host: "smtp.relay.example", Active: true}},
		Default: &pb.DefaultServer{Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY,
			Relay: &pb.Relay{Host: "smtp.default.example"}},
	}
}

// hosts are the relays' addresses, which every zone has.
var hosts = []string{
	"smtp.relay.example. IN A 192.0.2.10",
	"smtp.default.example. IN A 192.0.2.20",
}

func rightZone(t *testing.T, in dnscheck.Input) []string {
	k := in.Domain.DkimKeys[0]
	return append([]string{
		`acme.example. IN TXT "v=spf1 include:_spf.relay.example ip4:192.0.2.20 -all"`,
		`_spf.relay.example. IN TXT "v=spf1 ip4:192.0.2.0/28 -all"`,
		`bounces.acme.example. IN TXT "v=spf1 ip4:192.0.2.10 a:smtp.default.example -all"`,
		k.DnsName + `. IN TXT "` + strings.Join(dkimkey.SplitTXT(k.DnsTxtValue), `" "`) + `"`,
		`_dmarc.acme.example. IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@acme.example"`,
		`bounces.acme.example. IN MX 10 bounce.mailbus.example.`,
	}, hosts...)
}

func check(t *testing.T, z *dnstest.Zone, in dnscheck.Input, opts dnscheck.Options) map[string]*pb.DnsCheckItem {
	t.Helper()
	opts.Resolver = &resolve.Resolver{Servers: []string{dnstest.Start(t, z)}}
	res := dnscheck.New(opts).Check(context.Background(), in)
	out := map[string]*pb.DnsCheckItem{}
	for _, it := range res.Items {
		out[dnscheck.Key(it)] = it
		t.Logf("%-40s %-8s %s | publish: %s | advice: %v", dnscheck.Key(it), strings.TrimPrefix(it.Status.String(), "DNS_CHECK_STATUS_"), it.Detail, it.Publish, it.Advice)
	}
	return out
}

func want(t *testing.T, items map[string]*pb.DnsCheckItem, key string, status pb.DnsCheckStatus) *pb.DnsCheckItem {
	t.Helper()
	it, ok := items[key]
	if !ok {
		t.Fatalf("no item %q", key)
	}
	if it.Status != status {
		t.Errorf("%s: status %s, want %s (%s)", key, it.Status, status, it.Detail)
	}
	return it
}

const (
	found   = pb.DnsCheckStatus_DNS_CHECK_STATUS_FOUND
	missing = pb.DnsCheckStatus_DNS_CHECK_STATUS_MISSING
	wrong   = pb.DnsCheckStatus_DNS_CHECK_STATUS_WRONG
)

func TestCheck_allRightIsAllFound(t *testing.T) {
	in := acme(t)
	items := check(t, dnstest.NewZone(t, rightZone(t, in)...), in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	for _, key := range []string{"spf bounces.acme.example", "spf acme.example", "dkim s1._domainkey.acme.example",
		"dmarc _dmarc.acme.example", "dmarc_alignment acme.example", "bounce_mx bounces.acme.example"} {
		if it := want(t, items, key, found); it.Publish != "" {
			t.Errorf("%s: nothing to publish, got %q", key, it.Publish)
		}
	}
	if len(items) != 6 {
		t.Errorf("%d items, want 6", len(items))
	}
}

func TestCheck_missingRecordsSayTheExactRecordToPublish(t *testing.T) {
	in := acme(t)
	items := check(t, dnstest.NewZone(t, hosts...), in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	k := in.Domain.DkimKeys[0]
	for key, publish := range map[string]string{
		"spf bounces.acme.example":        `bounces.acme.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 ~all"`,
		"spf acme.example":                `acme.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 ~all"`,
		"dkim s1._domainkey.acme.example": "s1._domainkey.acme.example. IN TXT \"" + k.DnsTxtValue + `"`,
		"dmarc _dmarc.acme.example":       `_dmarc.acme.example. IN TXT "v=DMARC1; p=none"`,
		"bounce_mx bounces.acme.example":  `bounces.acme.example. IN MX 10 bounce.mailbus.example.`,
	} {
		if it := want(t, items, key, missing); it.Publish != publish {
			t.Errorf("%s: publish\n %s\nwant\n %s", key, it.Publish, publish)
		}
	}
	// No DKIM record and an SPF-less return path: nothing aligns.
	want(t, items, "dmarc_alignment acme.example", wrong)
}

func TestCheck_spfWithElevenLookupsIsWrongWithTheCount(t *testing.T) {
	in := acme(t)
	zone := dnstest.NewZone(t, rightZone(t, in)...)
	// include:_spf.big + a + 3 includes + 3 × (a + exists) = 11 lookups.
	zone.Replace(t, "bounces.acme.example.", "TXT",
		`bounces.acme.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 include:_spf.big.example -all"`,
		`_spf.big.example. IN TXT "v=spf1 a include:a.big.example include:b.big.example include:c.big.example ~all"`,
		`a.big.example. IN TXT "v=spf1 a exists:x.big.example ~all"`,
		`b.big.example. IN TXT "v=spf1 a exists:x.big.example ~all"`,
		`c.big.example. IN TXT "v=spf1 a exists:x.big.example ~all"`,
	)
	items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	it := want(t, items, "spf bounces.acme.example", wrong)
	if !strings.Contains(it.Detail, "11 DNS lookups") {
		t.Errorf("detail does not give the count of 11: %s", it.Detail)
	}
	// One lookup fewer is within the limit.
	zone.Replace(t, "c.big.example.", "TXT", `c.big.example. IN TXT "v=spf1 a ~all"`)
	items = check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	if it := want(t, items, "spf bounces.acme.example", found); !strings.Contains(it.Detail, "10 DNS lookups") {
		t.Errorf("detail does not give the count of 10: %s", it.Detail)
	}
}

func TestCheck_spfThatLeavesARelayOutSaysWhatToAdd(t *testing.T) {
	in := acme(t)
	zone := dnstest.NewZone(t, rightZone(t, in)...)
	zone.Replace(t, "bounces.acme.example.", "TXT", `bounces.acme.example. IN TXT "v=spf1 ip4:192.0.2.10 ?all"`)
	items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	it := want(t, items, "spf bounces.acme.example", wrong)
	if want := `bounces.acme.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 ~all"`; it.Publish != want {
		t.Errorf("publish %q, want %q", it.Publish, want)
	}
	if !strings.Contains(it.Detail, "?all") || !strings.Contains(it.Detail, "smtp.default.example") {
		t.Errorf("detail names neither ?all nor the default relay: %s", it.Detail)
	}
}

func TestCheck_dkimRecordOfAnotherKeyIsWrong(t *testing.T) {
	in := acme(t)
	zone := dnstest.NewZone(t, rightZone(t, in)...)
	other := key(t, "s1", "acme.example")
	zone.Replace(t, "s1._domainkey.acme.example.", "TXT", `s1._domainkey.acme.example. IN TXT "`+other.DnsTxtValue+`"`)
	items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	it := want(t, items, "dkim s1._domainkey.acme.example", wrong)
	if !strings.Contains(it.Detail, "another key") || it.Publish != dkimkey.ZoneTXT(in.Domain.DkimKeys[0].DnsName, in.Domain.DkimKeys[0].DnsTxtValue) {
		t.Errorf("detail %q publish %q", it.Detail, it.Publish)
	}
	// SPF still aligns through the bounce subdomain, so DMARC passes.
	want(t, items, "dmarc_alignment acme.example", found)
}

func TestCheck_rejectPolicyWithUnalignedMailWarns(t *testing.T) {
	t.Run("return path on another organization and no DKIM key", func(t *testing.T) {
		in := acme(t)
		in.Domain.DkimKeys = nil
		in.Tenant.BounceDomain = "bounces.mailbus.example"
		zone := dnstest.NewZone(t, rightZone(t, acme(t))...)
		zone.Add(t, `bounces.mailbus.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 -all"`,
			`bounces.mailbus.example. IN MX 10 bounce.mailbus.example.`)
		items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
		it := want(t, items, "dmarc_alignment acme.example", wrong)
		if !strings.Contains(strings.Join(it.Advice, " "), "WARNING: acme.example publishes p=reject") {
			t.Errorf("no p=reject warning: %v", it.Advice)
		}
	})
	t.Run("From rewritten to the alias domain", func(t *testing.T) {
		in := acme(t)
		// The only relay for acme.example takes one address: every other
		// From of the domain leaves as noreply@alias.example.
		in.Relays[0].FromFilter = "crm@acme.example"
		in.Tenant.BounceDomain = "bounces.mailbus.example"
		zone := dnstest.NewZone(t, rightZone(t, in)...)
		zone.Add(t, `_dmarc.alias.example. IN TXT "v=DMARC1; p=reject"`,
			`alias.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 -all"`,
			`bounces.mailbus.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 -all"`,
			`bounces.mailbus.example. IN MX 10 bounce.mailbus.example.`)
		items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
		it := want(t, items, "dmarc_alignment alias.example", wrong)
		if !strings.Contains(it.Detail, "rewritten to noreply@alias.example") || !strings.Contains(strings.Join(it.Advice, " "), "WARNING: alias.example publishes p=reject") {
			t.Errorf("detail %q advice %v", it.Detail, it.Advice)
		}
		want(t, items, "dkim alias.example", missing)
		// acme.example's own mail (From crm@) is DKIM-aligned still.
		own := want(t, items, "dmarc_alignment acme.example", found)
		if !strings.Contains(strings.Join(own.Advice, " "), "rewritten") {
			t.Errorf("the domain's item does not mention the rewrite: %v", own.Advice)
		}
	})
}

func TestCheck_directDeliveryNeedsForwardConfirmedReverseDNS(t *testing.T) {
	in := acme(t)
	in.Relays = nil
	in.Default = &pb.DefaultServer{Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX, HeloName: "mta.mailbus.example"}
	zone := dnstest.NewZone(t, rightZone(t, in)...)

	items := check(t, zone, in, dnscheck.Options{BounceMXHost: "bounce.mailbus.example"})
	if it := want(t, items, "ptr direct delivery", missing); !strings.Contains(it.Detail, "MAILBUS_SENDING_ADDRS") {
		t.Errorf("the item does not say the sending address is not configured: %s", it.Detail)
	}

	addr := netip.MustParseAddr("192.0.2.99")
	opts := dnscheck.Options{BounceMXHost: "bounce.mailbus.example", SendingAddrs: []netip.Addr{addr}}
	items = check(t, zone, in, opts)
	if it := want(t, items, "ptr 99.2.0.192.in-addr.arpa", missing); it.Publish != "99.2.0.192.in-addr.arpa. IN PTR mta.mailbus.example." {
		t.Errorf("publish %q", it.Publish)
	}

	zone.Add(t, "99.2.0.192.in-addr.arpa. IN PTR mta.mailbus.example.", "mta.mailbus.example. IN A 192.0.2.98")
	items = check(t, zone, in, opts)
	if it := want(t, items, "ptr 99.2.0.192.in-addr.arpa", wrong); it.Publish != "mta.mailbus.example. IN A 192.0.2.99" {
		t.Errorf("publish %q", it.Publish)
	}
	// The direct sender's address is what SPF must authorize.
	if it := want(t, items, "spf bounces.acme.example", wrong); !strings.Contains(it.Publish, "ip4:192.0.2.99") {
		t.Errorf("SPF publish does not add the sending address: %q", it.Publish)
	}

	zone.Replace(t, "mta.mailbus.example.", "A", "mta.mailbus.example. IN A 192.0.2.99")
	items = check(t, zone, in, opts)
	want(t, items, "ptr 99.2.0.192.in-addr.arpa", found)
}

func TestCheck_aFailingNameServerIsInconclusiveNotMissing(t *testing.T) {
	in := acme(t)
	zone := dnstest.NewZone(t, rightZone(t, in)...)
	zone.ServFail("s1._domainkey.acme.example.")
	res := dnscheck.New(dnscheck.Options{Resolver: &resolve.Resolver{Servers: []string{dnstest.Start(t, zone)}}}).Check(context.Background(), in)
	for _, it := range res.Items {
		key := dnscheck.Key(it)
		switch key {
		case "dkim s1._domainkey.acme.example", "dmarc_alignment acme.example":
			if !res.Inconclusive[key] {
				t.Errorf("%s (%s: %s) is not inconclusive", key, it.Status, it.Detail)
			}
		default:
			if res.Inconclusive[key] {
				t.Errorf("%s is inconclusive", key)
			}
		}
	}
	for _, it := range res.Items {
		if dnscheck.Key(it) == "dkim s1._domainkey.acme.example" && (it.Status != missing || !strings.Contains(it.Detail, "could not look it up")) {
			t.Errorf("DKIM item %v", it)
		}
	}
}
