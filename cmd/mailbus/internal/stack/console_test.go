package stack_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
	"github.com/mailbus/mailbus/pkg/auth"
	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

// browserWait bounds every step in the browser: a page, a click and the
// page it leads to. Generous, because CI shares two cores; nothing is
// timed, a step only waits for what it needs to see.
const browserWait = 2 * time.Minute

// screenshotDir is where the console test keeps a PNG of every page it
// visits, for a person to look at: $MAILBUS_SCREENSHOTS, or
// testdata/screenshots next to this test (ignored by git).
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("MAILBUS_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("testdata", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	return abs
}

// chromiumPath finds Debian's chromium (CI installs it; see .ci/run).
func chromiumPath(t *testing.T) string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: install Debian's chromium (apt-get install chromium) or set CHROMIUM")
	return ""
}

// browser is a headless Chromium driven through the DevTools protocol.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox refuses to start
		chromedp.WindowSize(1440, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first run starts the browser, which lives as long as the
	// context of that run: it must have no deadline (the test's own
	// timeout bounds it).
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, dir: screenshotDir(t)}
}

// do runs one step's actions, each step with its own generous deadline.
func (b *browser) do(step string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		lctx, lcancel := context.WithTimeout(b.ctx, 10*time.Second)
		loc, _ := chromedp.Run(lctx, chromedp.Location())
		body, _ := chromedp.Run(lctx, chromedp.Text(chromedp.CSS("body")))
		lcancel()
		b.shot("failed-" + strings.ReplaceAll(step, " ", "-"))
		b.t.Fatalf("%s: %v\nat %s, the page says:\n%s", step, err, loc, body)
	}
}

// text returns the visible text of the first element sel matches.
func (b *browser) text(sel string) string {
	b.t.Helper()
	b.do("wait for "+sel, chromedp.WaitVisible(chromedp.CSS(sel)))
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

// shot saves the whole page as name.png.
func (b *browser) shot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		b.t.Errorf("write %s: %v", path, err)
	}
}

func mustContain(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Fatalf("%s does not show %q; it shows:\n%s", what, w, got)
		}
	}
}

