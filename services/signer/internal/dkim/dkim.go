// Package dkim signs outgoing messages with DKIM (RFC 6376) on behalf of
// their sender domains, using github.com/emersion/go-msgauth/dkim.
//
// Every signature is relaxed/relaxed with SHA-256, the algorithm set that
// survives the whitespace and folding changes relays make. A domain may
// have an RSA key and an Ed25519 key (RFC 8463); the message then carries
// one DKIM-Signature per key, so receivers that know Ed25519 use it and the
// others still find the RSA one.
//
// The signed header set is fixed: From, To, Cc, Subject, Date, Message-ID,
// Reply-To, MIME-Version, Content-Type, List-Unsubscribe,
// List-Unsubscribe-Post and Feedback-ID, each as many times as the message
// has it. From, the two List-Unsubscribe fields and Feedback-ID are listed
// once more than that (oversigning): a From field added in transit breaks
// the signature instead of being shown to the reader as the signed sender,
// and an unsubscribe link or feedback id added or replaced in transit
// breaks it too (RFC 8058 asks for both unsubscribe fields in h=; Gmail
// reads the Feedback-ID only when it is signed). Other fields that are
// absent are not listed.
//
// The costly part is the private-key operation (about 0.7 ms for RSA-2048
// on the reference machine, 15 µs for Ed25519); keys are checked and RSA
// keys precomputed once, in NewSigner, so that a signature costs only
// hashing and the key operation. go-msgauth canonicalises and hashes the
// body once per key (about 40 µs for 10 KB), so dual signing hashes it
// twice; the two signatures are computed in parallel. Sharing one body
// hash would mean re-implementing the signer, which is not worth 5% of an
// RSA signature.
package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"strings"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mailbus/mailbus/pkg/mail"
)

// Key is one DKIM private key: the signing domain (d=), the selector (s=)
// under which its public key is published, and the key itself, an
// *rsa.PrivateKey, an ed25519.PrivateKey, or any crypto.Signer (such as a
// KMS-backed one) whose Public() is an *rsa.PublicKey or an
// ed25519.PublicKey.
type Key struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// MinRSABits is the smallest RSA key NewSigner accepts (RFC 8301 section
// 3.2: verifiers must reject keys under 1024 bits).
const MinRSABits = 1024

// signedHeaders are the header fields signed when present, lowercase, in
// the order they are listed in h=; From must stay first (it is oversigned).
var signedHeaders = [...]string{
	"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
}

// oversigned are the signedHeaders listed once more than the message has
// them.
var oversigned = map[string]bool{"from": true, "list-unsubscribe": true, "list-unsubscribe-post": true, "feedback-id": true}

// Signer signs messages with a fixed set of keys. It is safe for
// concurrent use.
type Signer struct {
	keys []Key
}

// NewSigner checks the keys and prepares them for signing. Keys are used
// in the order given, which is the order of the signatures in the message
// (the first key's signature comes first).
func NewSigner(keys []Key) (*Signer, error) {
	if len(keys) == 0 {
		return nil, errors.New("dkim: no keys")
	}
	out := make([]Key, 0, len(keys))
	for i, k := range keys {
		domain, err := mail.NormalizeDomain(k.Domain)
		if err != nil {
			return nil, fmt.Errorf("dkim: key %d: domain: %w", i, err)
		}
		if err := checkSelector(k.Selector); err != nil {
			return nil, fmt.Errorf("dkim: key %d for %s: %w", i, domain, err)
		}
		if k.Signer == nil {
			return nil, fmt.Errorf("dkim: key %d for %s: no private key", i, domain)
		}
		switch pub := k.Signer.Public().(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() < MinRSABits {
				return nil, fmt.Errorf("dkim: key %d for %s: RSA key of %d bits; receivers reject keys under %d bits (use 2048)", i, domain, pub.N.BitLen(), MinRSABits)
			}
			if priv, ok := k.Signer.(*rsa.PrivateKey); ok {
				// Without the CRT values every signature would redo
				// the key setup; a key built by hand may lack them.
				if err := priv.Validate(); err != nil {
					return nil, fmt.Errorf("dkim: key %d for %s: invalid RSA key: %w", i, domain, err)
				}
				priv.Precompute()
			}
		case ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("dkim: key %d for %s: unsupported key type %T; use RSA or Ed25519", i, domain, pub)
		}
		out = append(out, Key{Domain: domain, Selector: strings.ToLower(k.Selector), Signer: k.Signer})
	}
	return &Signer{keys: out}, nil
}

