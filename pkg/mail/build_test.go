package mail_test

import (
	"bytes"
	"errors"
	"io"
	"net/mail"
	"regexp"
	"strings"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset"
	gomail "github.com/emersion/go-message/mail"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mailbus/mailbus/pkg/exterr"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	mbmail "github.com/mailbus/mailbus/pkg/mail"
)

var fixedNow = func() time.Time { return time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("CET", 3600)) }

func addr(name, email string) *mailbusv1.Address {
	return &mailbusv1.Address{Name: name, Email: email}
}

func baseSubmission() *mailbusv1.Submission {
	return &mailbusv1.Submission{
		From:    addr("Alice", "alice@acme.example"),
		To:      []*mailbusv1.Address{addr("Bob", "bob@example.com")},
		Subject: "Hello",
	}
}

func build(t *testing.T, sub *mailbusv1.Submission) mbmail.Message {
	t.Helper()
	m, err := mbmail.Build(sub, mbmail.Options{Now: fixedNow})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	checkWireFormat(t, m.Data)
	return m
}

// checkWireFormat asserts what every message must satisfy on the wire.
func checkWireFormat(t *testing.T, data []byte) {
	t.Helper()
	for i, line := range bytes.Split(data, []byte("\r\n")) {
		if len(line) > mbmail.MaxLineLen {
			t.Fatalf("line %d is %d octets", i+1, len(line))
		}
		if bytes.ContainsAny(line, "\r\n\x00") {
			t.Fatalf("line %d has a bare CR/LF or NUL: %q", i+1, line)
		}
	}
	if !bytes.HasSuffix(data, []byte("\r\n")) {
		t.Fatalf("message does not end with CRLF")
	}
}

// parse reads a message with go-message, an independent MIME parser.
func parse(t *testing.T, data []byte) *gomail.Reader {
	t.Helper()
	r, err := gomail.CreateReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("go-message cannot read the message: %v\n%s", err, data)
	}
	return r
}

type partInfo struct {
	mediaType string
	params    map[string]string
	body      string
	header    gomessage.Header
}

// leaves walks the MIME tree and returns the leaf parts, decoded, with the
// media type path of their ancestors.
func leaves(t *testing.T, data []byte) (paths []string, parts []partInfo) {
	t.Helper()
	e, err := gomessage.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("go-message: %v", err)
	}
	var walk func(e *gomessage.Entity, path string)
	walk = func(e *gomessage.Entity, path string) {
		mt, params, _ := e.Header.ContentType()
		p := path + "/" + mt
		if mr := e.MultipartReader(); mr != nil {
			for {
				child, err := mr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("next part: %v", err)
				}
				walk(child, p)
			}
			return
		}
		body, err := io.ReadAll(e.Body)
		if err != nil {
			t.Fatalf("read part %s: %v", p, err)
		}
		paths = append(paths, strings.TrimPrefix(p, "/"))
		parts = append(parts, partInfo{mediaType: mt, params: params, body: string(body), header: e.Header})
	}
	walk(e, "")
	return paths, parts
}

func TestBuild_writesRequiredHeaders(t *testing.T) {
	m := build(t, baseSubmission())
	h := parse(t, m.Data).Header
	if got := h.Get("Date"); got != "Fri, 14 Mar 2025 15:09:26 +0100" {
		t.Errorf("Date = %q", got)
	}
	if got := h.Get("MIME-Version"); got != "1.0" {
		t.Errorf("MIME-Version = %q", got)
	}
	id, err := h.MessageID()
	if err != nil || id != m.MessageID {
		t.Errorf("Message-ID header %q (%v), Message.MessageID %q", id, err, m.MessageID)
	}
	if !regexp.MustCompile(`^[0-9A-Z]{26}@acme\.example$`).MatchString(m.MessageID) {
		t.Errorf("MessageID = %q, want <ULID@acme.example>", m.MessageID)
	}
	from, _ := h.AddressList("From")
	if len(from) != 1 || from[0].Address != "alice@acme.example" || from[0].Name != "Alice" {
		t.Errorf("From = %v", from)
	}
	if m.From.Email != "alice@acme.example" {
		t.Errorf("Message.From = %+v", m.From)
	}
}

