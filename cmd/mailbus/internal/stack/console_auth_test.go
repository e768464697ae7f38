package stack_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/testkit"
)

const (
	acmeAdminToken = "console-test-acme-admin-token"
	aliceToken     = "console-test-acme-alice-token"
)

// withTenantsAndTokens adds a second tenant and two tokens to the test
// seed: acme's administrator and acme's user u-alice.
func withTenantsAndTokens(t *testing.T, seedFile string) {
	t.Helper()
	b, err := os.ReadFile(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	seed := strings.Replace(string(b), "default_server:\n", `  - id: globex
    name: Globex
    time_zone: UTC
    default_from: noreply
    domain_alias: globex.example
    bounce_domain: bounce.globex.example
    domains:
      - id: globex-example
        name: globex.example
        return_path: from
default_server:
`, 1)
	seed += `tokens:
  - token: ` + acmeAdminToken + `
    role: tenant_admin
    tenant_id: acme
    name: acme-admin
  - token: ` + aliceToken + `
    role: user
    tenant_id: acme
    user_id: u-alice
    name: alice
`
	if !strings.Contains(seed, "id: globex") {
		t.Fatalf("the seed changed shape; cannot add a tenant to:\n%s", b)
	}
	if err := os.WriteFile(seedFile, []byte(seed), 0o600); err != nil {
		t.Fatal(err)
	}
}

// consoleClient is a browser without the browser: a cookie jar and forms.
type consoleClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newConsoleClient(t *testing.T, base string) *consoleClient {
	jar, _ := cookiejar.New(nil)
	return &consoleClient{t: t, base: base, c: &http.Client{Jar: jar}}
}

func (c *consoleClient) get(path string) (int, string) {
	c.t.Helper()
	resp, err := c.c.Get(c.base + path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (c *consoleClient) post(path string, form url.Values) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", c.base)
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfInput = regexp.MustCompile(`name="_csrf" value="([^"]+)"`)

// csrf is the CSRF token of the signed-in session, read from a page.
func (c *consoleClient) csrf() string {
	c.t.Helper()
	_, body := c.get("/webhooks")
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		c.t.Fatalf("no CSRF token on the page:\n%s", body)
	}
	return m[1]
}

func (c *consoleClient) signIn(token string) {
	c.t.Helper()
	code, body := c.post("/signin", url.Values{"token": {token}, "next": {"/"}})
	if code != http.StatusOK || !strings.Contains(body, "Sign out") {
		c.t.Fatalf("sign in with a valid token: %d\n%s", code, body)
	}
}

// TestConsole_showsEachPersonOnlyWhatTheirTokenMaySee signs in to the
// console with a tenant administrator's token and with a user's, and
// checks that the console shows what MessageService lets each see and
// nothing else: the tenant's messages but not another tenant's, the
// user's own messages but not a colleague's. It also checks that a token
// the services refuse does not sign in, that a form without the session's
// CSRF token changes nothing, and, as the tenant's administrator, creating
// a relay (refused first with the API's message), exporting the
// suppression list as CSV and filtering the log by time, status and sender.
func TestConsole_showsEachPersonOnlyWhatTheirTokenMaySee(t *testing.T) {
	p := startPipeline(t, nil, func(o *stack.Options) { withTenantsAndTokens(t, o.SeedFile) })
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	send := func(tenant, user, from, idem, subject string) string {
		sub := &mailbusv1.Submission{
			IdempotencyId: idem, TenantId: tenant, UserId: user, Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
			From: &mailbusv1.Address{Email: from}, To: []*mailbusv1.Address{{Email: "rcpt@example.net"}},
			Subject: subject, TextBody: "Hello",
		}
		if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
		return ids.MessageID(tenant, idem)
	}
	alice := send("acme", "u-alice", "alice@acme.example", "auth-alice", "Subject of Alice")
	bob := send("acme", "u-bob", "bob@acme.example", "auth-bob", "Subject of Bob")
	globex := send("globex", "u-gina", "gina@globex.example", "auth-globex", "Subject of Globex")
	for _, id := range []string{alice, bob, globex} {
		p.waitMessage(t, id, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	}

	t.Run("a token the services refuse does not sign in", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		code, body := c.post("/signin", url.Values{"token": {"not-a-token-anybody-has"}})
		if code != http.StatusUnauthorized || !strings.Contains(body, "did not accept this token") {
			t.Fatalf("sign in with an unknown token: %d\n%s", code, body)
		}
		if code, _ := c.get("/messages"); code != http.StatusOK {
			t.Fatalf("GET /messages: %d", code)
		}
		if _, body := c.get("/messages"); !strings.Contains(body, `id="token"`) {
			t.Fatal("the console shows messages without a sign-in")
		}
	})

	t.Run("a tenant administrator sees the tenant, not another", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(acmeAdminToken)
		_, body := c.get("/messages?tenant=globex")
		if !strings.Contains(body, "Subject of Alice") || !strings.Contains(body, "Subject of Bob") {
			t.Fatalf("acme's administrator does not see acme's messages:\n%s", body)
		}
		if strings.Contains(body, "Subject of Globex") || strings.Contains(body, "Globex") {
			t.Fatalf("acme's administrator sees globex:\n%s", body)
		}
		code, body := c.get("/messages/" + globex)
		if code != http.StatusNotFound || strings.Contains(body, "Subject of Globex") {
			t.Fatalf("acme's administrator opened globex's message: %d\n%s", code, body)
		}
		_, body = c.get("/suppressions?tenant=globex")
		if strings.Contains(body, "Globex") {
			t.Fatalf("acme's administrator reached globex's suppression list:\n%s", body)
		}
	})

	t.Run("a user sees their own messages only", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(aliceToken)
		_, body := c.get("/messages")
		if !strings.Contains(body, "Subject of Alice") || strings.Contains(body, "Subject of Bob") || strings.Contains(body, "Subject of Globex") {
			t.Fatalf("alice's message list is not hers alone:\n%s", body)
		}
		if code, body := c.get("/messages/" + bob); code != http.StatusNotFound || strings.Contains(body, "Subject of Bob") {
			t.Fatalf("alice opened bob's message: %d\n%s", code, body)
		}
		// A user may not change the suppression list: the service refuses,
		// and the console says so.
		code, body := c.post("/suppressions/add", url.Values{"_csrf": {c.csrf()}, "address": {"x@example.net"}})
		if code != http.StatusOK || !strings.Contains(body, "Could not add x@example.net") || !strings.Contains(body, "may not change the suppression list") {
			t.Fatalf("alice's suppression: %d\n%s", code, body)
		}
	})

	t.Run("a tenant administrator creates a relay, refused first with the API's words", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(acmeAdminToken)
		form := url.Values{"_csrf": {c.csrf()}, "id": {"console-made"}, "name": {"Made in the console"}, "host": {"smtp.acme.example"},
			"port": {"99999"}, "security": {"RELAY_SECURITY_STARTTLS"}, "auth_mechanism": {"AUTH_MECHANISM_NONE"},
			"priority": {"20"}, "daily_limit": {"500"}, "domains": {"acme.example"}, "kinds": {"EMAIL_KIND_MASS"}, "active": {"on"}}
		// Test the settings before saving them: the project's SMTP test
		// server answers in its own words.
		trial := url.Values{}
		for k, v := range form {
			trial[k] = v
		}
		trial.Set("host", "127.0.0.1")
		trial.Set("port", strconv.Itoa(p.smtp.Port()))
		trial.Set("security", "RELAY_SECURITY_NONE")
		code, body := c.post("/relays/new/test", trial)
		if code != http.StatusOK || !strings.Contains(body, "not saved yet: passed") || !strings.Contains(body, "ESMTP Service Ready") {
			t.Fatalf("testing the settings before saving: %d\n%s", code, body)
		}
		if _, err := mailbusv1.NewConfigServiceClient(p.conn(t)).GetRelay(context.Background(), &mailbusv1.GetRelayRequest{Id: "console-made"}); err == nil {
			t.Fatal("testing the settings saved the relay")
		}
		code, body = c.post("/relays/new", form)
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, "relay.port: must be 1-65535, got 99999") {
			t.Fatalf("a bad port: %d\n%s", code, body)
		}
		form.Set("port", "587")
		code, body = c.post("/relays/new", form)
		if code != http.StatusOK || !strings.Contains(body, "Relay Made in the console saved.") || !strings.Contains(body, `id="relay-console-made"`) {
			t.Fatalf("a good relay: %d\n%s", code, body)
		}
		got, err := mailbusv1.NewConfigServiceClient(p.conn(t)).GetRelay(context.Background(), &mailbusv1.GetRelayRequest{Id: "console-made"})
		if err != nil || got.GetRelay().GetTenantId() != "acme" || got.GetRelay().GetPort() != 587 || got.GetRelay().GetDailyLimit() != 500 ||
			len(got.GetRelay().GetKinds()) != 1 || got.GetRelay().GetKinds()[0] != mailbusv1.EmailKind_EMAIL_KIND_MASS {
			t.Fatalf("the relay the console made: %v, %v", got.GetRelay(), err)
		}
	})

	t.Run("the suppression list exports as CSV", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(acmeAdminToken)
		for _, a := range []string{"csv-one@example.net", "csv-two@example.net"} {
			if code, body := c.post("/suppressions/add", url.Values{"_csrf": {c.csrf()}, "address": {a}, "reason": {"=cmd()"}}); !strings.Contains(body, "Added "+a) {
				t.Fatalf("add %s: %d\n%s", a, code, body)
			}
		}
		resp, err := c.c.Get(p.ConsoleURL + "/suppressions.csv?q=csv-")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		// The list comes in Redis's HSCAN order, which is no order.
		slices.Sort(lines[min(1, len(lines)):])
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/csv") || len(lines) != 3 ||
			lines[0] != "address,reason,source,detail,added" || !strings.HasPrefix(lines[1], "csv-one@example.net,'=cmd(),api,") {
			t.Fatalf("CSV export (%s):\n%s", ct, b)
		}
	})

	t.Run("the message search filters by time and status", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(acmeAdminToken)
		future := time.Now().UTC().Add(time.Hour).Format("2006-01-02T15:04")
		if _, body := c.get("/messages?from=" + future); strings.Contains(body, "Subject of Alice") || !strings.Contains(body, "No message matches.") {
			t.Fatalf("messages after %s:\n%s", future, body)
		}
		if _, body := c.get("/messages?status=bounced"); strings.Contains(body, "Subject of Alice") {
			t.Fatalf("bounced messages show a sent one:\n%s", body)
		}
		if _, body := c.get("/messages?sender=alice%40acme&status=sent"); !strings.Contains(body, "Subject of Alice") || strings.Contains(body, "Subject of Bob") {
			t.Fatalf("sent messages from alice:\n%s", body)
		}
	})

	t.Run("a form without the session's CSRF token changes nothing", func(t *testing.T) {
		c := newConsoleClient(t, p.ConsoleURL)
		c.signIn(acmeAdminToken)
		for _, form := range []url.Values{
			{"address": {"csrf@example.net"}},
			{"address": {"csrf@example.net"}, "_csrf": {"forged"}},
		} {
			if code, _ := c.post("/suppressions/add", form); code != http.StatusForbidden {
				t.Fatalf("POST without a valid CSRF token: %d, want 403", code)
			}
		}
		resp, err := mailbusv1.NewSuppressionServiceClient(p.conn(t)).ListSuppressions(context.Background(),
			&mailbusv1.ListSuppressionsRequest{TenantId: "acme", Addresses: []string{"csrf@example.net"}})
		if err != nil || len(resp.GetSuppressions()) != 0 {
			t.Fatalf("a forged form added a suppression: %v %v", resp, err)
		}
	})
}

