package mail_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/oklog/ulid/v2"

	"github.com/mailbus/mailbus/pkg/mail"
)

var verpKey = []byte("0123456789abcdef0123456789abcdef")

func TestVERP_roundTripsDeliveryIDAndRecipient(t *testing.T) {
	tests := []struct{ name, id string }{
		{"ULID", ulid.Make().String()},
		{"UUID", uuid.NewString()},
		{"lowercase ULID kept as given", strings.ToLower(ulid.Make().String())},
		{"uppercase UUID kept as given", strings.ToUpper(uuid.NewString())},
		{"pkg/ids delivery id", "m0123456789abcdefghjkmnpq.0"},
		{"pkg/ids re-routed delivery id", "m0123456789abcdefghjkmnpq.10.r2.15"},
		{"longest plain id", strings.Repeat("z", mail.MaxVERPIDLen)},
		{"short id with a hyphen", "d-42"},
		{"longest other id", strings.Repeat("Z", mail.MaxVERPRawIDLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := mail.VERPEncode(verpKey, "acme", tt.id, "Bob@Example.com", "bounce.acme.example")
			if err != nil {
				t.Fatal(err)
			}
			if err := mail.ValidateMailbox(a); err != nil {
				t.Fatalf("VERP address %q is not a valid mailbox: %v", a, err)
			}
			local := a[:strings.LastIndexByte(a, '@')]
			if len(local) > mail.MaxLocalPartLen || local != strings.ToLower(local) {
				t.Fatalf("local part %q: %d octets, must be lowercase and at most 64", local, len(local))
			}
			if !strings.HasSuffix(a, "@bounce.acme.example") {
				t.Fatalf("domain of %q", a)
			}
			id, hash, err := mail.VERPDecode(verpKey, "acme", a)
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.id {
				t.Fatalf("delivery id = %q, want %q", id, tt.id)
			}
			if hash != mail.RecipientHash("bob@example.com") || len(hash) != 10 {
				t.Fatalf("recipient hash = %q, want %q", hash, mail.RecipientHash("bob@example.com"))
			}
		})
	}
}

func TestVERPDecode_isCaseInsensitive(t *testing.T) {
	id := ulid.Make().String()
	a, err := mail.VERPEncode(verpKey, "acme", id, "bob@example.com", "Bounce.Acme.Example")
	if err != nil {
		t.Fatal(err)
	}
	for _, variant := range []string{a, strings.ToUpper(a), "<" + a + ">", "  " + strings.ToUpper(a[:10]) + a[10:]} {
		got, _, err := mail.VERPDecode(verpKey, "acme", variant)
		if err != nil || got != id {
			t.Fatalf("VERPDecode(%q) = %q, %v", variant, got, err)
		}
	}
}

func TestVERPDecode_rejectsIDSwappedBetweenForms(t *testing.T) {
	// The same id bytes in the other form must not verify.
	a, _ := mail.VERPEncode(verpKey, "acme", "abc", "bob@example.com", "bounce.acme.example")
	local := a[:strings.LastIndexByte(a, '@')]
	tail := local[strings.LastIndexByte(local, '-'):]
	swapped := "bx-" + "ofrwg" + tail // base32 of "sabc" would be the encoded form
	if _, _, err := mail.VERPDecode(verpKey, "acme", swapped); err == nil {
		t.Fatal("swapped form accepted")
	}
}

func TestVERPDecode_ignoresDomain(t *testing.T) {
	a, _ := mail.VERPEncode(verpKey, "acme", "d-1", "bob@example.com", "bounce.acme.example")
	moved := a[:strings.LastIndexByte(a, '@')] + "@BOUNCE.OTHER.example"
	if id, _, err := mail.VERPDecode(verpKey, "acme", moved); err != nil || id != "d-1" {
		t.Fatalf("VERPDecode on another domain = %q, %v", id, err)
	}
}