func TestBuild_generatesUniqueMessageIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		m := build(t, baseSubmission())
		if seen[m.MessageID] {
			t.Fatalf("duplicate Message-ID %s", m.MessageID)
		}
		seen[m.MessageID] = true
	}
}

func TestBuild_usesSubmitTimeAndGivenDateAndMessageID(t *testing.T) {
	sub := baseSubmission()
	sub.SubmitTime = timestamppb.New(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC))
	m := build(t, sub)
	if got := parse(t, m.Data).Header.Get("Date"); got != "Tue, 02 Jan 2024 03:04:05 +0000" {
		t.Errorf("Date from submit_time = %q", got)
	}

	sub.Headers = []*mailbusv1.Header{
		{Name: "Date", Value: "Wed, 01 May 2024 10:00:00 +0200"},
		{Name: "Message-ID", Value: "<order-42@shop.example>"},
	}
	m = build(t, sub)
	h := parse(t, m.Data).Header
	if got := h.Get("Date"); got != "Wed, 01 May 2024 10:00:00 +0200" {
		t.Errorf("Date = %q, want the producer's", got)
	}
	if m.MessageID != "order-42@shop.example" || strings.Count(string(m.Data), "Message-ID:") != 1 {
		t.Errorf("MessageID = %q; data:\n%s", m.MessageID, m.Data)
	}
}

func TestBuild_usesMessageIDDomainOption(t *testing.T) {
	m, err := mbmail.Build(baseSubmission(), mbmail.Options{MessageIDDomain: "mailbus.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(m.MessageID, "@mailbus.example") {
		t.Fatalf("MessageID = %q", m.MessageID)
	}
}

func TestBuild_usesMessageIDLeftForRepeatableIDs(t *testing.T) {
	sub := baseSubmission()
	sub.From.Email = "alice@Bücher.example"
	opts := mbmail.Options{MessageIDLeft: "m0123abc.0"}
	m, err := mbmail.Build(sub, opts)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "m0123abc.0@xn--bcher-kva.example" {
		t.Fatalf("MessageID = %q", m.MessageID)
	}
	raw, err := mbmail.PrepareRaw([]byte("From: a@acme.example\r\n\r\nx\r\n"), opts)
	if err != nil || raw.MessageID != "m0123abc.0@acme.example" {
		t.Fatalf("PrepareRaw MessageID = %q, %v", raw.MessageID, err)
	}
	if _, err := mbmail.Build(sub, mbmail.Options{MessageIDLeft: "a b"}); err == nil || !strings.Contains(err.Error(), "MessageIDLeft") {
		t.Fatalf("bad MessageIDLeft: %v", err)
	}
}

func TestBuild_encodesNonASCIISubjectAsEncodedWord(t *testing.T) {
	sub := baseSubmission()
	sub.Subject = "Grüße aus Köln — ünïcödé " + strings.Repeat("très long sujet ", 10)
	m := build(t, sub)
	raw := headerBlock(m.Data)
	if !strings.Contains(raw, "Subject: =?utf-8?q?") {
		t.Fatalf("subject not Q-encoded:\n%s", raw)
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] >= 0x80 {
			t.Fatalf("header has non-ASCII octet at %d:\n%s", i, raw)
		}
	}
	got, err := parse(t, m.Data).Header.Subject()
	if err != nil || got != sub.Subject {
		t.Fatalf("decoded subject = %q, %v; want %q", got, err, sub.Subject)
	}
}

