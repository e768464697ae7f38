package dkimkey_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func pemOf(t *testing.T, typ string, der []byte) string {
	t.Helper()
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func TestParsePrivateKeyPEM_acceptsWhatDKIMToolsWriteAndRefusesTheRest(t *testing.T) {
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkcs8 := func(k any) []byte { b, _ := x509.MarshalPKCS8PrivateKey(k); return b }

	tests := []struct {
		name    string
		pem     string
		wantAlg pb.DkimAlgorithm
		wantErr string
	}{
		{"PKCS#1 RSA as opendkim-genkey writes", pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa2048)), pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, ""},
		{"PKCS#8 RSA", pemOf(t, "PRIVATE KEY", pkcs8(rsa2048)), pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, ""},
		{"ECDSA", pemOf(t, "PRIVATE KEY", pkcs8(ec)), 0, "cannot sign DKIM"},
		{"certificate", pemOf(t, "CERTIFICATE", []byte{1, 2, 3}), 0, "not a private key"},
		{"not PEM", "hello", 0, "not a PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, alg, err := dkimkey.ParsePrivateKeyPEM(tt.pem)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || alg != tt.wantAlg {
				t.Errorf("alg = %v, err = %v", alg, err)
			}
		})
	}
}

func TestGenerate_roundTripsThroughStorage(t *testing.T) {
	for _, alg := range []pb.DkimAlgorithm{pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256} {
		key, err := dkimkey.Generate(alg)
		if err != nil {
			t.Fatal(err)
		}
		der, err := dkimkey.MarshalPKCS8(key)
		if err != nil {
			t.Fatal(err)
		}
		back, gotAlg, err := dkimkey.ParsePKCS8(der)
		if err != nil || gotAlg != alg {
			t.Fatalf("%v: ParsePKCS8 = %v, %v", alg, gotAlg, err)
		}
		p1, _ := dkimkey.PublicKeyValue(key)
		p2, _ := dkimkey.PublicKeyValue(back)
		if p1 != p2 {
			t.Errorf("%v: public key changed through storage", alg)
		}
	}
	if got := dkimkey.TXTValue(pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256, "abc"); got != "v=DKIM1; k=ed25519; p=abc" {
		t.Errorf("TXTValue = %q", got)
	}
	if got := dkimkey.DNSName("s1", "acme.example."); got != "s1._domainkey.acme.example" {
		t.Errorf("DNSName = %q", got)
	}
	for sel, ok := range map[string]bool{"mb2026r": true, "a.b-c": true, "a_b": false, "-a": false, "": false} {
		if dkimkey.ValidSelector(sel) != ok {
			t.Errorf("ValidSelector(%q) = %v", sel, !ok)
		}
	}
}
