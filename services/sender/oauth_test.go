package sender_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/bus"
	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/services/sender"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// publishMessages publishes deliveries [from, from+n) of distinct messages
// through relayID, so that they spread over the partitions (and replicas).
func publishMessages(t testing.TB, busCfg bus.Config, relayID string, from, n int) {
	t.Helper()
	pub, err := bus.NewPublisher(busCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := from; i < from+n; i++ {
		d := &mailbusv1.Delivery{
			TenantId: "acme", MessageId: fmt.Sprintf("m%d", i), DeliveryId: fmt.Sprintf("d%d", i), Attempt: 1,
			QueueTime: timestamppb.Now(),
			Envelope:  &mailbusv1.Envelope{MailFrom: "bounces@acme.example", RcptTo: []string{fmt.Sprintf("rcpt%d@dest.example", i)}},
			Route:     &mailbusv1.Route{Kind: mailbusv1.RouteKind_ROUTE_KIND_RELAY, RelayId: relayID},
			Message:   []byte(fmt.Sprintf("From: <alice@acme.example>\r\nSubject: %d\r\n\r\nhello\r\n", i)),
		}
		if err := bus.Publish(pub, bus.TopicSigned, d, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// An XOAUTH2 relay whose access tokens expire keeps taking mail: two
// sender replicas get their tokens from a local OAuth server through the
// refresh token, share them (one refresh for both), replace a token the
// relay rejects, and refresh one that expires. The SMTP server accepts
// only tokens the OAuth server says are current.
func TestSender_anOAuthRelayKeepsTakingMailAsItsAccessTokensExpire(t *testing.T) {
	busCfg := testkit.BusConfig(testkit.StartBroker(t))
	busCfg.HandlerTimeout = 2 * time.Minute
	rdb := redis.NewClient(&redis.Options{Addr: testkit.StartRedis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	oauth := testkit.StartOAuthServer(t, time.Hour)
	var (
		mu       sync.Mutex
		accepted = map[string]int{}
		refused  int
	)
	srv := testkit.StartSMTP(t, testkit.SMTPAllowInsecureAuth(), testkit.SMTPAuthMechanisms("XOAUTH2"),
		testkit.SMTPBearerTokenFunc(func(user, token string) bool {
			ok := user == oauth.User && oauth.Valid(token)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				accepted[token]++
			} else {
				refused++
			}
			return ok
		}))
	relay := relayTo("gmail", srv, 4)
	relay.Relay.AllowPlaintextAuth = true
	relay.Relay.Auth = &mailbusv1.RelayAuth{Mechanism: mailbusv1.AuthMechanism_AUTH_MECHANISM_XOAUTH2, Username: oauth.User,
		Oauth: &mailbusv1.RelayOAuth{TokenUrl: oauth.TokenURL, ClientId: oauth.ClientID}}
	// The stored access token is long dead; the refresh token is what counts.
	relay.OAuthToken = "expired-long-ago"
	relay.OAuthClientSecret, relay.OAuthRefreshToken = oauth.ClientSecret, oauth.IssueRefreshToken()
	cfg := staticConfig{tenant: &mailbusv1.Tenant{Id: "acme", TimeZone: "UTC", Active: true},
		relays: map[string]*configclient.RelayWithSecrets{"gmail": relay}}
	// One message per connection: every message authenticates afresh.
	perMessage := func(c *sender.Config) { c.Pool.MaxMessagesPerConn = 1 }
	startSender(t, busCfg, rdb, cfg, perMessage)
	startSender(t, busCfg, rdb, cfg, perMessage)

	publishMessages(t, busCfg, "gmail", 0, 10)
	srv.WaitMessages(t, 10)
	if n := oauth.Grants("refresh_token"); n != 1 {
		t.Errorf("two replicas made %d refreshes for their first token, want 1 (shared)", n)
	}

	// The provider revokes the token: the relay answers 535, each replica
	// swaps it once, and the first swap serves both.
	mu.Lock()
	var current string
	for tok := range accepted {
		current = tok
	}
	mu.Unlock()
	oauth.Revoke(current)
	publishMessages(t, busCfg, "gmail", 10, 10)
	srv.WaitMessages(t, 20)
	if n := oauth.Grants("refresh_token"); n != 2 {
		t.Errorf("%d refreshes after the token was revoked, want 2", n)
	}

	// Tokens that live 10 s expire during the batches: they are refreshed
	// before or when they run out, and mail keeps flowing. (At 4 s a
	// loaded CI machine took longer than a token's life between its
	// refresh and the AUTH that used it, which no provider's hour-long
	// tokens come near.)
	oauth.SetTokenLifetime(10 * time.Second)
	mu.Lock()
	for tok := range accepted {
		oauth.Revoke(tok)
	}
	mu.Unlock()
	for batch := range 3 {
		publishMessages(t, busCfg, "gmail", 20+5*batch, 5)
		// Every message must arrive: one whose AUTH failed after its one
		// token swap would go to mail.fallback as a relay failure, and
		// no router takes it back here. (Two of 25 did in CI runs while
		// a replica authenticated with the token it had before the other
		// replica replaced it; see pkg/oauthtoken's
		// TestTokens_aReplicaUsesTheTokenAnotherReplicaSharedSinceItsLast.)
		// Mostly in seconds; the deadline is for a loaded machine.
		waitReceived(t, srv, 25+5*batch, 2*time.Minute)
		time.Sleep(5 * time.Second) // half a token's life between batches
	}
	mu.Lock()
	defer mu.Unlock()
	if n := oauth.Grants("refresh_token"); n < 4 {
		t.Errorf("%d refreshes with 10 s tokens over 35 messages, want more than the 2 before", n)
	}
	if len(srv.Messages()) != 35 {
		t.Errorf("%d messages delivered, want 35", len(srv.Messages()))
	}
	t.Logf("%d refreshes, %d distinct tokens accepted, %d AUTH attempts refused", oauth.Grants("refresh_token"), len(accepted), refused)
}

// waitReceived waits up to d for the server to have accepted n messages.
func waitReceived(t *testing.T, srv *testkit.SMTPServer, n int, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); srv.Received() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived in %s", srv.Received(), n, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
