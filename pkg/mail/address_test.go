package mail_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/exterr"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/testkit/allocs"
)

func TestParseAddress_acceptsRFC5322Mailboxes(t *testing.T) {
	tests := []struct {
		name, in, wantName, wantEmail string
	}{
		{"bare addr-spec", "bob@example.com", "", "bob@example.com"},
		{"angle addr without name", "<bob@example.com>", "", "bob@example.com"},
		{"display name", "Bob Smith <bob@example.com>", "Bob Smith", "bob@example.com"},
		{"quoted display name with comma", `"Smith, Bob" <bob@example.com>`, "Smith, Bob", "bob@example.com"},
		{"encoded word display name", "=?utf-8?q?J=C3=B6rg?= <j@example.com>", "Jörg", "j@example.com"},
		{"UTF-8 display name", "Jörg Müller <j@example.com>", "Jörg Müller", "j@example.com"},
		{"quoted local part with space", `"john doe"@example.com`, "", `"john doe"@example.com`},
		{"quoted local part with @", `"a@b"@example.com`, "", `"a@b"@example.com`},
		{"needlessly quoted local part", `"bob"@example.com`, "", "bob@example.com"},
		{"escaped quote in local part", `"a\"b"@example.com`, "", `"a\"b"@example.com`},
		{"atext specials", "o'brien+tag!#$%&*/=?^_`{|}~-@example.com", "", "o'brien+tag!#$%&*/=?^_`{|}~-@example.com"},
		{"domain lowercased, local kept", "Bob@EXAMPLE.Com", "", "Bob@example.com"},
		{"IDN domain to A-labels", "info@bücher.de", "", "info@xn--bcher-kva.de"},
		{"A-label domain kept", "info@xn--bcher-kva.de", "", "info@xn--bcher-kva.de"},
		{"IPv4 literal", "bob@[192.0.2.1]", "", "bob@[192.0.2.1]"},
		{"IPv6 literal", "bob@[IPv6:2001:db8::1]", "", "bob@[IPv6:2001:db8::1]"},
		{"comment as name", "bob@example.com (Bob)", "Bob", "bob@example.com"},
		{"64-octet local part", strings.Repeat("a", 64) + "@example.com", "", strings.Repeat("a", 64) + "@example.com"},
		{"surrounding whitespace", "  Bob <bob@example.com>  ", "Bob", "bob@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := mail.ParseAddress(tt.in)
			if err != nil {
				t.Fatalf("ParseAddress(%q): %v", tt.in, err)
			}
			if a.Name != tt.wantName || a.Email != tt.wantEmail {
				t.Fatalf("ParseAddress(%q) = {%q, %q}, want {%q, %q}", tt.in, a.Name, a.Email, tt.wantName, tt.wantEmail)
			}
		})
	}
}

func TestParseAddress_rejectsWithActionableReason(t *testing.T) {
	tests := []struct {
		name, in, wantMsg string
	}{
		{"missing domain", "bob@", `invalid address "bob@": missing domain`},
		{"missing local part", "@example.com", "missing local part"},
		{"missing @", "bob", "missing @"},
		{"two @", "a@b@example.com", "more than one @"},
		{"empty", "", "empty address"},
		{"CRLF injection", "bob@example.com\r\nBcc: eve@evil.example", "line break"},
		{"LF in name", "Bob\n <bob@example.com>", "line break"},
		{"NUL", "bob@example.com\x00", "NUL"},
		{"double dot in local", "a..b@example.com", "two dots in a row"},
		{"leading dot", ".a@example.com", "starts with a dot"},
		{"trailing dot", "a.@example.com", "ends with a dot"},
		{"space in local part", "Bob Smith bob@example.com", "to add a name write"},
		{"unclosed angle", "Bob <bob@example.com", "missing closing '>'"},
		{"list", "a@example.com, b@example.com", "expected one address"},
		{"local part too long", strings.Repeat("a", 65) + "@example.com", "local part is 65 octets; RFC 5321 allows at most 64"},
		{"label too long", "bob@" + strings.Repeat("a", 64) + ".com", "DNS allows at most 63"},
		{"domain too long", "bob@" + strings.Repeat(strings.Repeat("a", 60)+".", 5) + "com", "RFC 5321 allows at most"},
		{"path too long", strings.Repeat("a", 64) + "@" + strings.Repeat(strings.Repeat("b", 62)+".", 3) + "example.com", "RFC 5321 allows at most 254"},
		{"double dot in domain", "bob@example..com", "empty label"},
		{"hyphen at label start", "bob@-example.com", "starts or ends with a hyphen"},
		{"underscore in domain", "bob@ex_ample.com", "only letters, digits and hyphens"},
		{"dotless domain", "bob@localhost", "has no dot"},
		{"numeric TLD", "bob@192.0.2.1", "write it as a literal: [192.0.2.1]"},
		{"trailing dot domain", "bob@example.com.", "ends with a dot"},
		{"bad literal", "bob@[300.1.1.1]", "not an IPv4 address"},
		{"non-ASCII local part", "jörg@example.com", "SMTPUTF8"},
		{"invalid IDN", "bob@xn--zz.com", "internationalised"},
		{"control char in name", "Bob\x07 <bob@example.com>", "control character U+0007"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mail.ParseAddress(tt.in)
			if err == nil {
				t.Fatalf("ParseAddress(%q) succeeded, want error containing %q", tt.in, tt.wantMsg)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("ParseAddress(%q) error = %q, want it to contain %q", tt.in, err, tt.wantMsg)
			}
			var ae *mail.AddressError
			if !errors.As(err, &ae) || !errors.Is(err, mail.ErrInvalid) || !exterr.IsPermanent(err) {
				t.Fatalf("error %v is not a permanent *AddressError matching ErrInvalid", err)
			}
		})
	}
}