// TestConsole_showsARelayDisabledAfterThreeFailures points
// acme's relay at a port where nothing listens, so that every
// delivery fails on it and falls back to the default server. After the
// third failure the pipeline disables the relay for the rest of the
// tenant's day and mails the administrators; the relays page must say so,
// with the day's end, and show the failures in the error's own words.
func TestConsole_showsARelayDisabledAfterThreeFailures(t *testing.T) {
	dead := freePort(t)
	p := startPipeline(t, nil, func(o *stack.Options) {
		b, err := os.ReadFile(o.SeedFile)
		if err != nil {
			t.Fatal(err)
		}
		seed := regexp.MustCompile(`(?m)^        port: \d+$`).ReplaceAllString(string(b), "        port: "+dead)
		seed = strings.Replace(seed, "    time_zone: Europe/Berlin\n", "    time_zone: Europe/Berlin\n    admin_emails: [ops@acme.example]\n", 1)
		if err := os.WriteFile(o.SeedFile, []byte(seed), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	for i := range 4 {
		id := submit(t, p, "disable-"+strconv.Itoa(i), "carol@example.net")
		// Each one still leaves, through the default server.
		p.waitMessage(t, id, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	}
	c := newConsoleClient(t, p.ConsoleURL)
	c.signIn(p.AdminToken)
	var body string
	deadline := time.Now().Add(stack.WaitTimeout)
	for {
		_, body = c.get("/relays")
		if strings.Contains(body, "disabled until") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	loc, _ := time.LoadLocation("Europe/Berlin")
	midnight := limits.NextMidnight(time.Now(), loc).UTC().Format("2006-01-02 15:04")
	if !strings.Contains(body, "disabled until "+midnight) {
		t.Fatalf("the relays page does not show the relay disabled until %s UTC:\n%s", midnight, body)
	}
	// The failures were the relay's own, not a recipient's: they are in
	// the messages' histories, in the words of the connection's error.
	if !strings.Contains(body, "relay failed") || !strings.Contains(body, "connection refused") {
		t.Fatalf("the relays page does not show the relay's last failures:\n%s", body)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}