func TestBuild_encodesNonASCIIDisplayNames(t *testing.T) {
	sub := baseSubmission()
	sub.From = addr("Jörg Müller, Acme", "jorg@acme.example")
	sub.To = []*mailbusv1.Address{addr("Zoë", "zoe@example.com"), addr(`Dr. "Who"`, "who@example.com"), addr("", "plain@example.com")}
	sub.Cc = []*mailbusv1.Address{addr("李小龍", "lee@example.com")}
	sub.ReplyTo = []*mailbusv1.Address{addr("Support (Acme)", "help@acme.example")}
	m := build(t, sub)
	h := parse(t, m.Data).Header
	check := func(field string, want []*mailbusv1.Address) {
		t.Helper()
		got, err := h.AddressList(field)
		if err != nil {
			t.Fatalf("%s: %v\n%s", field, err, headerBlock(m.Data))
		}
		if len(got) != len(want) {
			t.Fatalf("%s = %v, want %v", field, got, want)
		}
		for i := range want {
			if got[i].Name != want[i].Name || got[i].Address != want[i].Email {
				t.Errorf("%s[%d] = %q <%s>, want %q <%s>", field, i, got[i].Name, got[i].Address, want[i].Name, want[i].Email)
			}
		}
	}
	check("From", []*mailbusv1.Address{sub.From})
	check("To", sub.To)
	check("Cc", sub.Cc)
	check("Reply-To", sub.ReplyTo)
	// net/mail, another parser, reads the lists the same way.
	nm, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	if list, err := nm.Header.AddressList("To"); err != nil || len(list) != 3 {
		t.Fatalf("net/mail To = %v, %v", list, err)
	}
}

func TestBuild_foldsLongAddressListsWithinLineLimits(t *testing.T) {
	sub := baseSubmission()
	sub.To = nil
	for i := range 200 {
		sub.To = append(sub.To, addr("Recipient Number "+strings.Repeat("x", i%20), "user"+strings.Repeat("y", i%30)+"@example.com"))
	}
	m := build(t, sub)
	for _, line := range strings.Split(headerBlock(m.Data), "\r\n") {
		if len(line) > 78 {
			t.Fatalf("header line longer than 78 octets: %q", line)
		}
	}
	list, err := parse(t, m.Data).Header.AddressList("To")
	if err != nil || len(list) != 200 {
		t.Fatalf("To has %d addresses, %v", len(list), err)
	}
}

func TestBuild_neverWritesBcc(t *testing.T) {
	sub := baseSubmission()
	sub.Bcc = []*mailbusv1.Address{addr("Secret", "secret@example.com")}
	m := build(t, sub)
	if bytes.Contains(bytes.ToLower(m.Data), []byte("bcc")) || bytes.Contains(m.Data, []byte("secret@example.com")) {
		t.Fatalf("Bcc leaked:\n%s", m.Data)
	}
}

func TestBuild_writesUndisclosedRecipientsWhenOnlyBcc(t *testing.T) {
	sub := baseSubmission()
	sub.To = nil
	sub.Bcc = []*mailbusv1.Address{addr("", "secret@example.com")}
	m := build(t, sub)
	if !strings.Contains(headerBlock(m.Data), "To: undisclosed-recipients:;\r\n") {
		t.Fatalf("no undisclosed-recipients To:\n%s", m.Data)
	}
}