func TestValidateMailbox_acceptsOnlyBareAddresses(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{"bob@example.com", ""},
		{`"john doe"@example.com`, ""},
		{`"a<b>"@example.com`, ""},
		{"info@bücher.de", ""},
		{"Bob <bob@example.com>", "expected a bare address"},
		{"<bob@example.com>", "expected a bare address"},
		{" bob@example.com", "leading or trailing whitespace"},
		{"bob@", `invalid address "bob@": missing domain`},
		{`"unterminated@example.com`, "unterminated quoted local part"},
		{`"a"b@example.com`, "followed directly by @"},
		{"bob@example.com\n", "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := mail.ValidateMailbox(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateMailbox(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateMailbox(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestNormalizeMailbox_returnsCanonicalForm(t *testing.T) {
	tests := map[string]string{
		"Bob@Example.COM":        "Bob@example.com",
		`"bob"@example.com`:      "bob@example.com",
		"x@BÜCHER.de":            "x@xn--bcher-kva.de",
		"x@[IPv6:2001:DB8:0::1]": "x@[IPv6:2001:db8::1]",
	}
	for in, want := range tests {
		got, err := mail.NormalizeMailbox(in)
		if err != nil || got != want {
			t.Errorf("NormalizeMailbox(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestAddress_stringQuotesOrEncodesDisplayNames(t *testing.T) {
	tests := []struct {
		name, display, want string
	}{
		{"plain atoms", "Bob Smith", "Bob Smith <bob@example.com>"},
		{"specials are quoted", "Alice (via Acme)", `"Alice (via Acme)" <bob@example.com>`},
		{"quotes escaped", `Bob "the builder"`, `"Bob \"the builder\"" <bob@example.com>`},
		{"non-ASCII Q-encoded", "Jörg Müller", "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <bob@example.com>"},
		{"non-ASCII with comma B-encoded", "Müller, Jörg", "=?utf-8?b?TcO8bGxlciwgSsO2cmc=?= <bob@example.com>"},
		{"looks like encoded word", "=?x?", `"=?x?" <bob@example.com>`},
		{"no name", "", "bob@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mail.Address{Name: tt.display, Email: "bob@example.com"}
			if got := a.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
			// What we write, a parser reads back unchanged.
			back, err := mail.ParseAddress(a.String())
			if err != nil || back != a {
				t.Fatalf("ParseAddress(String()) = %+v, %v; want %+v", back, err, a)
			}
		})
	}
}

func TestNewAddress_validatesNameAndEmailApart(t *testing.T) {
	if _, err := mail.NewAddress("Bob\r\nBcc: x@evil.example", "bob@example.com"); err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("NewAddress with CRLF in name = %v, want line break error", err)
	}
	a, err := mail.NewAddress("Bob", "Bob@Example.com")
	if err != nil || a.Email != "Bob@example.com" || a.Domain() != "example.com" || a.Local() != "Bob" {
		t.Fatalf("NewAddress = %+v, %v", a, err)
	}
}

func TestFilterMatches_ranksAddressOverDomainOverAny(t *testing.T) {
	tests := []struct {
		name, filter, from string
		want               int
	}{
		{"empty filter matches anything", "", "bob@acme.example", mail.FilterAny},
		{"empty filter matches even invalid from", "  ", "not an address", mail.FilterAny},
		{"domain", "acme.example", "bob@acme.example", mail.FilterDomain},
		{"domain with @", "@acme.example", "bob@acme.example", mail.FilterDomain},
		{"domain case-insensitive", "ACME.example", "bob@Acme.Example", mail.FilterDomain},
		{"domain IDN vs A-label", "bücher.de", "info@xn--bcher-kva.de", mail.FilterDomain},
		{"subdomain does not match", "acme.example", "bob@eu.acme.example", mail.FilterNoMatch},
		{"other domain", "acme.example", "bob@other.example", mail.FilterNoMatch},
		{"exact address", "news@acme.example", "news@acme.example", mail.FilterAddress},
		{"address case-insensitive", "News@ACME.example", "news@acme.example", mail.FilterAddress},
		{"other address same domain", "news@acme.example", "bob@acme.example", mail.FilterNoMatch},
		{"name-addr from", "news@acme.example", "Acme News <news@acme.example>", mail.FilterAddress},
		{"list takes best", "acme.example, news@acme.example", "news@acme.example", mail.FilterAddress},
		{"list domain entry", "other.example,acme.example", "bob@acme.example", mail.FilterDomain},
		{"invalid from", "acme.example", "bob@", mail.FilterNoMatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mail.FilterMatches(tt.filter, tt.from); got != tt.want {
				t.Fatalf("FilterMatches(%q, %q) = %d, want %d", tt.filter, tt.from, got, tt.want)
			}
		})
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"bob@example.com", `"Smith, Bob" <bob@example.com>`, "=?utf-8?q?J=C3=B6rg?= <j@example.com>",
		`"a\"b"@example.com`, "info@bücher.de", "bob@[IPv6:2001:db8::1]", "bob@", "a@b@c", "x@xn--bcher-kva.de",
		"Bob (c) <b@e.com> (d)",
		// Long inputs of one repeated shape, where a parser that rescans
		// what it has read would cost the square of the input.
		strings.Repeat("(", 256) + strings.Repeat(")", 256) + " <b@e.com>",
		strings.Repeat("a ", 256) + "<b@e.com>",
		strings.Repeat("=?utf-8?q?J=C3=B6rg?= ", 32) + "<b@e.com>",
		`"` + strings.Repeat(`\"`, 256) + `"@e.com`,
		"b@" + strings.Repeat("a.", 256) + "com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var a mail.Address
		var err error
		// Addresses come from producers and from bounces off the
		// internet: parsing one must cost work linear in its length.
		if work := allocated(func() { a, err = mail.ParseAddress(s) }); work > maxAddressWork(len(s)) {
			t.Fatalf("ParseAddress of %d bytes allocated %d bytes, over the linear bound %d", len(s), work, maxAddressWork(len(s)))
		}
		if err != nil {
			if !errors.Is(err, mail.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		if strings.ContainsAny(a.Email, "\r\n\x00") || strings.ContainsAny(a.Name, "\r\n\x00") {
			t.Fatalf("accepted line break or NUL: %+v", a)
		}
		local, domain := a.Local(), a.Domain()
		if len(local) > mail.MaxLocalPartLen || len(domain) > mail.MaxDomainLen || len(a.Email)+2 > mail.MaxPathLen {
			t.Fatalf("accepted over-long address %q", a.Email)
		}
		for i := 0; i < len(a.Email); i++ {
			if a.Email[i] >= 0x80 {
				t.Fatalf("canonical address %q is not ASCII", a.Email)
			}
		}
		// The canonical form is stable and what String writes parses back.
		if err := mail.ValidateMailbox(a.Email); err != nil {
			t.Fatalf("canonical %q does not validate: %v", a.Email, err)
		}
		if n, _ := mail.NormalizeMailbox(a.Email); n != a.Email {
			t.Fatalf("NormalizeMailbox(%q) = %q, not stable", a.Email, n)
		}
		back, err := mail.ParseAddress(a.String())
		if err != nil {
			t.Fatalf("ParseAddress(%q) (from %q): %v", a.String(), s, err)
		}
		if back.Email != a.Email {
			t.Fatalf("round trip %q -> %q", a.Email, back.Email)
		}
	})
}

func TestNormalizeDomain_returnsLowercaseALabels(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{"Acme.Example", "acme.example", ""},
		{"bücher.de", "xn--bcher-kva.de", ""},
		{"[192.0.2.1]", "", "not a domain name"},
		{"localhost", "", "has no dot"},
		{"a..b", "", "empty label"},
	}
	for _, tt := range tests {
		got, err := mail.NormalizeDomain(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NormalizeDomain(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// maxAddressWork is the most ParseAddress may allocate for n bytes of
// input: a fixed part (allocation is counted in whole spans) and a part
// linear in n, several times what long inputs of every shape need (about
// 50 bytes per input byte). Allocation measures work without timing, which
// a busy machine would make flaky.
func maxAddressWork(n int) uint64 { return 1<<20 + 256*uint64(n) }

// allocated is allocs.Bytes under the name these tests use.
func allocated(fn func()) uint64 { return allocs.Bytes(fn) }
