package dkim_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"os"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mailbus/mailbus/services/signer/internal/dkim"
)

// The keys in testdata were made with OpenSSL, and the .p files hold the
// public key as OpenSSL encodes it (DER SubjectPublicKeyInfo for RSA, the
// raw 32 octets for Ed25519), so these tests check our encoding against an
// independent one:
//
//	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048.pem
//	openssl rsa -in rsa2048.pem -traditional -out rsa2048.pkcs1.pem
//	openssl genpkey -algorithm ed25519 -out ed25519.pem
//	openssl pkey -in rsa2048.pem -pubout -outform DER | base64 -w0 > rsa2048.p
//	openssl pkey -in ed25519.pem -pubout -outform DER | tail -c 32 | base64 -w0 > ed25519.p

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParsePrivateKeyPEM_readsOpenSSLKeys(t *testing.T) {
	tests := []struct {
		file, pFile, wantRecordPrefix string
	}{
		{"rsa2048.pem", "rsa2048.p", "v=DKIM1; k=rsa; p="},
		{"rsa2048.pkcs1.pem", "rsa2048.p", "v=DKIM1; k=rsa; p="},
		{"ed25519.pem", "ed25519.p", "v=DKIM1; k=ed25519; p="},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			key, err := dkim.ParsePrivateKeyPEM(readFile(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			rec, err := dkim.DNSRecord(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			want := tt.wantRecordPrefix + strings.TrimSpace(string(readFile(t, tt.pFile)))
			if rec != want {
				t.Fatalf("DNSRecord =\n%s\nwant (from OpenSSL)\n%s", rec, want)
			}
			if k, ok := key.(*rsa.PrivateKey); ok && k.Precomputed.Dp == nil {
				t.Fatal("RSA key not precomputed")
			}
		})
	}
}

func TestMarshalPrivateKeyPEM_roundTrips(t *testing.T) {
	r, e := testKeys()
	for _, key := range []crypto.Signer{r, e} {
		pemBytes, err := dkim.MarshalPrivateKeyPEM(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PRIVATE KEY-----\n")) {
			t.Fatalf("not PKCS#8 PEM: %.40q", pemBytes)
		}
		back, err := dkim.ParsePrivateKeyPEM(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Fatalf("%T: public key changed in the round trip", key)
		}
	}
}

func TestDNSRecord_publishesKeysGoMsgauthAccepts(t *testing.T) {
	for _, alg := range []dkim.Algorithm{dkim.RSA2048, dkim.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := dkim.GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			switch k := key.Public().(type) {
			case *rsa.PublicKey:
				if k.N.BitLen() != 2048 {
					t.Fatalf("RSA key of %d bits", k.N.BitLen())
				}
			case ed25519.PublicKey:
			default:
				t.Fatalf("key type %T", k)
			}
			keys := []dkim.Key{{Domain: "acme.example", Selector: "s1", Signer: key}}
			s, err := dkim.NewSigner(keys)
			if err != nil {
				t.Fatal(err)
			}
			signed, err := s.Sign([]byte("From: a@acme.example\r\nSubject: x\r\n\r\nbody\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			z := publish(t, keys)
			if _, ok := z["s1._domainkey.acme.example"]; !ok {
				t.Fatalf("published under %v", z)
			}
			vs, err := msgauth.VerifyWithOptions(bytes.NewReader(signed), &msgauth.VerifyOptions{LookupTXT: z.lookupTXT})
			if err != nil || len(vs) != 1 || vs[0].Err != nil {
				t.Fatalf("verify: %v %v", err, vs)
			}
		})
	}
}

func TestGenerateKey_rejectsUnknownAlgorithm(t *testing.T) {
	if _, err := dkim.GenerateKey("rsa1024"); err == nil || !strings.Contains(err.Error(), `use "rsa2048" or "ed25519"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestParsePrivateKeyPEM_rejectsOtherData(t *testing.T) {
	pub := readFile(t, "rsa2048.pem")
	tests := []struct {
		name, data, wantErr string
	}{
		{"not PEM", "hello", "no PEM block"},
		{"public key", "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAMPukJkc4ZUSNcVH43S9Q227iPk9sm+xFLdtRNEEebWk=\n-----END PUBLIC KEY-----\n", `"PUBLIC KEY" is not a private key`},
		{"corrupt", strings.Replace(string(pub), "MII", "MIJ", 1), "parse private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dkim.ParsePrivateKeyPEM([]byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestSplitTXT_cutsAt255Octets(t *testing.T) {
	r, _ := testKeys()
	rec, _ := dkim.DNSRecord(r.Public())
	parts := dkim.SplitTXT(rec)
	if len(parts) != 2 || len(parts[0]) != 255 || strings.Join(parts, "") != rec {
		t.Fatalf("SplitTXT of %d octets = %d parts", len(rec), len(parts))
	}
	if got := dkim.SplitTXT("short"); len(got) != 1 || got[0] != "short" {
		t.Fatalf("SplitTXT(short) = %q", got)
	}
}

func TestDNSName_isSelectorUnderDomainkey(t *testing.T) {
	if got := dkim.DNSName("s2025", "acme.example."); got != "s2025._domainkey.acme.example" {
		t.Fatalf("DNSName = %q", got)
	}
}
