package exterr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/mailbus/mailbus/pkg/exterr"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
)

func TestIsPermanent_oneRuleForEveryKindOfError(t *testing.T) {
	marked := exterr.Permanent(errors.New("no DKIM key for acme.example"))
	_, addrErr := mail.ParseAddress("bob@")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unknown error", errors.New("connection reset by peer"), false},
		{"marked permanent", marked, true},
		{"marked permanent, wrapped", fmt.Errorf("sign delivery d1: %w", marked), true},
		{"marked permanent, joined", errors.Join(errors.New("other"), marked), true},
		{"5xx reply", &mail.SMTPError{Code: 550, Enhanced: "5.1.1", Message: "no such user"}, true},
		{"5xx reply, wrapped", fmt.Errorf("send: %w", &mail.SMTPError{Code: 554}), true},
		{"5.x.x without basic code", &mail.SMTPError{Enhanced: "5.7.1"}, true},
		{"4xx reply", &mail.SMTPError{Code: 451, Enhanced: "4.3.0", Message: "try later"}, false},
		{"4xx reply, wrapped", fmt.Errorf("send: %w", &mail.SMTPError{Code: 421}), false},
		{"4.x.x without basic code", &mail.SMTPError{Enhanced: "4.4.1"}, false},
		{"no reply at all", &mail.SMTPError{Stage: "connect", Err: errors.New("connection refused")}, false},
		{"4xx reply wrapping a marked cause: outermost decides", &mail.SMTPError{Code: 451, Err: marked}, false},
		{"marked wrapping a 4xx reply: outermost decides", exterr.Permanent(&mail.SMTPError{Code: 451}), true},
		{"invalid address", addrErr, true},
		{"invalid quota request", fmt.Errorf("admit delivery d1: %w", fmt.Errorf("%w: admit: no delivery id", limits.ErrInvalid)), true},
		{"context cancelled", context.Canceled, false},
		{"context deadline, wrapped", fmt.Errorf("admit: %w", context.DeadlineExceeded), false},
		{"context cancelled, even when marked", exterr.Permanent(fmt.Errorf("sign: %w", context.Canceled)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exterr.IsPermanent(tt.err); got != tt.want {
				t.Errorf("IsPermanent(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestPermanent_keepsItsCauseAndLeavesNil(t *testing.T) {
	base := errors.New("boom")
	p := exterr.Permanent(base)
	if !errors.Is(p, base) || p.Error() != "boom" {
		t.Errorf("Permanent(%v) = %v, lost its cause", base, p)
	}
	if exterr.Permanent(p) != p {
		t.Error("Permanent of a permanent error wrapped it again")
	}
	if exterr.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	var se *mail.SMTPError
	if !errors.As(exterr.Permanent(&mail.SMTPError{Code: 451}), &se) || se.Code != 451 {
		t.Error("Permanent hides the SMTPError it marks")
	}
}

func TestPermanentReply(t *testing.T) {
	tests := []struct {
		code     int
		enhanced string
		want     bool
	}{
		{550, "5.1.1", true},
		{554, "", true},
		{500, "", true},
		{599, "", true},
		{451, "4.7.1", false},
		{421, "", false},
		// The basic code wins when both are known: a server that says 451
		// 5.7.1 will be asked again.
		{451, "5.7.1", false},
		{0, "5.2.2", true},
		{0, "4.2.2", false},
		{0, "", false},
		{0, "5", false},
		{250, "2.0.0", false},
		{600, "", false},
	}
	for _, tt := range tests {
		if got := exterr.PermanentReply(tt.code, tt.enhanced); got != tt.want {
			t.Errorf("PermanentReply(%d, %q) = %v, want %v", tt.code, tt.enhanced, got, tt.want)
		}
	}
}
