package config_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
	"github.com/mailbus/mailbus/services/config"
)

// dnsSetup creates tenant acme with acme.example, a DKIM key, a relay and a
// default relay, and returns the key and a zone that has every record its
// mail needs. acme's return path is VERP on bounce.mailbus.test, so DMARC
// passes through DKIM.
func dnsSetup(t *testing.T, admin pb.ConfigServiceClient) (*pb.DkimKey, []string) {
	t.Helper()
	ctx := ctxT(t)
	setupAcme(t, admin)
	d, err := admin.GetDomain(ctx, &pb.GetDomainRequest{Id: domainID(t, admin, "acme.example")})
	if err != nil {
		t.Fatal(err)
	}
	k, err := admin.GenerateDkimKey(ctx, &pb.GenerateDkimKeyRequest{DomainId: d.Domain.Id, Selector: "s1", Algorithm: pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateRelay(ctx, &pb.CreateRelayRequest{Relay: plainRelay("r1", "acme", "acme.example")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetDefaultServer(ctx, &pb.SetDefaultServerRequest{Server: &pb.DefaultServer{
		Mode: pb.DefaultServerMode_DEFAULT_SERVER_MODE_RELAY,
		Relay: &pb.Relay{Name: "system", Host: "smtp.mailbus.test", Port: 587, Security: pb.RelaySecurity_RELAY_SECURITY_STARTTLS,
			Auth: &pb.RelayAuth{Mechanism: pb.AuthMechanism_AUTH_MECHANISM_NONE}, Active: true},
	}}); err != nil {
		t.Fatal(err)
	}
	return k.Key, []string{
		"smtp.acme.example. IN A 198.51.100.7",
		"smtp.mailbus.test. IN A 198.51.100.8",
		`acme.example. IN TXT "v=spf1 ip4:198.51.100.7 ip4:198.51.100.8 -all"`,
		`bounce.mailbus.test. IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
		"bounce.mailbus.test. IN MX 10 mx.mailbus.test.",
		dkimkey.ZoneTXT(k.Key.DnsName, k.Key.DnsTxtValue),
		`_dmarc.acme.example. IN TXT "v=DMARC1; p=quarantine"`,
	}
}

func domainID(t *testing.T, c pb.ConfigServiceClient, name string) string {
	t.Helper()
	resp, err := c.ListDomains(ctxT(t), &pb.ListDomainsRequest{TenantId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range resp.Domains {
		if d.Name == name {
			return d.Id
		}
	}
	t.Fatalf("no domain %s", name)
	return ""
}

func itemsByKey(resp *pb.CheckDomainResponse) map[string]*pb.DnsCheckItem {
	out := map[string]*pb.DnsCheckItem{}
	for _, it := range resp.GetItems() {
		out[it.Kind+" "+it.Name] = it
	}
	return out
}

func TestCheckDomain_overTheAPISaysWhatToPublishAndIsTenantScoped(t *testing.T) {
	zone := dnstest.NewZone(t)
	e := start(t, config.Config{DatabaseURL: sqliteURL(t), DNSServers: []string{dnstest.Start(t, zone)}, BounceMXHost: "mx.mailbus.test"}, "")
	admin := client(t, e, adminToken)
	key, records := dnsSetup(t, admin)
	// Everything but the DKIM record.
	for _, r := range records {
		if !strings.HasPrefix(r, "s1._domainkey.") {
			zone.Add(t, r)
		}
	}
	ctx := ctxT(t)

	acmeAdmin := client(t, e, acmeAdminToken)
	resp, err := acmeAdmin.CheckDomain(ctx, &pb.CheckDomainRequest{Name: "ACME.example."})
	if err != nil {
		t.Fatal(err)
	}
	items := itemsByKey(resp)
	for _, it := range resp.Items {
		t.Logf("%s %s %s: %s | %s", it.Kind, it.Name, it.Status, it.Detail, it.Publish)
	}
	dk := items["dkim s1._domainkey.acme.example"]
	if dk.GetStatus() != pb.DnsCheckStatus_DNS_CHECK_STATUS_MISSING {
		t.Fatalf("DKIM item %v, want missing", dk)
	}
	// The record to publish is the one GenerateDkimKey (and `mailbus
	// domains`) gives.
	if want := dkimkey.ZoneTXT(key.DnsName, key.DnsTxtValue); dk.Publish != want {
		t.Errorf("DKIM publish %q, want %q", dk.Publish, want)
	}
	if al := items["dmarc_alignment acme.example"]; al.GetStatus() != pb.DnsCheckStatus_DNS_CHECK_STATUS_WRONG ||
		!strings.Contains(strings.Join(al.Advice, " "), "p=quarantine") {
		t.Errorf("alignment item %v: want wrong with a p=quarantine warning (no DKIM, VERP on another domain)", al)
	}

	zone.Add(t, dkimkey.ZoneTXT(key.DnsName, key.DnsTxtValue))
	resp, err = admin.CheckDomain(ctx, &pb.CheckDomainRequest{DomainId: domainID(t, admin, "acme.example")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Domain != "acme.example" || resp.CheckTime == nil {
		t.Errorf("response names %q at %v", resp.Domain, resp.CheckTime)
	}
	for _, it := range resp.Items {
		if it.Status != pb.DnsCheckStatus_DNS_CHECK_STATUS_FOUND {
			t.Errorf("%s %s: %s (%s), want found", it.Kind, it.Name, it.Status, it.Detail)
		}
	}
	for _, k := range []string{"spf bounce.mailbus.test", "spf acme.example", "dkim s1._domainkey.acme.example",
		"dmarc _dmarc.acme.example", "dmarc_alignment acme.example", "bounce_mx bounce.mailbus.test"} {
		if _, ok := itemsByKey(resp)[k]; !ok {
			t.Errorf("no item %s", k)
		}
	}

	// Another tenant's administrator may not check acme's domain; an
	// unknown name is not found.
	_, err = client(t, e, otherAdminToken).CheckDomain(ctx, &pb.CheckDomainRequest{Name: "acme.example"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("other tenant: %v, want PermissionDenied", err)
	}
	_, err = admin.CheckDomain(ctx, &pb.CheckDomainRequest{Name: "nope.example"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown domain: %v, want NotFound", err)
	}
	_, err = admin.CheckDomain(ctx, &pb.CheckDomainRequest{})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("no domain: %v, want InvalidArgument", err)
	}
}

// eventLog collects mail.events.
type eventLog struct {
	mu  sync.Mutex
	evs []*pb.DeliveryEvent
}

func (l *eventLog) collect(t *testing.T, ch <-chan *message.Message) {
	for m := range ch {
		ev := &pb.DeliveryEvent{}
		err := bus.Decode(m, ev)
		m.Ack()
		if err != nil {
			t.Errorf("decode event: %v", err)
			continue
		}
		l.mu.Lock()
		l.evs = append(l.evs, ev)
		l.mu.Unlock()
	}
}

func (l *eventLog) dnsErrors() []*pb.DeliveryEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*pb.DeliveryEvent
	for _, ev := range l.evs {
		if ev.Warning == config.ReasonDomainDNSError {
			out = append(out, ev)
		}
	}
	return out
}

func TestDNSMonitor_warnsOnceWhenARecordThatWasRightGoesWrong(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	if err := bus.EnsureTopics(ctx, busCfg, []string{bus.TopicEvents}, 1); err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	sub, err := bus.NewSubscriber(busCfg, "test.events", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	ch, err := sub.Subscribe(ctx, bus.TopicEvents)
	if err != nil {
		t.Fatal(err)
	}
	var log eventLog
	go log.collect(t, ch)

	// The store is set up before the service that checks runs, so that
	// its first round sees the whole configuration.
	zone := dnstest.NewZone(t)
	dnsAddr := dnstest.Start(t, zone)
	dbURL := sqliteURL(t)
	setupEnv := start(t, config.Config{DatabaseURL: dbURL}, "")
	key, records := dnsSetup(t, client(t, setupEnv, adminToken))
	setupEnv.stop()
	for _, r := range records {
		// No DMARC record: it was never right, so it never warns.
		if !strings.HasPrefix(r, "_dmarc.") {
			zone.Add(t, r)
		}
	}

	svc := config.New(config.Config{
		DatabaseURL: dbURL, Tokens: testTokens(), PollInterval: testPollInterval,
		DNSServers: []string{dnsAddr}, BounceMXHost: "mx.mailbus.test", DNSCheckInterval: 100 * time.Millisecond,
	}, config.Deps{Log: testLogger(t), Sealer: testSealer(t), Events: pub})
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServe := context.WithCancel(ctx)
	done := make(chan error, 1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- svc.Serve(serveCtx, lis) }()
	t.Cleanup(func() { stopServe(); <-done })

	// Once the monitor has looked at the key's record, it knows it right.
	dkimName := key.DnsName + "."
	testkit.Eventually(t, 60*time.Second, func() bool { return zone.Queries(dkimName, "TXT") >= 1 },
		"the periodic check looks up %s", dkimName)
	other, err := dkimkey.Generate(pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256)
	if err != nil {
		t.Fatal(err)
	}
	otherTXT, _ := dkimkey.DNSRecord(other)
	zone.Replace(t, dkimName, "TXT", dkimkey.ZoneTXT(key.DnsName, otherTXT))

	testkit.Eventually(t, 60*time.Second, func() bool { return len(log.dnsErrors()) >= 2 }, "domain_dns_error events")
	// Later rounds see the record still wrong and say nothing more; a
	// name server that fails (SERVFAIL for the bounce domain, whose MX and
	// SPF were right) is not a broken record either.
	zone.ServFail("bounce.mailbus.test.")
	seen := zone.Queries(dkimName, "TXT")
	testkit.Eventually(t, 60*time.Second, func() bool { return zone.Queries(dkimName, "TXT") >= seen+3 },
		"three more rounds of the periodic check")
	// The key's record broke, and with it DMARC alignment (the return
	// path is on another domain); the DMARC record was never right.
	byKind := map[string]*pb.DeliveryEvent{}
	for _, ev := range log.dnsErrors() {
		t.Logf("event: %s", ev.Detail)
		if byKind[ev.Attributes["kind"]] != nil {
			t.Errorf("a second %s event", ev.Attributes["kind"])
		}
		byKind[ev.Attributes["kind"]] = ev
	}
	if len(byKind) != 2 || byKind["dkim"] == nil || byKind["dmarc_alignment"] == nil {
		t.Fatalf("events for %v, want dkim and dmarc_alignment", byKind)
	}
	ev := byKind["dkim"]
	if ev.TenantId != "acme" || ev.Attributes["kind"] != "dkim" || ev.Attributes["name"] != key.DnsName ||
		ev.Attributes["status"] != "wrong" || ev.Attributes["domain"] != "acme.example" || ev.EventId == "" ||
		ev.Attributes["publish"] != dkimkey.ZoneTXT(key.DnsName, key.DnsTxtValue) || !strings.Contains(ev.Detail, "another key") {
		t.Errorf("event %v", ev)
	}
}
