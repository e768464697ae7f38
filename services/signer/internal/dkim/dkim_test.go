package dkim_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/big"
	"regexp"
	"strings"
	"sync"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/mail"
	"github.com/mailbus/mailbus/pkg/testkit"
	"github.com/mailbus/mailbus/services/signer/internal/dkim"
)

// testKeys are made once per test binary: RSA key generation is slow on a
// shared machine.
var testKeys = sync.OnceValues(func() (rsaKey, edKey crypto.Signer) {
	r, err := dkimkey.Generate(mailbusv1.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256)
	if err != nil {
		panic(err)
	}
	e, err := dkimkey.Generate(mailbusv1.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256)
	if err != nil {
		panic(err)
	}
	return r, e
})

// zone publishes keys the way an administrator would: one TXT record per
// selector, made by DNSRecord.
type zone map[string]string

func publish(t testing.TB, keys []dkim.Key) zone {
	t.Helper()
	z := zone{}
	for _, k := range keys {
		rec, err := dkimkey.DNSRecord(k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		z[strings.ToLower(dkimkey.DNSName(k.Selector, k.Domain))] = rec
	}
	return z
}

func (z zone) lookupTXT(name string) ([]string, error) {
	if v, ok := z[strings.ToLower(strings.TrimSuffix(name, "."))]; ok {
		return []string{v}, nil
	}
	return nil, fmt.Errorf("no TXT record for %s", name)
}

type keySet struct {
	name string
	keys func() []dkim.Key
}

func keySets() []keySet {
	return []keySet{
		{"RSA-2048", func() []dkim.Key {
			r, _ := testKeys()
			return []dkim.Key{{Domain: "acme.example", Selector: "rsa2025", Signer: r}}
		}},
		{"Ed25519", func() []dkim.Key {
			_, e := testKeys()
			return []dkim.Key{{Domain: "acme.example", Selector: "ed2025", Signer: e}}
		}},
		{"dual RSA and Ed25519", func() []dkim.Key {
			r, e := testKeys()
			return []dkim.Key{
				{Domain: "acme.example", Selector: "rsa2025", Signer: r},
				{Domain: "acme.example", Selector: "ed2025", Signer: e},
			}
		}},
	}
}

// message builds a realistic message with the mailbus builder.
func message(t testing.TB, mutate func(*mailbusv1.Submission)) []byte {
	t.Helper()
	sub := &mailbusv1.Submission{
		From:    &mailbusv1.Address{Name: "Acme Shop", Email: "orders@acme.example"},
		To:      []*mailbusv1.Address{{Name: "Bob", Email: "bob@example.com"}},
		Cc:      []*mailbusv1.Address{{Email: "carol@example.com"}},
		ReplyTo: []*mailbusv1.Address{{Email: "help@acme.example"}},
		Subject: "Votre commande n° 12345 est expédiée",
		Headers: []*mailbusv1.Header{
			{Name: "List-Unsubscribe", Value: "<mailto:unsub@acme.example?subject=u42>, <https://acme.example/u/42>"},
			{Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click"},
		},
		TextBody: strings.Repeat("Hello Bob, your order has shipped. Ünïcödé.\n", 100),
		HtmlBody: strings.Repeat("<p>Hello Bob, your order has <b>shipped</b>.</p>\n", 100),
		Attachments: []*mailbusv1.Attachment{
			{Filename: "invoice.pdf", Content: bytes.Repeat([]byte("%PDF\x00\xff"), 300)},
		},
	}
	if mutate != nil {
		mutate(sub)
	}
	m, err := mail.Build(sub, mail.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return m.Data
}

func verifyGo(t *testing.T, z zone, signed []byte) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(signed), &msgauth.VerifyOptions{LookupTXT: z.lookupTXT})
	if err != nil {
		t.Fatalf("go-msgauth Verify: %v", err)
	}
	return vs
}

func TestSign_verifiesWithGoMsgauth(t *testing.T) {
	for _, ks := range keySets() {
		t.Run(ks.name, func(t *testing.T) {
			keys := ks.keys()
			s, err := dkim.NewSigner(keys)
			if err != nil {
				t.Fatal(err)
			}
			msg := message(t, nil)
			signed, err := s.Sign(msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasSuffix(signed, msg) {
				t.Fatal("Sign changed the message instead of prepending")
			}
			vs := verifyGo(t, publish(t, keys), signed)
			if len(vs) != len(keys) {
				t.Fatalf("%d signatures, want %d", len(vs), len(keys))
			}
			for i, v := range vs {
				if v.Err != nil {
					t.Fatalf("signature %d (%s) does not verify: %v", i, v.Domain, v.Err)
				}
				if v.Domain != "acme.example" {
					t.Errorf("d= %q", v.Domain)
				}
			}
		})
	}
}

func TestSign_verifiesWithDkimpy(t *testing.T) {
	for _, ks := range keySets() {
		t.Run(ks.name, func(t *testing.T) {
			keys := ks.keys()
			s, err := dkim.NewSigner(keys)
			if err != nil {
				t.Fatal(err)
			}
			signed, err := s.Sign(message(t, nil))
			if err != nil {
				t.Fatal(err)
			}
			results := testkit.VerifyDKIMWithDkimpy(t, signed, publish(t, keys))
			if len(results) != len(keys) {
				t.Fatalf("dkimpy saw %d signatures, want %d", len(results), len(keys))
			}
			wantAlg := map[string]string{"rsa2025": "rsa-sha256", "ed2025": "ed25519-sha256"}
			for i, r := range results {
				if !r.OK {
					t.Errorf("dkimpy: signature %d (s=%s a=%s) does not verify: %s", i, r.Selector, r.Algorithm, r.Error)
				}
				if r.Selector != keys[i].Selector || r.Algorithm != wantAlg[r.Selector] {
					t.Errorf("signature %d is s=%s a=%s, want s=%s a=%s", i, r.Selector, r.Algorithm, keys[i].Selector, wantAlg[keys[i].Selector])
				}
			}
		})
	}
}

func TestSign_dkimpyRejectsTamperedMessage(t *testing.T) {
	keys := keySets()[2].keys()
	s, _ := dkim.NewSigner(keys)
	signed, err := s.Sign(message(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Replace(signed, []byte("Bob, your order"), []byte("Bob, yOur order"), 1)
	for i, r := range testkit.VerifyDKIMWithDkimpy(t, tampered, publish(t, keys)) {
		if r.OK {
			t.Errorf("dkimpy accepted signature %d of a tampered message", i)
		}
	}
}

func signatureTags(t *testing.T, signed []byte) []map[string]string {
	t.Helper()
	var out []map[string]string
	unfolded := strings.ReplaceAll(string(signed[:bytes.Index(signed, []byte("\r\n\r\n"))]), "\r\n ", " ")
	unfolded = strings.ReplaceAll(unfolded, "\r\n\t", " ")
	for _, line := range strings.Split(unfolded, "\r\n") {
		v, ok := strings.CutPrefix(line, "DKIM-Signature:")
		if !ok {
			continue
		}
		tags := map[string]string{}
		for _, tv := range strings.Split(v, ";") {
			k, val, _ := strings.Cut(tv, "=")
			tags[strings.TrimSpace(k)] = regexp.MustCompile(`\s+`).ReplaceAllString(val, "")
		}
		out = append(out, tags)
	}
	return out
}

func TestSign_usesRelaxedSHA256AndFixedHeaderSet(t *testing.T) {
	keys := keySets()[2].keys()
	s, _ := dkim.NewSigner(keys)
	tests := []struct {
		name   string
		mutate func(*mailbusv1.Submission)
		wantH  string
	}{
		{"all listed fields present, From and the unsubscribe fields oversigned", nil,
			"from:from:to:cc:subject:date:message-id:reply-to:mime-version:content-type:list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post:feedback-id"},
		{"absent fields not listed, except the oversigned ones, whose absence is signed", func(s *mailbusv1.Submission) {
			s.Cc, s.ReplyTo, s.Headers = nil, nil, []*mailbusv1.Header{{Name: "X-Campaign", Value: "spring"}}
		}, "from:from:to:subject:date:message-id:mime-version:content-type:list-unsubscribe:list-unsubscribe-post:feedback-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signed, err := s.Sign(message(t, tt.mutate))
			if err != nil {
				t.Fatal(err)
			}
			tags := signatureTags(t, signed)
			if len(tags) != 2 {
				t.Fatalf("%d DKIM-Signature fields, want 2", len(tags))
			}
			for i, tg := range tags {
				if tg["c"] != "relaxed/relaxed" || tg["h"] != tt.wantH || tg["d"] != "acme.example" {
					t.Errorf("signature %d: c=%s h=%s d=%s; want relaxed/relaxed, h=%s", i, tg["c"], tg["h"], tg["d"], tt.wantH)
				}
			}
			if tags[0]["a"] != "rsa-sha256" || tags[1]["a"] != "ed25519-sha256" {
				t.Errorf("algorithms %s, %s", tags[0]["a"], tags[1]["a"])
			}
			verifyGo(t, publish(t, keys), signed)
		})
	}
}

func TestSign_oversignedFromRejectsAddedFrom(t *testing.T) {
	keys := keySets()[0].keys()
	s, _ := dkim.NewSigner(keys)
	signed, err := s.Sign(message(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	// An attacker adds a second From below the signature.
	i := bytes.Index(signed, []byte("\r\nFrom:")) + 2
	forged := append(append(append([]byte{}, signed[:i]...), "From: ceo@acme.example\r\n"...), signed[i:]...)
	vs, _ := msgauth.VerifyWithOptions(bytes.NewReader(forged), &msgauth.VerifyOptions{LookupTXT: publish(t, keys).lookupTXT})
	if len(vs) != 1 || vs[0].Err == nil {
		t.Fatal("signature still verifies after a From field was added")
	}
}

func TestSign_survivesRelaxedChangesButNotContentChanges(t *testing.T) {
	keys := keySets()[2].keys()
	s, _ := dkim.NewSigner(keys)
	signed, err := s.Sign(message(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	z := publish(t, keys)
	tests := []struct {
		name   string
		change func([]byte) []byte
		wantOK bool
	}{
		{"unchanged", func(b []byte) []byte { return b }, true},
		{"header refolded and spaced", func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nSubject: "), []byte("\r\nSubject:    "), 1)
		}, true},
		{"unsigned header added", func(b []byte) []byte {
			return append([]byte("Received: from relay.example\r\n"), b...)
		}, true},
		{"trailing blank lines added", func(b []byte) []byte { return append(b, "\r\n\r\n"...) }, true},
		{"body changed", func(b []byte) []byte {
			return bytes.Replace(b, []byte("your order has shipped"), []byte("your order was lost!!"), 1)
		}, false},
		{"subject changed", func(b []byte) []byte {
			return bytes.Replace(b, []byte("\r\nSubject: "), []byte("\r\nSubject: RE: "), 1)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vs, err := msgauth.VerifyWithOptions(bytes.NewReader(tt.change(bytes.Clone(signed))), &msgauth.VerifyOptions{LookupTXT: z.lookupTXT})
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range vs {
				if (v.Err == nil) != tt.wantOK {
					t.Errorf("signature %d: err = %v, want ok=%v", i, v.Err, tt.wantOK)
				}
			}
		})
	}
}

func TestSignatures_areTheHeadersSignPrepends(t *testing.T) {
	keys := keySets()[2].keys()
	s, _ := dkim.NewSigner(keys)
	msg := message(t, nil)
	sigs, err := s.Signatures(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(sigs, []byte("DKIM-Signature: ")) || !bytes.HasSuffix(sigs, []byte("\r\n")) || bytes.Count(sigs, []byte("DKIM-Signature:")) != 2 {
		t.Fatalf("Signatures = %q", sigs)
	}
	for _, line := range bytes.Split(bytes.TrimSuffix(sigs, []byte("\r\n")), []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("signature line of %d octets", len(line))
		}
	}
	// The sender writes the signatures, then the message.
	vs := verifyGo(t, publish(t, keys), append(bytes.Clone(sigs), msg...))
	for _, v := range vs {
		if v.Err != nil {
			t.Fatal(v.Err)
		}
	}
}

func TestSign_isSafeForConcurrentUse(t *testing.T) {
	keys := keySets()[1].keys()
	s, _ := dkim.NewSigner(keys)
	msg := message(t, nil)
	z := publish(t, keys)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			signed, err := s.Sign(msg)
			if err != nil {
				errs <- err
				return
			}
			vs, err := msgauth.VerifyWithOptions(bytes.NewReader(signed), &msgauth.VerifyOptions{LookupTXT: z.lookupTXT})
			if err == nil && (len(vs) != 1 || vs[0].Err != nil) {
				err = errors.New("signature does not verify")
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestSign_rejectsMessagesItCannotSignFaithfully(t *testing.T) {
	s, _ := dkim.NewSigner(keySets()[1].keys())
	tests := []struct {
		name, msg, wantErr string
	}{
		{"bare LF", "From: a@acme.example\nSubject: x\n\nbody\n", "bare LF"},
		{"bare LF in body", "From: a@acme.example\r\n\r\nline\nline\r\n", "bare LF"},
		{"no From", "Subject: x\r\n\r\nbody\r\n", "no From field"},
		{"empty", "", "no From field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Sign([]byte(tt.msg))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Sign error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// publicOnly is a crypto.Signer that only has a public key, standing in
// for keys that cannot be generated (too small) or for other algorithms.
type publicOnly struct{ pub crypto.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }
func (p publicOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("not a real key")
}

func TestNewSigner_rejectsUnusableKeys(t *testing.T) {
	r, e := testKeys()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	small := publicOnly{&rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 767), E: 65537}}
	tests := []struct {
		name    string
		keys    []dkim.Key
		wantErr string
	}{
		{"no keys", nil, "no keys"},
		{"bad domain", []dkim.Key{{Domain: "acme..example", Selector: "s", Signer: e}}, "domain"},
		{"empty selector", []dkim.Key{{Domain: "acme.example", Signer: e}}, "empty selector"},
		{"bad selector", []dkim.Key{{Domain: "acme.example", Selector: "s_1", Signer: e}}, "contains '_'"},
		{"no key", []dkim.Key{{Domain: "acme.example", Selector: "s"}}, "no private key"},
		{"small RSA", []dkim.Key{{Domain: "acme.example", Selector: "s", Signer: small}}, "RSA key of 768 bits"},
		{"ECDSA", []dkim.Key{{Domain: "acme.example", Selector: "s", Signer: ec}}, "unsupported key type"},
		{"one bad among good", []dkim.Key{{Domain: "acme.example", Selector: "s", Signer: r}, {Domain: "acme.example", Selector: "", Signer: e}}, "key 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dkim.NewSigner(tt.keys)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewSigner error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewSigner_normalisesDomainAndSelector(t *testing.T) {
	_, e := testKeys()
	keys := []dkim.Key{{Domain: "Bücher.Example", Selector: "ED2025", Signer: e}}
	s, err := dkim.NewSigner(keys)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := s.Sign(message(t, func(sub *mailbusv1.Submission) { sub.From.Email = "info@bücher.example" }))
	if err != nil {
		t.Fatal(err)
	}
	tags := signatureTags(t, signed)
	if tags[0]["d"] != "xn--bcher-kva.example" || tags[0]["s"] != "ed2025" {
		t.Fatalf("d=%s s=%s", tags[0]["d"], tags[0]["s"])
	}
	z := publish(t, []dkim.Key{{Domain: "xn--bcher-kva.example", Selector: "ed2025", Signer: e}})
	if vs := verifyGo(t, z, signed); vs[0].Err != nil {
		t.Fatal(vs[0].Err)
	}
}

// Benchmarks. Compare BenchmarkSign_RSA2048_10KB with BenchmarkRawRSA2048:
// the difference is what DKIM adds to the private-key operation (hashing,
// canonicalisation, header formatting).

func benchSign(b *testing.B, keys []dkim.Key) {
	s, err := dkim.NewSigner(keys)
	if err != nil {
		b.Fatal(err)
	}
	msg := message(b, func(sub *mailbusv1.Submission) {
		sub.Attachments = nil
		sub.TextBody = strings.Repeat("Hello Bob, your order has shipped. Ünïcödé.\n", 90) // ~4 KB
		sub.HtmlBody = strings.Repeat("<p>Hello Bob, your order has <b>shipped</b>.</p>\n", 110)
	})
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Signatures(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign_RSA2048_10KB(b *testing.B) { benchSign(b, keySets()[0].keys()) }

func BenchmarkSign_Ed25519_10KB(b *testing.B) { benchSign(b, keySets()[1].keys()) }

func BenchmarkSign_Dual_10KB(b *testing.B) { benchSign(b, keySets()[2].keys()) }

// BenchmarkRawRSA2048 is the floor: one PKCS#1 v1.5 signature of a SHA-256
// digest with a precomputed 2048-bit key.
func BenchmarkRawRSA2048(b *testing.B) {
	r, _ := testKeys()
	key := r.(*rsa.PrivateKey)
	key.Precompute()
	digest := sha256.Sum256([]byte("message"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawEd25519 is the same floor for Ed25519.
func BenchmarkRawEd25519(b *testing.B) {
	_, e := testKeys()
	key := e.(ed25519.PrivateKey)
	digest := sha256.Sum256([]byte("message"))
	b.ReportAllocs()
	for b.Loop() {
		ed25519.Sign(key, digest[:])
	}
}
