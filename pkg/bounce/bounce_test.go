package bounce

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A multi-recipient RFC 3464 report from Postfix with the returned
// message's headers, including the relay's own tracking header.
const postfixDSN = `Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: bounces+abc@bounce.example.org
Subject: Undelivered Mail Returned to Sender
Date: Thu, 29 Apr 2021 23:34:45 +0900 (JST)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

                   The mail system

<kijitora@example.jp>: host mx.example.jp[192.0.2.1] said: 550 5.1.1
    <kijitora@example.jp>... User Unknown (in reply to RCPT TO command)

<sabineko@example.jp>: host mx.example.jp[192.0.2.1] said: 452 4.2.2
    <sabineko@example.jp>... Mailbox Full (in reply to RCPT TO command)

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Thu, 29 Apr 2021 23:34:44 +0900 (JST)

Final-Recipient: rfc822; kijitora@example.jp
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.jp
Diagnostic-Code: smtp; 550 5.1.1 <kijitora@example.jp>... User Unknown

Final-Recipient: rfc822; sabineko@example.jp
Action: failed
Status: 4.2.2
Remote-MTA: dns; mx.example.jp
Diagnostic-Code: smtp; 452 4.2.2 <sabineko@example.jp>... Mailbox Full

--BOUNDARY
Content-Type: text/rfc822-headers

From: Nyaan <sender@example.org>
To: kijitora@example.jp, sabineko@example.jp
Subject: Hello
Message-ID: <0123.4567@example.org>
X-Mailbus-Delivery-Id: dlv-42

--BOUNDARY--
`

func TestParse_readsEachRecipientOfADSN(t *testing.T) {
	recs, err := Parse([]byte(postfixDSN))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d records, want 2: %+v", len(recs), recs)
	}
	want := []struct {
		rcpt, reason, status string
		reply                int
		hard                 bool
	}{
		{"kijitora@example.jp", "userunknown", "5.1.1", 550, true},
		{"sabineko@example.jp", "mailboxfull", "4.2.2", 452, false},
	}
	for i, w := range want {
		r := recs[i]
		if r.Recipient != w.rcpt || r.Reason != w.reason || r.Status != w.status || r.ReplyCode != w.reply || r.Hard != w.hard {
			t.Errorf("record %d = %s %s %s %d %v, want %s %s %s %d %v", i, r.Recipient, r.Reason, r.Status, r.ReplyCode, r.Hard,
				w.rcpt, w.reason, w.status, w.reply, w.hard)
		}
		if r.Action != "failed" || r.RemoteMTA != "mx.example.jp" || r.ReportingMTA != "mx.example.net" {
			t.Errorf("record %d: action=%q remote=%q reporting=%q", i, r.Action, r.RemoteMTA, r.ReportingMTA)
		}
		if r.OriginalMessageID != "0123.4567@example.org" {
			t.Errorf("record %d: OriginalMessageID = %q", i, r.OriginalMessageID)
		}
		if got := r.Headers.Get("X-Mailbus-Delivery-Id"); got != "dlv-42" {
			t.Errorf("record %d: X-Mailbus-Delivery-Id = %q, want dlv-42", i, got)
		}
		if r.Date.IsZero() {
			t.Errorf("record %d: no date", i)
		}
		if !strings.Contains(r.Diagnostic, "User Unknown") && !strings.Contains(r.Diagnostic, "Mailbox Full") {
			t.Errorf("record %d: diagnostic %q lacks the server's words", i, r.Diagnostic)
		}
	}
}

func TestParse_readsAnARFComplaint(t *testing.T) {
	raw := `From: feedbackloop@isp.example
To: fbl@example.org
Subject: Abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.

--B
Content-Type: message/feedback-report

Feedback-Type: opt-out
User-Agent: SomeGenerator/1.0
Version: 1
Original-Rcpt-To: <complainer@isp.example>
Arrival-Date: Thu, 29 Apr 2021 23:34:45 +0000

--B
Content-Type: message/rfc822

From: sender@example.org
To: complainer@isp.example
Subject: Newsletter
Message-ID: <news-1@example.org>

Hello
--B--
`
	recs, err := Parse([]byte(raw))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	r := recs[0]
	if r.Recipient != "complainer@isp.example" || r.Reason != "feedback" || r.FeedbackType != "opt-out" || r.Hard {
		t.Errorf("got %+v", r)
	}
	if r.OriginalMessageID != "news-1@example.org" {
		t.Errorf("OriginalMessageID = %q", r.OriginalMessageID)
	}
}

