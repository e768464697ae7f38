package sender_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
	"github.com/mailbus/mailbus/services/sender"
)

// publishDirect publishes n deliveries for direct MX delivery to rcpt's
// domain, one message each.
func publishDirect(t *testing.T, busCfg bus.Config, prefix, domain string, n int) {
	t.Helper()
	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := range n {
		id := fmt.Sprintf("%s%d", prefix, i)
		d := &mailbusv1.Delivery{
			TenantId: "acme", MessageId: id, DeliveryId: id + ".0", Attempt: 1, QueueTime: timestamppb.Now(),
			Envelope: &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: []string{id + "@" + domain}},
			Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX},
			Message:  []byte("From: <alice@acme.example>\r\nSubject: " + id + "\r\n\r\nhello\r\n"),
		}
		if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// Two sender replicas (here each on its own broker, so that both surely
// have mail for the site at once) share one Redis: together they keep no
// more connections open to a provider than its site allows, whichever of
// its domains and MX hosts the mail goes to.
func TestSender_twoReplicasTogetherKeepAnMXSitesConnectionLimit(t *testing.T) {
	const siteConns = 3
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	g := newGate()
	mxSrv := testkit.StartSMTP(t, testkit.SMTPReplies(g.reply))
	releaseAtEnd(t, g)
	dnsAddr := dnstest.Start(t, dnstest.NewZone(t,
		"workspace.example. 60 IN MX 10 aspmx.l.google.com.",
		"gmail.example. 60 IN MX 5 gmail-smtp-in.l.google.com.",
		"aspmx.l.google.com. 60 IN A 127.0.0.1",
		"gmail-smtp-in.l.google.com. 60 IN A 127.0.0.2",
	))
	shaping := health.DefaultShaping()
	shaping.Sites = []health.Site{{Name: "google", MX: []string{"google.com"}, Rule: health.Rule{MaxConnections: siteConns}}}
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true}, relays: map[string]*configclient.RelayWithSecrets{}}
	direct := func(c *sender.Config) {
		c.DNSServers = []string{dnsAddr}
		c.Shaping = &shaping
		// Port 25 of every MX address is the test server.
		c.Pool.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, mxSrv.Addr())
		}
	}
	for i, domain := range []string{"workspace.example", "gmail.example"} {
		busCfg := testkit.BusConfig(testkit.StartBroker(t))
		busCfg.HandlerTimeout = 2 * time.Minute
		publishDirect(t, busCfg, fmt.Sprintf("r%d-", i), domain, 10)
		startSender(t, busCfg, rdb, cfg, direct)
	}

	g.waitHeld(t, siteConns)
	g.release()
	mxSrv.WaitMessages(t, 20)
	if peak := mxSrv.PeakOpenConnections(); peak > siteConns {
		t.Errorf("%d connections to Google's MX hosts were open at once, want at most the site's %d", peak, siteConns)
	}
	if peak := g.maxHeld(); peak != siteConns {
		t.Errorf("%d transactions were in flight at once, want the site's %d", peak, siteConns)
	}
}