func TestBuild_structuresBodiesAndAttachments(t *testing.T) {
	pdf := bytes.Repeat([]byte{0, 1, 2, 0xff, 'x'}, 1000)
	png := []byte("\x89PNG\r\n\x1a\nfake")
	tests := []struct {
		name      string
		text      string
		html      string
		atts      []*mailbusv1.Attachment
		wantPaths []string
	}{
		{name: "text only", text: "hi", wantPaths: []string{"text/plain"}},
		{name: "html only", html: "<p>hi</p>", wantPaths: []string{"text/html"}},
		{name: "no body", wantPaths: []string{"text/plain"}},
		{name: "text and html", text: "hi", html: "<p>hi</p>",
			wantPaths: []string{"multipart/alternative/text/plain", "multipart/alternative/text/html"}},
		{name: "attachment", text: "hi", atts: []*mailbusv1.Attachment{{Filename: "a.pdf", Content: pdf}},
			wantPaths: []string{"multipart/mixed/text/plain", "multipart/mixed/application/pdf"}},
		{name: "attachment only", atts: []*mailbusv1.Attachment{{Filename: "a.pdf", Content: pdf}},
			wantPaths: []string{"multipart/mixed/application/pdf"}},
		{name: "inline image with html", text: "hi", html: `<img src="cid:logo@acme">`,
			atts: []*mailbusv1.Attachment{{Filename: "logo.png", ContentId: "logo@acme", Inline: true, Content: png}},
			wantPaths: []string{
				"multipart/alternative/text/plain",
				"multipart/alternative/multipart/related/text/html",
				"multipart/alternative/multipart/related/image/png",
			}},
		{name: "inline and attachment", text: "hi", html: `<img src="cid:logo">`,
			atts: []*mailbusv1.Attachment{
				{Filename: "logo.png", ContentId: "<logo>", Content: png},
				{Filename: "a.pdf", Content: pdf},
			},
			wantPaths: []string{
				"multipart/mixed/multipart/alternative/text/plain",
				"multipart/mixed/multipart/alternative/multipart/related/text/html",
				"multipart/mixed/multipart/alternative/multipart/related/image/png",
				"multipart/mixed/application/pdf",
			}},
		{name: "content id without html is an attachment", text: "hi",
			atts:      []*mailbusv1.Attachment{{Filename: "logo.png", ContentId: "logo", Content: png}},
			wantPaths: []string{"multipart/mixed/text/plain", "multipart/mixed/image/png"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := baseSubmission()
			sub.TextBody, sub.HtmlBody, sub.Attachments = tt.text, tt.html, tt.atts
			m := build(t, sub)
			paths, parts := leaves(t, m.Data)
			if strings.Join(paths, " | ") != strings.Join(tt.wantPaths, " | ") {
				t.Fatalf("structure = %v, want %v\n%s", paths, tt.wantPaths, m.Data)
			}
			ai := 0
			for _, p := range parts {
				switch p.mediaType {
				case "text/plain":
					if p.body != strings.ReplaceAll(tt.text, "\n", "\r\n") {
						t.Errorf("text body = %q, want %q", p.body, tt.text)
					}
					if p.params["charset"] != "utf-8" || p.header.Get("Content-Transfer-Encoding") != "quoted-printable" {
						t.Errorf("text part header: %v", p.header)
					}
				case "text/html":
					if p.body != tt.html {
						t.Errorf("html body = %q, want %q", p.body, tt.html)
					}
				default:
					// Parts come out in the order they were given.
					a := tt.atts[ai]
					ai++
					if p.body != string(a.Content) {
						t.Errorf("attachment %s content differs", a.Filename)
					}
					if p.header.Get("Content-Transfer-Encoding") != "base64" {
						t.Errorf("attachment CTE = %q", p.header.Get("Content-Transfer-Encoding"))
					}
					_, dparams, _ := p.header.ContentDisposition()
					if dparams["filename"] != a.Filename {
						t.Errorf("filename = %q, want %q", dparams["filename"], a.Filename)
					}
					if a.ContentId != "" {
						want := "<" + strings.Trim(a.ContentId, "<>") + ">"
						if got := p.header.Get("Content-ID"); got != want {
							t.Errorf("Content-ID = %q, want %q", got, want)
						}
					}
				}
			}
		})
	}
}

func TestBuild_encodesTextAsQuotedPrintableWithCRLF(t *testing.T) {
	sub := baseSubmission()
	sub.TextBody = "Line one\nLine two = équation\r\n" + strings.Repeat("long ", 100) + "\n.\nend"
	m := build(t, sub)
	_, parts := leaves(t, m.Data)
	want := strings.ReplaceAll(strings.ReplaceAll(sub.TextBody, "\r\n", "\n"), "\n", "\r\n")
	if parts[0].body != want {
		t.Fatalf("decoded text = %q, want %q", parts[0].body, want)
	}
	if !bytes.Contains(m.Data, []byte("=3D =C3=A9quation")) {
		t.Fatalf("text not quoted-printable:\n%s", m.Data)
	}
}

func TestBuild_encodesNonASCIIAttachmentNames(t *testing.T) {
	sub := baseSubmission()
	sub.Attachments = []*mailbusv1.Attachment{{Filename: "Übersicht März.xlsx", Content: []byte("x")}}
	m := build(t, sub)
	_, parts := leaves(t, m.Data)
	att := parts[len(parts)-1]
	_, params, err := att.header.ContentDisposition()
	if err != nil || params["filename"] != "Übersicht März.xlsx" {
		t.Fatalf("filename = %q, %v\n%s", params["filename"], err, m.Data)
	}
	if att.mediaType != "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" &&
		parts[1].mediaType != "application/octet-stream" {
		t.Fatalf("media type = %q", parts[1].mediaType)
	}
}