func TestParse_readsAnAutoReplyAsVacation(t *testing.T) {
	raw := "From: Kijitora <kijitora@example.jp>\nTo: sender@example.org\nSubject: Out of Office: Hello\n" +
		"Auto-Submitted: auto-replied\nDate: Thu, 29 Apr 2021 23:34:45 +0900\n\nI am out of the office until May 5.\n"
	recs, err := Parse([]byte(raw))
	if err != nil || len(recs) != 1 {
		t.Fatalf("Parse = %d records, %v", len(recs), err)
	}
	if recs[0].Recipient != "kijitora@example.jp" || recs[0].Reason != "vacation" || recs[0].Hard {
		t.Errorf("got %+v", recs[0])
	}
}

func TestParse_readsQmailText(t *testing.T) {
	raw := `From: MAILER-DAEMON@mx.example.jp
To: sender@example.org
Subject: failure notice

Hi. This is the qmail-send program at mx.example.jp.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<kijitora@example.net>:
192.0.2.1 does not like recipient.
Remote host said: 550 5.1.1 <kijitora@example.net>... User Unknown
Giving up on 192.0.2.1.

--- Below this line is a copy of the message.

Return-Path: <sender@example.org>
From: sender@example.org
To: kijitora@example.net
Message-ID: <q-1@example.org>
Subject: Hi

Hi
`
	recs, err := Parse([]byte(raw))
	if err != nil || len(recs) != 1 {
		t.Fatalf("Parse = %d records, %v", len(recs), err)
	}
	r := recs[0]
	if r.Recipient != "kijitora@example.net" || r.Reason != "userunknown" || !r.Hard || r.ReplyCode != 550 {
		t.Errorf("got %+v", r)
	}
	if r.OriginalMessageID != "q-1@example.org" {
		t.Errorf("OriginalMessageID = %q", r.OriginalMessageID)
	}
}

func TestParse_ignoresGarbage(t *testing.T) {
	for _, raw := range []string{
		"",
		"\x00\x01\x02",
		"Subject: hi\n\nhello",
		"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status\n\nFinal-Recipient",
		"From: MAILER-DAEMON\nContent-Type: multipart/mixed; boundary=\"\n\n--",
		strings.Repeat("--a\n", 1000),
	} {
		recs, err := Parse([]byte(raw))
		if err != nil {
			t.Errorf("Parse(%.20q): %v", raw, err)
		}
		for _, r := range recs {
			if !strings.Contains(r.Recipient, "@") {
				t.Errorf("Parse(%.20q) gave a record without an address: %+v", raw, r)
			}
		}
	}
}

func TestParse_survivesTruncatedSamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusPath(t, "samples"), "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, cut := range []int{len(raw) / 3, len(raw) / 2, len(raw) * 2 / 3} {
			if _, err := Parse(raw[:cut]); err != nil {
				t.Errorf("Parse(%s[:%d]): %v", filepath.Base(p), cut, err)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(postfixDSN))
	for _, n := range []string{"lhost-qmail-01.eml", "lhost-exim-01.eml", "arf-01.eml", "lhost-sendmail-01.eml",
		"lhost-exchange2003-01.eml", "lhost-amazonses-01.eml", "rfc3834-01.eml", "lhost-gmail-01.eml"} {
		if raw, err := os.ReadFile(filepath.Join(corpusDir, "samples", n)); err == nil {
			f.Add(raw)
		}
	}
	// Inputs that cost the square of their size before (work_test.go).
	for _, kind := range adversarialKinds {
		f.Add(adversarial(kind, 1<<10))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var recs []Record
		var err error
		work := allocated(func() { recs, err = Parse(raw) })
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		for _, r := range recs {
			if r.Reason == "" {
				t.Fatalf("record without a reason: %+v", r)
			}
		}
		// Work linear in the input, so that no bounce can stall the
		// listener.
		if max := maxWork(len(raw)); work > max {
			t.Fatalf("Parse of %d bytes allocated %d bytes, over the linear bound %d", len(raw), work, max)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	files, err := filepath.Glob(filepath.Join(corpusPath(b, "samples"), "*.eml"))
	if err != nil || len(files) == 0 {
		b.Fatalf("no samples: %v", err)
	}
	var msgs [][]byte
	size := 0
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, raw)
		size += len(raw)
	}
	b.SetBytes(int64(size / len(msgs)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Parse(msgs[i%len(msgs)]); err != nil {
			b.Fatal(err)
		}
	}
}