// checkSelector accepts a selector made of DNS labels ("s2025",
// "mailbus.eu"), which is all RFC 6376 allows.
func checkSelector(s string) error {
	if s == "" {
		return errors.New("empty selector")
	}
	if len(s) > 63*2 {
		return fmt.Errorf("selector %q is too long", s)
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("selector %q: labels are 1 to 63 letters, digits or inner hyphens", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("selector %q contains %q; only letters, digits, hyphens and dots are allowed", s, c)
			}
		}
	}
	return nil
}

// Signatures returns the DKIM-Signature header fields for msg, one per key,
// each ending in CRLF, to be written before msg. A Delivery keeps them
// apart from the message so that a re-route can re-sign without stale
// signatures.
//
// msg must be the message exactly as it will be sent: CRLF line endings
// (as mail.Build and mail.PrepareRaw make them) and a From field.
func (s *Signer) Signatures(msg []byte) ([]byte, error) {
	headerKeys, err := headerKeys(msg)
	if err != nil {
		return nil, err
	}
	signers := make([]*msgauth.Signer, len(s.keys))
	writers := make([]io.Writer, len(s.keys))
	for i, k := range s.keys {
		signer, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.Signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
			BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
			HeaderKeys:             headerKeys,
		})
		if err != nil {
			closeAll(signers[:i])
			return nil, fmt.Errorf("dkim: sign for %s (selector %s): %w", k.Domain, k.Selector, err)
		}
		signers[i], writers[i] = signer, signer
	}
	// One pass over the message feeds every signer; each hashes and signs
	// in its own goroutine, so dual signing uses both cores.
	if _, err := io.MultiWriter(writers...).Write(msg); err != nil {
		closeAll(signers)
		return nil, fmt.Errorf("dkim: hash message: %w", err)
	}
	var out bytes.Buffer
	out.Grow(len(s.keys) * 600)
	var firstErr error
	for i, signer := range signers {
		if err := signer.Close(); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("dkim: sign for %s (selector %s): %w", s.keys[i].Domain, s.keys[i].Selector, err)
			}
			continue
		}
		out.WriteString(signer.Signature())
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return out.Bytes(), nil
}

// Sign returns msg with its DKIM-Signature header fields prepended (see
// Signatures).
func (s *Signer) Sign(msg []byte) ([]byte, error) {
	sigs, err := s.Signatures(msg)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(sigs)+len(msg))
	out = append(out, sigs...)
	return append(out, msg...), nil
}

func closeAll(signers []*msgauth.Signer) {
	for _, s := range signers {
		if s != nil {
			_ = s.Close()
		}
	}
}

// headerKeys lists the header fields to sign (h=) for msg: each signed
// field as many times as it occurs, From once more. It also checks that
// msg has CRLF line endings, without which the signature would be made
// over other bytes than those sent.
func headerKeys(msg []byte) ([]string, error) {
	if hasBareLF(msg) {
		return nil, errors.New("dkim: message has a bare LF line ending; prepare it with mail.Build or mail.PrepareRaw")
	}
	var counts [len(signedHeaders)]int
	for pos := 0; pos < len(msg); {
		end := bytes.IndexByte(msg[pos:], '\n')
		if end < 0 {
			end = len(msg)
		} else {
			end += pos + 1
		}
		line := msg[pos:end]
		pos = end
		if line[0] == '\r' {
			break // the empty line that ends the header
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimRight(line[:colon], " \t")
		for j, h := range signedHeaders {
			if len(name) == len(h) && strings.EqualFold(string(name), h) {
				counts[j]++
				break
			}
		}
	}
	if counts[0] == 0 {
		return nil, errors.New("dkim: message has no From field, which DKIM must sign")
	}
	keys := make([]string, 0, 16)
	for j, h := range signedHeaders {
		n := counts[j]
		if oversigned[h] {
			n++
		}
		for range n {
			keys = append(keys, h)
		}
	}
	return keys, nil
}

// hasBareLF reports a LF not preceded by CR anywhere in msg.
func hasBareLF(msg []byte) bool {
	for i := 0; i < len(msg); {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return false
		}
		if i+j == 0 || msg[i+j-1] != '\r' {
			return true
		}
		i += j + 1
	}
	return false
}
