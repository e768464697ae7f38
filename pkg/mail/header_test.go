package mail_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/exterr"
	"github.com/mailbus/mailbus/pkg/mail"
)

func TestValidateHeader_acceptsProducerHeaders(t *testing.T) {
	tests := []struct{ name, value string }{
		{"X-Campaign", "spring-2025"},
		{"List-Unsubscribe", "<mailto:u@acme.example>, <https://acme.example/u>"},
		{"List-Unsubscribe-Post", "List-Unsubscribe=One-Click"},
		{"In-Reply-To", "<abc@acme.example>"},
		{"References", "<a@b.example> <c@d.example>"},
		{"X-Unicode", "Grüße"},
		{"X-Tab", "a\tb"},
		{"Date", "Mon, 02 Jan 2006 15:04:05 -0700"},
		{"Message-ID", "<order-42@shop.example>"},
		{"Content-Language", "fr"},
		{"x-weird!#$%&'*+-.^_`|~name", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := mail.ValidateHeader(tt.name, tt.value); err != nil {
				t.Fatalf("ValidateHeader(%q, %q) = %v", tt.name, tt.value, err)
			}
		})
	}
}

func TestValidateHeader_rejectsCRLFInjection(t *testing.T) {
	for _, v := range []string{
		"x\r\nBcc: eve@evil.example",
		"x\nBcc: eve@evil.example",
		"x\rBcc: eve@evil.example",
		"x\r\n continuation",
		"x\x00y",
	} {
		err := mail.ValidateHeader("X-Note", v)
		if err == nil {
			t.Fatalf("ValidateHeader accepted %q", v)
		}
		if !strings.Contains(err.Error(), "line break") && !strings.Contains(err.Error(), "NUL") {
			t.Fatalf("error for %q = %q, want it to name the line break or NUL", v, err)
		}
	}
}

func TestValidateHeader_rejectsWithClearReason(t *testing.T) {
	tests := []struct {
		name, value, wantErr string
	}{
		{"", "x", "empty field name"},
		{"X Note", "x", `field name contains ' '`},
		{"X:Note", "x", `field name contains ':'`},
		{"X-Ünï", "x", "only printable ASCII"},
		{"Bcc", "eve@evil.example", "put blind-copy recipients in the submission's bcc field"},
		{"bcc", "eve@evil.example", "bcc field"},
		{"From", "x@y.example", "submission's from field"},
		{"To", "x@y.example", "submission's to field"},
		{"Subject", "x", "submission's subject field"},
		{"DKIM-Signature", "v=1", "signer"},
		{"Return-Path", "<x@y.example>", "envelope sender"},
		{"Received", "from x", "added by each mail server"},
		{"Content-Transfer-Encoding", "base64", "MIME builder"},
		{"MIME-Version", "1.0", "MIME builder"},
		{"Content-Type", "text/plain", "MIME builder"},
		{"X-Mailbus-Tenant", "acme", "reserved for mailbus"},
		{"X-Bell", "a\x07b", "control character U+0007"},
		{"X-Bad", "\xff\xfe", "not valid UTF-8"},
		{"X-Long", strings.Repeat("a", 1000), "a header line may not exceed 998"},
		{"Date", "yesterday", "not an RFC 5322 date"},
		{"Message-ID", "no-brackets@x", "not a message id"},
		{"Message-ID", "<no-at>", "not a message id"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.wantErr, func(t *testing.T) {
			err := mail.ValidateHeader(tt.name, tt.value)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateHeader(%q, %q) = %v, want error containing %q", tt.name, tt.value, err, tt.wantErr)
			}
			var he *mail.HeaderError
			if !errors.As(err, &he) || !errors.Is(err, mail.ErrInvalid) || !exterr.IsPermanent(err) {
				t.Fatalf("error %v is not a permanent *HeaderError", err)
			}
		})
	}
}