func TestBuild_writesExtraHeadersEncoded(t *testing.T) {
	sub := baseSubmission()
	sub.Headers = []*mailbusv1.Header{
		{Name: "List-Unsubscribe", Value: "<mailto:unsub@acme.example?subject=42>, <https://acme.example/u/42>"},
		{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
		{Name: "X-Campaign", Value: "Été 2025"},
	}
	m := build(t, sub)
	h := parse(t, m.Data).Header
	if got := h.Get("List-Unsubscribe"); got != sub.Headers[0].Value {
		t.Errorf("List-Unsubscribe = %q", got)
	}
	if got, _ := h.Text("X-Campaign"); got != "Été 2025" {
		t.Errorf("X-Campaign = %q", got)
	}
}

func TestBuild_rejectsInvalidSubmissions(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*mailbusv1.Submission)
		wantErr string
	}{
		{"missing from", func(s *mailbusv1.Submission) { s.From = nil }, "from: invalid address \"\": missing address"},
		{"bad from", func(s *mailbusv1.Submission) { s.From = addr("", "alice@") }, `from: invalid address "alice@": missing domain`},
		{"bad to", func(s *mailbusv1.Submission) { s.To = append(s.To, addr("", "x@y@z.com")) }, "to[1]: invalid address"},
		{"CRLF in name", func(s *mailbusv1.Submission) { s.To[0].Name = "Bob\r\nBcc: eve@evil.example" }, "to[0]: invalid address"},
		{"CRLF in subject", func(s *mailbusv1.Submission) { s.Subject = "Hi\r\nBcc: eve@evil.example" }, "subject contains a line break"},
		{"owned header", func(s *mailbusv1.Submission) {
			s.Headers = []*mailbusv1.Header{{Name: "Bcc", Value: "eve@evil.example"}}
		}, `headers[0]: invalid header "Bcc"`},
		{"two message ids", func(s *mailbusv1.Submission) {
			s.Headers = []*mailbusv1.Header{{Name: "Message-ID", Value: "<a@b.c>"}, {Name: "message-id", Value: "<c@d.e>"}}
		}, "given twice"},
		{"attachment without name", func(s *mailbusv1.Submission) {
			s.Attachments = []*mailbusv1.Attachment{{Content: []byte("x")}}
		}, "needs a filename"},
		{"bad content type", func(s *mailbusv1.Submission) {
			s.Attachments = []*mailbusv1.Attachment{{Filename: "a", ContentType: "not a type", Content: []byte("x")}}
		}, "is not a MIME type"},
		{"multipart attachment", func(s *mailbusv1.Submission) {
			s.Attachments = []*mailbusv1.Attachment{{Filename: "a", ContentType: "multipart/mixed", Content: []byte("x")}}
		}, "multipart attachment"},
		{"CRLF in filename", func(s *mailbusv1.Submission) {
			s.Attachments = []*mailbusv1.Attachment{{Filename: "a\r\nX: y", Content: []byte("x")}}
		}, "line break"},
		{"bad content id", func(s *mailbusv1.Submission) {
			s.Attachments = []*mailbusv1.Attachment{{Filename: "a.png", ContentId: "a b", Content: []byte("x")}}
		}, "content_id"},
		{"raw with composed fields", func(s *mailbusv1.Submission) {
			s.RawMessage = []byte("From: a@b.com\r\n\r\nx")
		}, "raw_message is set, so subject must be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := baseSubmission()
			tt.mutate(sub)
			_, err := mbmail.Build(sub, mbmail.Options{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build error = %v, want it to contain %q", err, tt.wantErr)
			}
			if !errors.Is(err, mbmail.ErrInvalid) || !exterr.IsPermanent(err) {
				t.Fatalf("error %v is not a permanent ErrInvalid", err)
			}
		})
	}
}

