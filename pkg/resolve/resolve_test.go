package resolve_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
)

func newResolver(t *testing.T, records ...string) (*resolve.Resolver, *dnstest.Zone) {
	t.Helper()
	z := dnstest.NewZone(t, records...)
	return resolve.New(dnstest.Start(t, z)), z
}

func TestTXT_joinsEachRecordsStringsAndTellsAMissingNameFromAFailedLookup(t *testing.T) {
	r, z := newResolver(t,
		`_mta-sts.example.com. 300 IN TXT "v=STSv1; " "id=20260101"`,
		`_mta-sts.example.com. 300 IN TXT "other"`,
		`example.com. 300 IN A 192.0.2.1`,
	)
	z.ServFail("broken.example.")
	ctx := context.Background()
	got, err := r.TXT(ctx, "_MTA-STS.example.com.")
	if err != nil || strings.Join(got, "|") != "v=STSv1; id=20260101|other" {
		t.Errorf("TXT = %q, %v; want both records, the first joined", got, err)
	}
	if got, err := r.TXT(ctx, "example.com"); err != nil || len(got) != 0 {
		t.Errorf("a name without TXT records: %q, %v; want none and no error", got, err)
	}
	if _, err := r.TXT(ctx, "missing.example"); !errors.Is(err, resolve.ErrNoName) {
		t.Errorf("a name that does not exist: %v; want ErrNoName", err)
	}
	_, err = r.TXT(ctx, "broken.example")
	if err == nil || errors.Is(err, resolve.ErrNoName) || !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("SERVFAIL: %v; want an error that says so and is not ErrNoName", err)
	}
}

func TestMXAddrsAndPTR_readTheZoneAsPublished(t *testing.T) {
	r, _ := newResolver(t,
		`dest.example. 300 IN MX 20 MX2.Dest.Example.`,
		`dest.example. 300 IN MX 10 mx1.dest.example.`,
		`null.example. 300 IN MX 0 .`,
		`mx1.dest.example. 300 IN A 192.0.2.10`,
		`mx1.dest.example. 300 IN AAAA 2001:db8::10`,
		`10.2.0.192.in-addr.arpa. 300 IN PTR MX1.dest.example.`,
	)
	ctx := context.Background()
	mxs, err := r.MX(ctx, "dest.example")
	if err != nil || !slices.Equal(mxs, []resolve.MX{{Host: "mx2.dest.example", Preference: 20}, {Host: "mx1.dest.example", Preference: 10}}) {
		t.Errorf("MX = %v, %v", mxs, err)
	}
	if mxs, err := r.MX(ctx, "null.example"); err != nil || !slices.Equal(mxs, []resolve.MX{{Host: ".", Preference: 0}}) {
		t.Errorf("null MX = %v, %v; want the host \".\"", mxs, err)
	}
	addrs, err := r.Addrs(ctx, "MX1.dest.example.")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}) {
		t.Errorf("Addrs = %v, %v; want IPv4 then IPv6", addrs, err)
	}
	if addrs, err := r.Addrs(ctx, "nowhere.example"); err != nil || addrs != nil {
		t.Errorf("Addrs of a missing name = %v, %v; want none and no error", addrs, err)
	}
	names, err := r.PTR(ctx, netip.MustParseAddr("192.0.2.10"))
	if err != nil || !slices.Equal(names, []string{"mx1.dest.example"}) {
		t.Errorf("PTR = %v, %v", names, err)
	}
}

func TestQuery_asksTheNextServerWhenOneFails(t *testing.T) {
	bad := dnstest.NewZone(t, `dest.example. 300 IN A 192.0.2.1`)
	bad.ServFail("dest.example.")
	good := dnstest.NewZone(t, `dest.example. 300 IN A 192.0.2.2`)
	r := resolve.New(dnstest.Start(t, bad), dnstest.Start(t, good))
	addrs, err := r.Addrs(context.Background(), "dest.example")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.2")}) {
		t.Errorf("Addrs = %v, %v; want the second server's answer", addrs, err)
	}
}