func TestVERPDecode_rejectsTamperingAndWrongKey(t *testing.T) {
	a, err := mail.VERPEncode(verpKey, "acme", ulid.Make().String(), "bob@example.com", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	local := a[:strings.LastIndexByte(a, '@')]
	flip := func(s string, i int) string {
		c := byte('a')
		if s[i] == 'a' {
			c = 'b'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	tests := []struct {
		name, addr string
		key        []byte
		want       error
	}{
		{"payload changed", flip(local, 5) + "@bounce.acme.example", verpKey, mail.ErrVERPForged},
		{"mac changed", flip(local, len(local)-1) + "@bounce.acme.example", verpKey, mail.ErrVERPForged},
		{"wrong key", a, []byte("another key of 32 octets length!"), mail.ErrVERPForged},
		{"empty key", a, nil, mail.ErrVERPForged},
		{"not VERP", "bob@example.com", verpKey, mail.ErrNotVERP},
		{"no mac", "b-abcdef@bounce.acme.example", verpKey, mail.ErrNotVERP},
		{"bad base32", "b-0189-abc@bounce.acme.example", verpKey, mail.ErrNotVERP},
		{"truncated mac", local[:len(local)-2] + "@bounce.acme.example", verpKey, mail.ErrNotVERP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := mail.VERPDecode(tt.key, "acme", tt.addr)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VERPDecode(%q) = %v, want %v", tt.addr, err, tt.want)
			}
		})
	}
}

func TestVERPDecode_bindsTheAddressToItsTenant(t *testing.T) {
	a, err := mail.VERPEncode(verpKey, "acme", "m0123456789abcdefghjkmnpq.0", "bob@example.com", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	// The same delivery id and recipient for another tenant make another
	// address, and neither verifies as the other tenant's.
	b, err := mail.VERPEncode(verpKey, "globex", "m0123456789abcdefghjkmnpq.0", "bob@example.com", "bounce.acme.example")
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatalf("two tenants got the same address %q", a)
	}
	for _, tenant := range []string{"globex", "acm", "acme ", "Acme", ""} {
		if _, _, err := mail.VERPDecode(verpKey, tenant, a); !errors.Is(err, mail.ErrVERPForged) {
			t.Errorf("acme's address checked for tenant %q: %v, want ErrVERPForged", tenant, err)
		}
	}
	if _, _, err := mail.VERPDecode(verpKey, "acme", b); !errors.Is(err, mail.ErrVERPForged) {
		t.Errorf("globex's address checked for acme: %v, want ErrVERPForged", err)
	}
}

func TestVERPEncode_rejectsWhatCannotFit(t *testing.T) {
	tests := []struct {
		name   string
		key    []byte
		tenant string
		id     string
		dom    string
		want   string
	}{
		{"short key", []byte("short"), "acme", "d-1", "bounce.acme.example", "at least 16 octets"},
		{"long plain id", verpKey, "acme", strings.Repeat("x", mail.MaxVERPIDLen+1), "bounce.acme.example", "does not fit in a 64-octet local part"},
		{"long other id", verpKey, "acme", strings.Repeat("X", mail.MaxVERPRawIDLen+1), "bounce.acme.example", "at most 21 octets"},
		{"mixed-case UUID", verpKey, "acme", "4F1b8c2e-0b7d-4c8e-9a8e-1d2c3b4a5f6e", "bounce.acme.example", "does not fit"},
		{"empty id", verpKey, "acme", "", "bounce.acme.example", "empty delivery id"},
		{"bad domain", verpKey, "acme", "d-1", "bounce..example", "bounce domain"},
		{"no tenant", verpKey, "", "d-1", "bounce.acme.example", "empty tenant id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mail.VERPEncode(tt.key, tt.tenant, tt.id, "bob@example.com", tt.dom)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VERPEncode error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestRecipientHash_ignoresCaseAndIDNForm(t *testing.T) {
	if mail.RecipientHash("Bob@Bücher.de") != mail.RecipientHash("bob@xn--bcher-kva.de") {
		t.Fatal("hash depends on case or IDN form")
	}
	if mail.RecipientHash("bob@example.com") == mail.RecipientHash("alice@example.com") {
		t.Fatal("different recipients share a hash")
	}
}

func FuzzVERP(f *testing.F) {
	f.Add("m0123456789abcdefghjkmnpq.0", "bob@example.com")
	f.Add(ulid.Make().String(), "x@y.example")
	f.Add("d-42", "")
	f.Fuzz(func(t *testing.T, id, rcpt string) {
		a, err := mail.VERPEncode(verpKey, "acme", id, rcpt, "bounce.acme.example")
		if err != nil {
			return
		}
		if err := mail.ValidateMailbox(a); err != nil {
			t.Fatalf("VERPEncode(%q) = %q, not a valid mailbox: %v", id, a, err)
		}
		got, hash, err := mail.VERPDecode(verpKey, "acme", strings.ToUpper(a))
		if err != nil || got != id || hash != mail.RecipientHash(rcpt) {
			t.Fatalf("VERPDecode(%q) = %q, %q, %v; want %q", a, got, hash, err, id)
		}
	})
}
