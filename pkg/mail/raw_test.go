package mail_test

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/exterr"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	mbmail "github.com/mailbus/mailbus/pkg/mail"
)

func TestPrepareRaw_normalisesLineEndings(t *testing.T) {
	raw := "From: Alice <alice@acme.example>\nTo: bob@example.com\nDate: Mon, 02 Jan 2006 15:04:05 -0700\nMessage-ID: <x@acme.example>\nSubject: hi\n\nline1\nline2\r\nline3\rline4"
	m, err := mbmail.PrepareRaw([]byte(raw), mbmail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(raw, "\r\n", "\n"), "\r", "\n"), "\n", "\r\n") + "\r\n"
	if string(m.Data) != want {
		t.Fatalf("PrepareRaw =\n%q\nwant\n%q", m.Data, want)
	}
	if m.MessageID != "x@acme.example" || m.From.Email != "alice@acme.example" || m.From.Name != "Alice" {
		t.Fatalf("MessageID %q, From %+v", m.MessageID, m.From)
	}
	checkWireFormat(t, m.Data)
}

func TestPrepareRaw_addsDateAndMessageIDWhenAbsent(t *testing.T) {
	raw := "From: alice@acme.example\r\nSubject: hi\r\n\r\nbody\r\n"
	m, err := mbmail.PrepareRaw([]byte(raw), mbmail.Options{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	h := parse(t, m.Data).Header
	if got := h.Get("Date"); got != "Fri, 14 Mar 2025 15:09:26 +0100" {
		t.Errorf("Date = %q", got)
	}
	if !regexp.MustCompile(`^[0-9A-Z]{26}@acme\.example$`).MatchString(m.MessageID) {
		t.Errorf("MessageID = %q", m.MessageID)
	}
	if id, _ := h.MessageID(); id != m.MessageID {
		t.Errorf("header Message-ID %q != %q", id, m.MessageID)
	}
	if !bytes.HasSuffix(m.Data, []byte("\r\n\r\nbody\r\n")) || !bytes.HasPrefix(m.Data, []byte("From: alice@acme.example\r\nSubject: hi\r\n")) {
		t.Errorf("existing fields or body changed:\n%s", m.Data)
	}
}

func TestPrepareRaw_stripsBccAndReturnPath(t *testing.T) {
	raw := "Return-Path: <x@y.example>\r\nFrom: alice@acme.example\r\nBcc: secret@example.com,\r\n other@example.com\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nMessage-ID: <a@b.example>\r\n\r\nbody\r\n"
	m, err := mbmail.PrepareRaw([]byte(raw), mbmail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "From: alice@acme.example\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nMessage-ID: <a@b.example>\r\n\r\nbody\r\n"
	if string(m.Data) != want {
		t.Fatalf("got\n%q\nwant\n%q", m.Data, want)
	}
}

func TestPrepareRaw_handlesFoldedFromAndHeaderOnlyMessage(t *testing.T) {
	raw := "From: \"Smith,\r\n Alice\" <alice@acme.example>"
	m, err := mbmail.PrepareRaw([]byte(raw), mbmail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.From.Name != "Smith, Alice" {
		t.Fatalf("From = %+v", m.From)
	}
	if !bytes.HasSuffix(m.Data, []byte(">\r\n\r\n")) {
		t.Fatalf("header-only message not terminated: %q", m.Data)
	}
}

func TestPrepareRaw_rejectsMalformedHeader(t *testing.T) {
	tests := []struct {
		name, raw, wantErr string
	}{
		{"no From", "To: bob@example.com\r\n\r\nx", "no From field"},
		{"two From", "From: a@acme.example\r\nFrom: b@acme.example\r\n\r\nx", "two From fields"},
		{"From list", "From: a@acme.example, b@acme.example\r\n\r\nx", "From header: invalid address"},
		{"bad From", "From: alice@\r\n\r\nx", "missing domain"},
		{"bare CR injection", "From: a@acme.example\rBcc: eve@evil.example\r\n\r\nx", "bare CR"},
		{"NUL in header", "From: a@acme.example\x00\r\n\r\nx", "NUL"},
		{"NUL in body", "From: a@acme.example\r\n\r\nx\x00y", "line 3 contains a NUL"},
		{"not a field", "From: a@acme.example\r\nthis is body text\r\n", "is not a field"},
		{"continuation first", " From: a@acme.example\r\n\r\nx", "starts with a continuation line"},
		{"space before colon", "From : a@acme.example\r\n\r\nx", "field name \"From \" contains ' '"},
		{"non-ASCII header", "From: a@acme.example\r\nSubject: Grüße\r\n\r\nx", "RFC 2047"},
		{"long line", "From: a@acme.example\r\n\r\n" + strings.Repeat("x", 999) + "\r\n", "line 3 is 999 octets"},
		{"two Message-IDs", "From: a@acme.example\r\nMessage-ID: <a@b.c>\r\nMessage-ID: <c@d.e>\r\n\r\nx", "two Message-ID"},
		{"empty", "", "no From field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mbmail.PrepareRaw([]byte(tt.raw), mbmail.Options{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PrepareRaw error = %v, want it to contain %q", err, tt.wantErr)
			}
			if !errors.Is(err, mbmail.ErrInvalid) || !exterr.IsPermanent(err) {
				t.Fatalf("error %v is not a permanent ErrInvalid", err)
			}
		})
	}
}

func TestPrepareRaw_rejectsOversizedMessage(t *testing.T) {
	raw := "From: a@acme.example\r\n\r\n" + strings.Repeat("0123456789\r\n", 200)
	_, err := mbmail.PrepareRaw([]byte(raw), mbmail.Options{MaxSize: 1024})
	if !errors.Is(err, mbmail.ErrTooLarge) || !strings.Contains(err.Error(), "over the 1 KiB limit") {
		t.Fatalf("error = %v", err)
	}
	// Growth from adding CRs and headers counts too.
	raw = "From: a@acme.example\n\n" + strings.Repeat("x\n", 400)
	_, err = mbmail.PrepareRaw([]byte(raw), mbmail.Options{MaxSize: int64(len(raw) + 10)})
	if !errors.Is(err, mbmail.ErrTooLarge) {
		t.Fatalf("error = %v, want ErrTooLarge after normalising", err)
	}
}

func TestPrepareRaw_doesNotShareMemoryWithInput(t *testing.T) {
	raw := []byte("From: a@acme.example\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nMessage-ID: <a@b.c>\r\n\r\nx\r\n")
	m, err := mbmail.PrepareRaw(raw, mbmail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw[0] = 'X'
	if m.Data[0] != 'F' {
		t.Fatal("result aliases the input")
	}
}

func TestBuild_preparesRawSubmission(t *testing.T) {
	sub := &mailbusv1.Submission{
		From:       addr("", "ignored@acme.example"),
		To:         []*mailbusv1.Address{addr("", "bob@example.com")},
		RawMessage: []byte("From: alice@acme.example\nSubject: raw\n\nhello\n"),
	}
	m, err := mbmail.Build(sub, mbmail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.From.Email != "alice@acme.example" || !bytes.Contains(m.Data, []byte("Subject: raw\r\n")) {
		t.Fatalf("Build(raw) = %+v\n%s", m.From, m.Data)
	}
}

func TestRewriteFrom_setsViaNameAndReplyTo(t *testing.T) {
	tests := []struct {
		name        string
		from        string
		replyTo     string
		newFrom     mbmail.Address
		via         string
		wantFrom    string
		wantReplyTo string
	}{
		{"via with original name", "Alice <alice@gmail.example>", "",
			mbmail.Address{Email: "noreply@mail.platform.test"}, "Acme",
			`"Alice (via Acme)" <noreply@mail.platform.test>`, "Alice <alice@gmail.example>"},
		{"via without original name uses address", "alice@gmail.example", "",
			mbmail.Address{Email: "noreply@mail.platform.test"}, "Acme",
			`"alice@gmail.example (via Acme)" <noreply@mail.platform.test>`, "alice@gmail.example"},
		{"keeps original name", "Jörg <j@gmail.example>", "",
			mbmail.Address{Email: "noreply@mail.platform.test"}, "",
			"=?utf-8?q?J=C3=B6rg?= <noreply@mail.platform.test>", "=?utf-8?q?J=C3=B6rg?= <j@gmail.example>"},
		{"explicit name wins", "Alice <alice@gmail.example>", "",
			mbmail.Address{Name: "Acme Notifications", Email: "noreply@mail.platform.test"}, "Acme",
			"Acme Notifications <noreply@mail.platform.test>", "Alice <alice@gmail.example>"},
		{"existing Reply-To kept", "Alice <alice@gmail.example>", "support@acme.example",
			mbmail.Address{Email: "noreply@mail.platform.test"}, "Acme",
			`"Alice (via Acme)" <noreply@mail.platform.test>`, "support@acme.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := baseSubmission()
			f, err := mbmail.ParseAddress(tt.from)
			if err != nil {
				t.Fatal(err)
			}
			sub.From = addr(f.Name, f.Email)
			if tt.replyTo != "" {
				sub.ReplyTo = []*mailbusv1.Address{addr("", tt.replyTo)}
			}
			sub.TextBody = "body"
			m := build(t, sub)
			out, orig, err := mbmail.RewriteFrom(m.Data, tt.newFrom, tt.via)
			if err != nil {
				t.Fatal(err)
			}
			checkWireFormat(t, out)
			if orig != f {
				t.Errorf("original = %+v, want %+v", orig, f)
			}
			hdr := headerBlock(out)
			if !strings.Contains(hdr, "\r\nFrom: "+tt.wantFrom+"\r\n") {
				t.Errorf("From not %q:\n%s", tt.wantFrom, hdr)
			}
			if strings.Count(hdr, "Reply-To:") != 1 || !strings.Contains(hdr, "Reply-To: "+tt.wantReplyTo+"\r\n") {
				t.Errorf("Reply-To not %q:\n%s", tt.wantReplyTo, hdr)
			}
			if strings.Count(hdr, "From:") != 1 {
				t.Errorf("From count:\n%s", hdr)
			}
			got, err := mbmail.HeaderFrom(out)
			if err != nil || got.Email != tt.newFrom.Email {
				t.Errorf("HeaderFrom = %+v, %v", got, err)
			}
			// Everything after the header is untouched.
			if !bytes.Equal(out[bytes.Index(out, []byte("\r\n\r\n")):], m.Data[bytes.Index(m.Data, []byte("\r\n\r\n")):]) {
				t.Error("body changed")
			}
		})
	}
}

func TestRewriteFrom_rejectsInvalidNewFrom(t *testing.T) {
	m := build(t, baseSubmission())
	if _, _, err := mbmail.RewriteFrom(m.Data, mbmail.Address{Email: "bad@"}, ""); !errors.Is(err, mbmail.ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := mbmail.RewriteFrom(m.Data, mbmail.Address{Email: "a@b.example"}, "x\r\nBcc: y"); err == nil {
		t.Fatal("CRLF in via accepted")
	}
}

func TestHeaderFrom_readsFromOfLFMessage(t *testing.T) {
	a, err := mbmail.HeaderFrom([]byte("Subject: x\nFrom: Bob\n <bob@example.com>\n\nbody"))
	if err != nil || a.Email != "bob@example.com" || a.Name != "Bob" {
		t.Fatalf("HeaderFrom = %+v, %v", a, err)
	}
}

func FuzzPrepareRaw(f *testing.F) {
	for _, s := range []string{
		"From: a@acme.example\r\n\r\nbody\r\n",
		"From: A <a@acme.example>\nSubject: x\n\nb\rc\n",
		"Bcc: x@y.z\r\nFrom: a@acme.example\r\nMessage-ID: <q@r.s>\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\n\r\n",
		"From: a@acme.example\r\n folded\r\n\r\n.\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := mbmail.PrepareRaw(raw, mbmail.Options{MaxSize: 1 << 20})
		if err != nil {
			if !errors.Is(err, mbmail.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		checkWireFormat(t, m.Data)
		hdr := m.Data[:bytes.Index(m.Data, []byte("\r\n\r\n"))+2]
		lower := bytes.ToLower(hdr)
		if bytes.HasPrefix(lower, []byte("bcc:")) || bytes.Contains(lower, []byte("\nbcc:")) {
			t.Fatalf("Bcc kept:\n%q", m.Data)
		}
		if m.MessageID == "" && !bytes.Contains(lower, []byte("message-id:")) {
			t.Fatalf("no Message-ID:\n%q", m.Data)
		}
		// Preparing again changes nothing.
		again, err := mbmail.PrepareRaw(m.Data, mbmail.Options{MaxSize: 1 << 20})
		if err != nil {
			t.Fatalf("prepared message rejected: %v\n%q", err, m.Data)
		}
		if !bytes.Equal(again.Data, m.Data) || again.MessageID != m.MessageID || again.From != m.From {
			t.Fatalf("not idempotent:\n%q\n%q", m.Data, again.Data)
		}
		from, err := mbmail.HeaderFrom(m.Data)
		if err != nil || from != m.From {
			t.Fatalf("HeaderFrom = %+v, %v; want %+v", from, err, m.From)
		}
	})
}