func TestBuild_rejectsOversizedMessage(t *testing.T) {
	sub := baseSubmission()
	sub.Attachments = []*mailbusv1.Attachment{{Filename: "big.bin", Content: make([]byte, 700<<10)}}
	_, err := mbmail.Build(sub, mbmail.Options{MaxSize: 1 << 20})
	if err != nil {
		t.Fatalf("700 KiB under a 1 MiB limit: %v", err)
	}
	sub.Attachments[0].Content = make([]byte, 1<<20)
	_, err = mbmail.Build(sub, mbmail.Options{MaxSize: 1 << 20})
	if !errors.Is(err, mbmail.ErrTooLarge) || !errors.Is(err, mbmail.ErrInvalid) {
		t.Fatalf("error = %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), "over the 1 MiB limit") {
		t.Fatalf("error = %q, want the limit in words", err)
	}
	var me *mbmail.MessageError
	if !errors.As(err, &me) || me.Limit != 1<<20 || me.Size <= me.Limit {
		t.Fatalf("MessageError = %+v", me)
	}
}

func TestBuild_defaultSizeLimitIs25MiB(t *testing.T) {
	sub := baseSubmission()
	sub.Attachments = []*mailbusv1.Attachment{{Filename: "big.bin", Content: make([]byte, 19<<20)}}
	_, err := mbmail.Build(sub, mbmail.Options{})
	if !errors.Is(err, mbmail.ErrTooLarge) || !strings.Contains(err.Error(), "25 MiB") {
		t.Fatalf("19 MiB attachment (25+ MiB encoded): %v", err)
	}
}

func TestBuild_attachesMessageRFC822Unencoded(t *testing.T) {
	sub := baseSubmission()
	inner := "From: x@example.com\r\nSubject: inner\r\n\r\nbody\r\n"
	sub.Attachments = []*mailbusv1.Attachment{{Filename: "fwd.eml", ContentType: "message/rfc822", Content: []byte(inner)}}
	m := build(t, sub)
	if !bytes.Contains(m.Data, []byte("Content-Transfer-Encoding: 7bit\r\n\r\n"+inner)) {
		t.Fatalf("message/rfc822 not 7bit:\n%s", m.Data)
	}
	sub.Attachments[0].Content = []byte("From: x\n\nbare LF")
	if _, err := mbmail.Build(sub, mbmail.Options{}); err == nil || !strings.Contains(err.Error(), "application/octet-stream") {
		t.Fatalf("non-7bit message/rfc822: %v", err)
	}
}

func headerBlock(data []byte) string {
	i := bytes.Index(data, []byte("\r\n\r\n"))
	return string(data[:i+2])
}

func benchSubmission() *mailbusv1.Submission {
	para := "Hello Bob, this is a typical transactional email with a few paragraphs of text. Ünïcödé too.\n"
	html := "<html><body><p>Hello Bob, this is a <b>typical</b> transactional email.</p>\n"
	sub := &mailbusv1.Submission{
		From:    addr("Acme Shop", "orders@acme.example"),
		To:      []*mailbusv1.Address{addr("Bob Example", "bob@example.com")},
		Subject: "Your order #12345 has shipped",
		Headers: []*mailbusv1.Header{
			{Name: "List-Unsubscribe", Value: "<mailto:unsub@acme.example?subject=u42>, <https://acme.example/u/42>"},
			{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
		},
		TextBody: strings.Repeat(para, 40),                      // ~4 KB
		HtmlBody: strings.Repeat(html, 80) + "</body></html>\n", // ~6 KB
	}
	return sub
}

// BenchmarkBuild_10KB builds a typical text+HTML message of about 10 KB.
func BenchmarkBuild_10KB(b *testing.B) {
	sub := benchSubmission()
	b.ReportAllocs()
	var size int
	for b.Loop() {
		m, err := mbmail.Build(sub, mbmail.Options{})
		if err != nil {
			b.Fatal(err)
		}
		size = len(m.Data)
	}
	b.SetBytes(int64(size))
}

// BenchmarkBuild_withAttachment adds a 100 KB attachment.
func BenchmarkBuild_withAttachment(b *testing.B) {
	sub := benchSubmission()
	sub.Attachments = []*mailbusv1.Attachment{{Filename: "invoice.pdf", Content: bytes.Repeat([]byte("%PDF-1.7 binary\x00\xff"), 6400)}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := mbmail.Build(sub, mbmail.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
