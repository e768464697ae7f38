package stack_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/smtp"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/ids"
	"github.com/mailbus/mailbus/pkg/testkit"
)

var (
	unsubscribeField = regexp.MustCompile(`(?im)^List-Unsubscribe:\s*<([^>]+)>,\s*<mailto:([^>?]+)\?subject=([^>]+)>`)
	dkimHeaders      = regexp.MustCompile(`(?s)\bh=([^;]+);`)
)

// A newsletter carries RFC 8058 one-click unsubscribe, signed; a POST as
// Gmail sends it unsubscribes the recipient from mass mail at once, while
// transactional mail still reaches them; an altered link does nothing.
func TestPipeline_oneClickUnsubscribeStopsMassMailButNotTransactional(t *testing.T) {
	p := startPipeline(t, nil, nil)
	pub, err := bus.NewPublisher(testkit.BusConfig(p.Brokers), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	submit := func(id string, kind mailbusv1.EmailKind, to string) string {
		t.Helper()
		if err := bus.Publish(pub, bus.TopicSubmit, &mailbusv1.Submission{
			IdempotencyId: id, TenantId: "acme", Kind: kind, CampaignId: "spring",
			From: &mailbusv1.Address{Email: "news@acme.example"}, To: []*mailbusv1.Address{{Email: to}},
			Subject: id, TextBody: "hello",
		}, message.Metadata{}); err != nil {
			t.Fatal(err)
		}
		return ids.MessageID("acme", id)
	}

	first := submit("news-1", mailbusv1.EmailKind_EMAIL_KIND_MASS, "ann@example.net")
	p.waitMessage(t, first, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))
	got := p.smtp.WaitMessage(t, func(m testkit.SMTPMessage) bool { return strings.Contains(string(m.Data), "Subject: news-1") })
	data := string(got.Data)
	m := unsubscribeField.FindStringSubmatch(strings.ReplaceAll(data, "\r\n ", " "))
	if m == nil || !strings.Contains(data, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n") {
		t.Fatalf("the newsletter lacks the one-click unsubscribe fields:\n%s", data[:strings.Index(data, "\r\n\r\n")])
	}
	link, mailto, subject := m[1], m[2], m[3]
	if !strings.Contains(data, "Feedback-ID: spring:mass:acme:mailbus\r\n") {
		t.Errorf("no Feedback-ID spring:mass:acme:mailbus in the header")
	}

	// Both fields are signed, and dkimpy verifies the signatures.
	for _, r := range testkit.VerifyDKIMWithDkimpy(t, got.Data, p.dkimRecords(t, "acme-example")) {
		if !r.OK {
			t.Errorf("dkimpy rejects the %v signature: %v", r.Algorithm, r.Error)
		}
	}
	for _, h := range dkimHeaders.FindAllStringSubmatch(strings.ReplaceAll(data, "\r\n\t", ""), -1) {
		hs := strings.ReplaceAll(h[1], " ", "")
		if !strings.Contains(hs, "list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post:feedback-id") {
			t.Errorf("DKIM h=%s does not sign (and oversign) both unsubscribe fields and Feedback-ID", hs)
		}
	}

	// An altered link is refused and changes nothing.
	altered := link[:len(link)-3] + "AAA"
	if resp := postOneClick(t, altered); resp.StatusCode != http.StatusNotFound {
		t.Errorf("altered link: %s, want 404", resp.Status)
	}
	// A GET (a scanner following the link) only shows the confirm page.
	resp, err := http.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "<form method=\"post\">") {
		t.Errorf("GET of the link: %s %q, want the confirmation page", resp.Status, page)
	}
	if got, _ := p.Suppressions.SuppressedFor(context.Background(), "acme", []string{"ann@example.net"}, true); len(got) != 0 {
		t.Fatalf("a GET or an altered link unsubscribed: %v", got)
	}

	// Gmail's one-click POST.
	if resp := postOneClick(t, link); resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click POST: %s", resp.Status)
	}
	p.waitMessage(t, first, func(m *mailbusv1.Message) bool {
		for _, e := range m.GetHistory() {
			if e.GetReason() == "unsubscribed" && e.GetAttributes()["via"] == "one-click" {
				return true
			}
		}
		return false
	})
	second := submit("news-2", mailbusv1.EmailKind_EMAIL_KIND_MASS, "ann@example.net")
	p.waitMessage(t, second, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SUPPRESSED))
	reset := submit("reset-1", mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL, "ann@example.net")
	p.waitMessage(t, reset, hasStatus(mailbusv1.DeliveryStatus_DELIVERY_STATUS_SENT))

	// The mailto: link works for its recipient only: mail from another
	// sender to it is refused before anything is suppressed.
	mailtoSubject, _ := url.QueryUnescape(subject)
	sendTo := func(from string) error {
		msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nunsubscribe\r\n", from, mailto, mailtoSubject)
		return smtp.SendMail(p.BounceAddr, nil, from, []string{mailto}, []byte(msg))
	}
	if err := sendTo("eve@example.net"); err == nil || !strings.Contains(err.Error(), "550") {
		t.Errorf("mailto from another sender: %v, want 550", err)
	}
	if got, _ := p.Suppressions.SuppressedFor(context.Background(), "acme", []string{"eve@example.net"}, true); len(got) != 0 {
		t.Errorf("the forged mailto unsubscribed eve: %v", got)
	}
	if err := sendTo("ann@example.net"); err != nil {
		t.Errorf("mailto from the recipient: %v", err)
	}
	p.waitMessage(t, first, func(m *mailbusv1.Message) bool {
		for _, e := range m.GetHistory() {
			if e.GetReason() == "unsubscribed" && e.GetAttributes()["via"] == "mailto" {
				return true
			}
		}
		return false
	})
}

func postOneClick(t *testing.T, link string) *http.Response {
	t.Helper()
	resp, err := http.Post(link, "application/x-www-form-urlencoded", strings.NewReader("List-Unsubscribe=One-Click"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