// TestConsole_adminSignsInFindsRetriesCancelsTestsARelayAndManagesSuppressions
// runs `mailbus dev` as make run does, takes the console's address from
// its ready line, and drives the console in headless Chromium as an
// administrator would: sign in with the admin token, look at the
// overview, search for a sent message and open it, retry a failed one,
// cancel a deferred one from the list, test a relay and read the server's
// words, see the API's validation message for a bad port, read the DKIM
// records, add and remove a suppression, and open the webhooks page. Each
// page visited is saved as a PNG (see screenshotDir). What the pages claim
// is checked against the gRPC services the console calls.
func TestConsole_adminSignsInFindsRetriesCancelsTestsARelayAndManagesSuppressions(t *testing.T) {
	const greeting = "relay.console-test.example"
	srv := testkit.StartSMTP(t, testkit.SMTPDomain(greeting),
		testkit.SMTPReplies(
			testkit.SMTPReplyToRcpt("nobody@example.net", testkit.SMTPReply{Code: 550, Enhanced: "5.1.1", Text: "nobody@example.net: no such user here"}),
			testkit.SMTPReplyToRcpt("later@example.net", testkit.SMTPReply{Code: 451, Enhanced: "4.2.0", Text: "greylisted, come back later"}),
		))
	dir := t.TempDir()
	seed := writeSeed(t, dir, srv.Port())
	withDailyLimits(t, seed) // the relay's card shows its usage against one
	dev := startDevProcess(t, dir, seed, 4)
	if !strings.HasPrefix(dev.consoleURL, "http://127.0.0.1:") {
		t.Fatalf("the ready line of mailbus dev names no console address (console=%q)", dev.consoleURL)
	}
	tokenBytes, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenBytes))
	conn, err := grpc.NewClient(dev.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: token, AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	messages := mailbusv1.NewMessageServiceClient(conn)
	cfg := mailbusv1.NewConfigServiceClient(conn)
	supp := mailbusv1.NewSuppressionServiceClient(conn)
	hooks := mailbusv1.NewWebhookServiceClient(conn)

	// Mail for the log: one sent, one bounced by the relay, one deferred
	// by it, one refused by the router (an address without a domain).
	pub, err := bus.NewPublisher(testkit.BusConfig(dev.brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	send := func(idem, to, subject string) string {
		sub := &mailbusv1.Submission{
			IdempotencyId: idem, TenantId: "acme", UserId: "u-alice", Kind: mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
			From: &mailbusv1.Address{Name: "Alice", Email: "alice@acme.example"}, To: []*mailbusv1.Address{{Email: to}},
			Subject: subject, TextBody: "Hello", CampaignId: "spring-sale",
		}
		if err := bus.Publish(pub, bus.TopicSubmit, sub, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
		return ids.MessageID("acme", idem)
	}
	sentID := send("console-sent", "bob@example.net", "Your order 1001 has shipped")
	bouncedID := send("console-bounced", "nobody@example.net", "Welcome aboard")
	deferredID := send("console-deferred", "later@example.net", "Weekly digest")
	failedID := send("console-failed", "bob@", "Invoice 2002")
	pub.Close()
	wait := func(id string, want mailbusv1.DeliveryStatus) *mailbusv1.Message {
		t.Helper()
		deadline := time.Now().Add(2 * stack.WaitTimeout)
		for {
			resp, err := messages.GetMessage(context.Background(), &mailbusv1.GetMessageRequest{Id: id})
			if err == nil && resp.GetMessage().GetStatus() == want {
				return resp.GetMessage()
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %s did not become %v: %v %v", id, want, resp.GetMessage(), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	sent := wait(sentID, mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT)
	wait(bouncedID, mailbusv1.DeliveryStatus_DELIVERY_STATUS_BOUNCED)
	wait(deferredID, mailbusv1.DeliveryStatus_DELIVERY_STATUS_DEFERRED)
	wait(failedID, mailbusv1.DeliveryStatus_DELIVERY_STATUS_FAILED)

	b := startBrowser(t)
	base := dev.consoleURL

	// Sign in: the console sends strangers to the sign-in page.
	b.do("open the console", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	b.shot("01-sign-in")
	b.do("sign in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	b.shot("02-overview")
	mustContain(t, "the overview", b.text("main"), "Recipients per hour", "Bounces and failures by reason", "Top relays", "userunknown", "relay")

	// Find the sent message by its recipient and open it.
	b.do("search by recipient", chromedp.Navigate(base+"/messages"), chromedp.WaitVisible(chromedp.CSS("#search")),
		chromedp.SendKeys(chromedp.CSS(`input[name=recipient]`), "bob@example.net"),
		chromedp.SendKeys(chromedp.CSS(`input[name=campaign]`), "spring"),
		chromedp.Click(chromedp.CSS("#search-button")),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/messages/`+sentID+`"]`)))
	list := b.text("#messages")
	mustContain(t, "the search result", list, "Your order 1001 has shipped")
	if strings.Contains(list, "Welcome aboard") || strings.Contains(list, "Weekly digest") {
		t.Fatalf("the search for bob@example.net shows other recipients' messages:\n%s", list)
	}
	b.shot("03-messages-search")
	b.do("open the sent message", chromedp.Click(chromedp.CSS(`a[href="/messages/`+sentID+`"]`)),
		chromedp.WaitVisible(chromedp.CSS("#recipients")))
	b.shot("04-message-sent")
	reply := sent.GetRecipients()[0].GetReply()
	mustContain(t, "the sent message's page", b.text("main"), "bob@example.net", "sent", "relay", // the relay's name from the seed
		reply.GetText())

	// The bounced message shows the server's reply and the bounce reason.
	b.do("open the bounced message", chromedp.Navigate(base+"/messages/"+bouncedID), chromedp.WaitVisible(chromedp.CSS("#recipients")))
	mustContain(t, "the bounced message's page", b.text("#recipients"), "bounced", "550 5.1.1 nobody@example.net: no such user here", "userunknown")
	b.shot("05-message-bounced")

	// Retry the failed message.
	b.do("find the failed message", chromedp.Navigate(base+"/messages?status=failed"),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/messages/`+failedID+`"]`)),
		chromedp.Click(chromedp.CSS(`a[href="/messages/`+failedID+`"]`)), chromedp.WaitVisible(chromedp.CSS("#retry")))
	b.do("retry it", chromedp.Click(chromedp.CSS("#retry")), chromedp.WaitVisible(chromedp.CSS("#flash")))
	flash := b.text("#flash")
	b.shot("06-message-retried")
	after, err := messages.GetMessage(context.Background(), &mailbusv1.GetMessageRequest{Id: failedID})
	if err != nil {
		t.Fatal(err)
	}
	retried := false
	for _, ev := range after.GetMessage().GetHistory() {
		retried = retried || ev.GetReason() == "retry_requested"
	}
	if retried {
		mustContain(t, "the notice after a retry", flash, "Retry: 1 recipient.")
	} else {
		// MessageService refused: the console must say so in its words.
		_, rerr := messages.RetryMessage(context.Background(), &mailbusv1.RetryMessageRequest{Id: failedID})
		if rerr == nil {
			t.Fatalf("the console said %q, but the log has no retry and MessageService accepts one", flash)
		}
		mustContain(t, "the notice after a refused retry", flash, "Retry failed: "+status.Convert(rerr).Message())
	}

	// Cancel the deferred message from the list (a bulk action).
	b.do("cancel from the list", chromedp.Navigate(base+"/messages?status=deferred"),
		chromedp.WaitVisible(chromedp.CSS(`input[name=id][value="`+deferredID+`"]`)),
		chromedp.Click(chromedp.CSS(`input[name=id][value="`+deferredID+`"]`)),
		chromedp.Click(chromedp.CSS("#bulk-cancel")), chromedp.WaitVisible(chromedp.CSS("#flash")))
	mustContain(t, "the notice after a bulk cancel", b.text("#flash"), "Cancel of 1 message: 1 recipient changed.")
	b.shot("07-messages-bulk-cancelled")
	wait(deferredID, mailbusv1.DeliveryStatus_DELIVERY_STATUS_CANCELLED)

	// Relays: status and usage, then a connection test in the server's words.
	b.do("open the relays", chromedp.Navigate(base+"/relays"), chromedp.WaitVisible(chromedp.CSS("#relay-acme-relay")))
	mustContain(t, "the relay card", b.text("#relay-acme-relay"), "active", "Today: 1 of 1000", "nobody@example.net", "550 5.1.1")
	b.shot("08-relays")
	b.do("test the relay", chromedp.Click(chromedp.CSS("#relay-acme-relay .test-relay")), chromedp.WaitVisible(chromedp.CSS("#test-result")))
	result := b.text("#test-result")
	b.shot("09-relay-test")
	test, err := cfg.TestRelay(context.Background(), &mailbusv1.TestRelayRequest{RelayId: "acme-relay"})
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "the relay test", result, "passed", greeting)
	for _, st := range test.GetSteps() {
		want := st.GetDetail()
		if r := st.GetReply(); r.GetCode() != 0 {
			want = strings.Fields(r.GetText())[0] // the server's words; the rest of a line may differ between two tests (ids)
		}
		mustContain(t, "the relay test", result, st.GetName(), want)
	}

	// Editing a relay shows the API's own validation message.
	b.do("edit the relay with a bad port", chromedp.Navigate(base+"/relays/acme-relay"), chromedp.WaitVisible(chromedp.CSS("#relay-form")),
		chromedp.SetValue(chromedp.CSS("#relay-port"), "0"), chromedp.Click(chromedp.CSS("#save-relay")),
		chromedp.WaitVisible(chromedp.CSS("#api-error")))
	stored, err := cfg.GetRelay(context.Background(), &mailbusv1.GetRelayRequest{Id: "acme-relay"})
	if err != nil {
		t.Fatal(err)
	}
	bad := stored.GetRelay()
	bad.Port = 0
	_, verr := cfg.UpdateRelay(context.Background(), &mailbusv1.UpdateRelayRequest{Relay: bad})
	mustContain(t, "the refused relay form", b.text("#api-error"), "relay.port", "must be 1-65535, got 0")
	mustContain(t, "the API's refusal", status.Convert(verr).Message(), "relay.port: must be 1-65535, got 0")
	b.shot("10-relay-validation")

	// Domains: the DKIM records to publish.
	b.do("open the domains", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible(chromedp.CSS("#domain-acme-example")))
	mustContain(t, "the domains page", b.text("main"), "r2026._domainkey.acme.example", "e2026._domainkey.fast.example", "v=DKIM1", "VERP")
	b.shot("11-domains")

	// Suppressions: add, find, remove.
	const addr = "console-added@example.org"
	b.do("add a suppression", chromedp.Navigate(base+"/suppressions"), chromedp.WaitVisible(chromedp.CSS("#suppress-address")),
		chromedp.SendKeys(chromedp.CSS("#suppress-address"), addr), chromedp.Click(chromedp.CSS("#suppress-add")),
		chromedp.WaitVisible(chromedp.CSS(`button.remove[data-address="`+addr+`"]`)))
	mustContain(t, "the notice after adding", b.text("#flash"), "Added "+addr)
	b.shot("12-suppression-added")
	look := func() int {
		resp, err := supp.ListSuppressions(context.Background(), &mailbusv1.ListSuppressionsRequest{TenantId: "acme", Addresses: []string{addr}})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.GetSuppressions())
	}
	if look() != 1 {
		t.Fatalf("the console said it added %s, but SuppressionService does not have it", addr)
	}
	// From a page without a notice, so that the one waited for is new.
	b.do("remove it", chromedp.Navigate(base+"/suppressions?q="+url.QueryEscape(addr)),
		chromedp.WaitVisible(chromedp.CSS(`button.remove[data-address="`+addr+`"]`)),
		chromedp.Click(chromedp.CSS(`button.remove[data-address="`+addr+`"]`)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	mustContain(t, "the notice after removing", b.text("#flash"), "Removed "+addr)
	b.shot("13-suppression-removed")
	if look() != 0 {
		t.Fatalf("the console said it removed %s, but SuppressionService still has it", addr)
	}

	// Webhooks: the endpoint made through WebhookService is listed; no
	// webhook has given up.
	if _, err := hooks.CreateWebhookEndpoint(context.Background(), &mailbusv1.CreateWebhookEndpointRequest{Endpoint: &mailbusv1.WebhookEndpoint{
		TenantId: "acme", Url: "http://127.0.0.1:9/crm-hook", Description: "the CRM", FinalOnly: true, Active: true,
	}}); err != nil {
		t.Fatalf("create a webhook endpoint: %v", err)
	}
	b.do("open the webhooks", chromedp.Navigate(base+"/webhooks"), chromedp.WaitVisible(chromedp.CSS("#webhook-endpoints")))
	mustContain(t, "the webhooks page", b.text("#webhook-endpoints"), "http://127.0.0.1:9/crm-hook", "the CRM", "final states only")
	mustContain(t, "the dead letters", b.text("#webhook-dead-letters"), "No dead letters")
	b.shot("14-webhooks")
}
