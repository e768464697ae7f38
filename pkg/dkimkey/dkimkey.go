// Package dkimkey makes and reads DKIM signing keys and the DNS records that
// publish them (RFC 6376 for RSA, RFC 8463 for Ed25519).
package dkimkey

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strings"

	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// RSABits is the size of generated RSA keys. 2048 is what RFC 8301 asks
// signers for and what every DNS provider accepts in a TXT record.
const RSABits = 2048

// MinImportRSABits is the smallest RSA key accepted on import; RFC 8301
// makes verifiers ignore anything smaller.
const MinImportRSABits = 1024

var selectorPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// ValidSelector reports whether s is a valid (lower-case) selector: one or
// more DNS labels.
func ValidSelector(s string) bool { return len(s) <= 200 && selectorPattern.MatchString(s) }

// Generate makes a new key for alg.
func Generate(alg pb.DkimAlgorithm) (crypto.Signer, error) {
	switch alg {
	case pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256:
		k, err := rsa.GenerateKey(rand.Reader, RSABits)
		if err != nil {
			return nil, fmt.Errorf("generating RSA key: %w", err)
		}
		return k, nil
	case pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating Ed25519 key: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("unknown DKIM algorithm %v", alg)
	}
}

// ParsePrivateKeyPEM reads a PEM private key: PKCS#8 ("PRIVATE KEY"), or
// PKCS#1 ("RSA PRIVATE KEY") as opendkim-genkey writes it.
func ParsePrivateKeyPEM(text string) (crypto.Signer, pb.DkimAlgorithm, error) {
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, 0, errors.New("not a PEM block")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, 0, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("parsing private key: %w", err)
	}
	return checkKey(key)
}

// ParsePKCS8 reads a key as stored (PKCS#8 DER).
func ParsePKCS8(der []byte) (crypto.Signer, pb.DkimAlgorithm, error) {
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, 0, fmt.Errorf("parsing private key: %w", err)
	}
	return checkKey(key)
}

func checkKey(key any) (crypto.Signer, pb.DkimAlgorithm, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < MinImportRSABits {
			return nil, 0, fmt.Errorf("RSA key has %d bits; DKIM needs at least %d (2048 recommended)", k.N.BitLen(), MinImportRSABits)
		}
		return k, pb.DkimAlgorithm_DKIM_ALGORITHM_RSA_SHA256, nil
	case ed25519.PrivateKey:
		return k, pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256, nil
	default:
		return nil, 0, fmt.Errorf("%T keys cannot sign DKIM (want RSA or Ed25519)", key)
	}
}

// MarshalPKCS8 encodes a key for storage.
func MarshalPKCS8(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return der, nil
}

// PublicKeyValue returns the p= value of the DNS record for a key: for RSA
// the base64 DER SubjectPublicKeyInfo (what opendkim publishes), for Ed25519
// the base64 of the raw 32-byte public key (RFC 8463 section 4.2).
func PublicKeyValue(key crypto.Signer) (string, error) {
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("encoding public key: %w", err)
		}
		return base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(pub), nil
	default:
		return "", fmt.Errorf("%T keys cannot sign DKIM", pub)
	}
}

// KeyType returns the k= tag value for alg.
func KeyType(alg pb.DkimAlgorithm) string {
	if alg == pb.DkimAlgorithm_DKIM_ALGORITHM_ED25519_SHA256 {
		return "ed25519"
	}
	return "rsa"
}

// TXTValue returns the TXT record to publish for a key. DNS providers split
// strings longer than 255 bytes themselves; this is the logical value.
func TXTValue(alg pb.DkimAlgorithm, publicKeyValue string) string {
	return "v=DKIM1; k=" + KeyType(alg) + "; p=" + publicKeyValue
}

// DNSName returns the name of the TXT record for selector in domain.
func DNSName(selector, domain string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".")
}

// DNSRecord is the TXT record value that publishes key:
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" for RSA (RFC 6376
// section 3.6.1), "v=DKIM1; k=ed25519; p=<base64 of the 32-octet key>" for
// Ed25519 (RFC 8463 section 4).
func DNSRecord(key crypto.Signer) (string, error) {
	_, alg, err := checkKey(key)
	if err != nil {
		return "", err
	}
	p, err := PublicKeyValue(key)
	if err != nil {
		return "", err
	}
	return TXTValue(alg, p), nil
}

// SplitTXT cuts a TXT record value into the character-strings of at most
// 255 octets that one DNS TXT record holds (an RSA-2048 record is longer);
// resolvers join them back. Write them in a zone file as "part1" "part2".
func SplitTXT(value string) []string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, value[:255])
		value = value[255:]
	}
	return append(parts, value)
}

// ZoneTXT is a TXT record in zone-file form, ready to paste into a zone or
// a DNS provider's form: `name. IN TXT "part1" "part2"`, the value cut into
// strings of at most 255 octets (SplitTXT).
func ZoneTXT(name, value string) string {
	parts := SplitTXT(value)
	for i, p := range parts {
		parts[i] = `"` + p + `"`
	}
	return strings.TrimSuffix(name, ".") + ". IN TXT " + strings.Join(parts, " ")
}
