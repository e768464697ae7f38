package dkim

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
	"strings"
)

// Algorithm is a DKIM key algorithm.
type Algorithm string

// The key algorithms mailbus signs with.
const (
	// RSA2048 is rsa-sha256 with a 2048-bit key, which every receiver
	// verifies (RFC 8301 recommends at least 2048 bits).
	RSA2048 Algorithm = "rsa2048"
	// Ed25519 is ed25519-sha256 (RFC 8463): small keys and fast signing,
	// but not yet verified everywhere, so pair it with an RSA key.
	Ed25519 Algorithm = "ed25519"
)

// GenerateKey makes a new private key for alg.
func GenerateKey(alg Algorithm) (crypto.Signer, error) {
	switch alg {
	case RSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate RSA key: %w", err)
		}
		return k, nil
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate Ed25519 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("dkim: unknown key algorithm %q; use %q or %q", alg, RSA2048, Ed25519)
}

// DNSName is where the public key of selector on domain is published:
// "<selector>._domainkey.<domain>".
func DNSName(selector, domain string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".")
}

// DNSRecord is the TXT record value that publishes pub:
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" for RSA (RFC 6376
// section 3.6.1), "v=DKIM1; k=ed25519; p=<base64 of the 32-octet key>" for
// Ed25519 (RFC 8463 section 4). An RSA-2048 value is longer than the 255
// octets of one DNS character-string; SplitTXT cuts it for zone files.
func DNSRecord(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", fmt.Errorf("dkim: encode RSA public key: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", fmt.Errorf("dkim: Ed25519 public key of %d octets", len(k))
		}
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("dkim: unsupported public key type %T; use RSA or Ed25519", pub)
}

// SplitTXT cuts a TXT record value into the character-strings of at most
// 255 octets that one DNS TXT record holds; resolvers join them back.
// Write them in a zone file as "part1" "part2".
func SplitTXT(value string) []string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, value[:255])
		value = value[255:]
	}
	return append(parts, value)
}

// ParsePrivateKeyPEM reads a private key from PEM: PKCS#8 ("PRIVATE
// KEY", RSA or Ed25519) or, as openssl genrsa writes it, PKCS#1 ("RSA
// PRIVATE KEY"). RSA keys come back precomputed.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("dkim: no PEM block in private key data")
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
		return nil, fmt.Errorf("dkim: PEM block %q is not a private key; want \"PRIVATE KEY\" (PKCS#8)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: parse private key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		k.Precompute()
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("dkim: unsupported private key type %T; use RSA or Ed25519", key)
}

// MarshalPrivateKeyPEM writes key as PKCS#8 PEM ("PRIVATE KEY"), the form
// ParsePrivateKeyPEM reads.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("dkim: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
