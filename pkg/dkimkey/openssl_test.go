package dkimkey_test

import (
	"crypto"
	"os"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
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
func TestDNSRecord_matchesOpenSSLsEncodingOfItsKeys(t *testing.T) {
	tests := []struct {
		file, pFile, wantPrefix string
		alg                     pb.DkimAlgorithm
	}{
		{"rsa2048.pem", "rsa2048.p", "v=DKIM1; k=rsa; p=", pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256},
		{"rsa2048.pkcs1.pem", "rsa2048.p", "v=DKIM1; k=rsa; p=", pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256},
		{"ed25519.pem", "ed25519.p", "v=DKIM1; k=ed25519; p=", pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			key, alg, err := dkimkey.ParsePrivateKeyPEM(readFile(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if alg != tt.alg {
				t.Fatalf("algorithm = %v, want %v", alg, tt.alg)
			}
			rec, err := dkimkey.DNSRecord(key)
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.wantPrefix + strings.TrimSpace(readFile(t, tt.pFile)); rec != want {
				t.Fatalf("DNSRecord =\n%s\nwant (from OpenSSL)\n%s", rec, want)
			}
		})
	}
}

func TestMarshalPKCS8_roundTrips(t *testing.T) {
	for _, file := range []string{"rsa2048.pem", "ed25519.pem"} {
		key, _, err := dkimkey.ParsePrivateKeyPEM(readFile(t, file))
		if err != nil {
			t.Fatal(err)
		}
		der, err := dkimkey.MarshalPKCS8(key)
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := dkimkey.ParsePKCS8(der)
		if err != nil {
			t.Fatal(err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Fatalf("%s: public key changed in the round trip", file)
		}
	}
}

func TestSplitTXT_cutsAt255Octets(t *testing.T) {
	key, _, err := dkimkey.ParsePrivateKeyPEM(readFile(t, "rsa2048.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := dkimkey.DNSRecord(key)
	parts := dkimkey.SplitTXT(rec)
	if len(parts) != 2 || len(parts[0]) != 255 || strings.Join(parts, "") != rec {
		t.Fatalf("SplitTXT of %d octets = %d parts", len(rec), len(parts))
	}
	if got := dkimkey.SplitTXT("short"); len(got) != 1 || got[0] != "short" {
		t.Fatalf("SplitTXT(short) = %q", got)
	}
	// The zone-file line quotes each part, as a zone or a provider's form takes it.
	want := `s1._domainkey.acme.example. IN TXT "` + parts[0] + `" "` + parts[1] + `"`
	if got := dkimkey.ZoneTXT("s1._domainkey.acme.example.", rec); got != want {
		t.Fatalf("ZoneTXT = %q, want %q", got, want)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
