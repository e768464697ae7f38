package unsub

import (
	"errors"
	"strings"
	"testing"
)

var (
	key    = []byte("0123456789abcdef0123456789abcdef")
	oldKey = []byte("an older key that is being rotated out")
)

func TestToken_roundTripsAndRefusesAlteredForgedOrOtherKeys(t *testing.T) {
	l := Link{Tenant: "acme", Recipient: "Bob@Example.net", MessageID: "m1"}
	tok := Token(key, l)
	got, err := Parse([][]byte{oldKey, key}, tok)
	if err != nil || got != (Link{Tenant: "acme", Recipient: "bob@example.net", MessageID: "m1"}) {
		t.Fatalf("Parse(Token) = %+v, %v", got, err)
	}
	other := Token(key, Link{Tenant: "acme", Recipient: "eve@example.net", MessageID: "m1"})
	p, sig, _ := strings.Cut(tok, ".")
	op, _, _ := strings.Cut(other, ".")
	for name, bad := range map[string]string{
		"another recipient with this signature": op + "." + sig,
		"cut signature":                         p + "." + sig[:len(sig)-2],
		"no signature":                          p,
		"garbage":                               "%%%.###",
		"made with an unknown key":              Token([]byte("not our key at all, not at all!!"), l),
	} {
		if _, err := Parse([][]byte{key}, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Parse = %v, want ErrInvalid", name, err)
		}
	}
}

func TestMailto_matchesOnlyTheRecipientAndTenantItWasMadeFor(t *testing.T) {
	local := MailtoLocal(key, "acme", "Bob@example.net")
	if !IsMailto(local) || len(local) > 64 {
		t.Fatalf("MailtoLocal = %q", local)
	}
	if !MailtoMatches([][]byte{oldKey, key}, "acme", strings.ToUpper(local), "bob@EXAMPLE.net") {
		t.Error("the recipient's own address does not match")
	}
	if MailtoMatches([][]byte{key}, "acme", local, "eve@example.net") || MailtoMatches([][]byte{key}, "other", local, "bob@example.net") {
		t.Error("another sender or tenant matches")
	}
	if IsMailto("b-abc") || IsMailto("u-short") {
		t.Error("IsMailto accepts other local parts")
	}
}
