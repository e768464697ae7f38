package deliver

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/bounce"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/health"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/resolve"
	"github.com/mailbus/mailbus/pkg/smtpclient"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/pkg/testkit/dnstest"
)

// directConfig is an in-memory Config whose default server is direct MX.
type directConfig struct{}

func (directConfig) Tenant(id string) (*mailbusv1.Tenant, bool) {
	return &mailbusv1.Tenant{Id: id, TimeZone: "UTC"}, id == "acme"
}
func (directConfig) Relay(string) (*configclient.RelayWithSecrets, bool) { return nil, false }
func (directConfig) DefaultServer() configclient.DefaultServer {
	return configclient.DefaultServer{Mode: mailbusv1.DefaultServerMode_DEFAULT_SERVER_MODE_DIRECT_MX}
}

func TestDeliver_directMXLooksUpMXBouncesNullMXAndNXDOMAINAndDefersADNSTimeout(t *testing.T) {
	smtpSrv := testkit.StartSMTP(t)
	zone := dnstest.NewZone(t,
		"good.example. 300 IN MX 20 mx2.good.example.",
		"good.example. 300 IN MX 10 mx1.good.example.",
		"mx1.good.example. 300 IN A 127.0.0.1",
		"mx2.good.example. 300 IN A 127.0.0.2",
		"nullmx.example. 300 IN MX 0 .",
	)
	zone.Silent("slow.example.")
	dnsAddr := dnstest.Start(t, zone)
	// MX hosts listen on port 25; the test server listens elsewhere.
	var mu sync.Mutex
	var dialed []string
	pool := smtpclient.NewPool(smtpclient.PoolConfig{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, _ := net.SplitHostPort(addr)
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		if port == "25" && host == "127.0.0.1" {
			addr = net.JoinHostPort(host, strconv.Itoa(smtpSrv.Port()))
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}})
	t.Cleanup(func() { pool.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { rdb.Close() })
	// The timeout is what slow.example costs, and what every answer may
	// take on a busy machine.
	resolver := &resolve.Resolver{Servers: []string{dnsAddr}, Timeout: 5 * time.Second}
	d := New(directConfig{}, pool, resolver, limits.New(rdb), health.New(rdb, limits.New(rdb), health.Options{}), bounce.Classify, Options{HeloName: "mailbus.test"}, slog.New(slog.DiscardHandler))

	dl := &mailbusv1.Delivery{
		DeliveryId: "m1.0", MessageId: "m1", TenantId: "acme", Attempt: 1,
		Route:    &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_DIRECT_MX},
		Envelope: &mailbusv1.Envelope{MailFrom: "news@acme.example", RcptTo: []string{"a@good.example", "b@nx.example", "c@nullmx.example", "d@slow.example"}},
		Message:  []byte("From: news@acme.example\r\nTo: a@good.example\r\nSubject: hi\r\n\r\nhi\r\n"),
	}
	out, err := d.Deliver(context.Background(), dl)
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]mailbusv1.DeliveryStatus{}
	for _, e := range out.Events {
		for _, r := range e.GetRecipients() {
			status[r] = e.GetStatus()
		}
	}
	want := map[string]mailbusv1.DeliveryStatus{
		"a@good.example":   mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT,
		"b@nx.example":     mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		"c@nullmx.example": mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED,
		"d@slow.example":   mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED,
	}
	for r, w := range want {
		if status[r] != w {
			t.Errorf("%s: %v, want %v", r, status[r], w)
		}
	}
	if out.Retry == nil || len(out.Retry.GetEnvelope().GetRcptTo()) != 1 || out.Retry.GetEnvelope().GetRcptTo()[0] != "d@slow.example" {
		t.Errorf("retry %v, want only d@slow.example", out.Retry.GetEnvelope())
	}
	got := smtpSrv.WaitMessages(t, 1)[0]
	if len(got.To) != 1 || got.To[0] != "a@good.example" {
		t.Errorf("MX host received mail for %v", got.To)
	}
	mu.Lock()
	defer mu.Unlock()
	// Preference 10 (mx1, 127.0.0.1) was tried first and took it.
	if len(dialed) == 0 || dialed[0] != "127.0.0.1:25" {
		t.Errorf("dialed %v, want the preferred MX host 127.0.0.1:25 first", dialed)
	}
}
