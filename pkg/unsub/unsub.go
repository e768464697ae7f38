// Package unsub makes and checks the one-click unsubscribe links (RFC 8058)
// that mass mail carries: an HTTPS URL per recipient, and a mailto:
// address on the tenant's bounce domain.
//
// A link is signed with the same secrets as the VERP return paths (the
// router signs, the bounce service, which serves the links, checks): it
// names the tenant, the recipient and the message, so a link cannot be
// edited to unsubscribe someone else or from another tenant, and needs no
// state to check. It does not expire: an unsubscribe link must work as long
// as the mail that carries it is in someone's mailbox.
package unsub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"strings"
)

// Link is what a one-click unsubscribe link names.
type Link struct {
	Tenant    string
	Recipient string
	MessageID string
}

// ErrInvalid is a link that was not made with any of the keys: altered,
// forged, or cut.
var ErrInvalid = errors.New("unsubscribe link is not valid: it was altered or not issued here")

const macLen = 16

// Token signs l with key for a URL path segment.
func Token(key []byte, l Link) string {
	payload := l.Tenant + "\x00" + strings.ToLower(l.Recipient) + "\x00" + l.MessageID
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(mac(key, "url", payload)[:macLen])
}

// Parse checks a token made by Token with any of keys (the current one
// first, then those still being rotated out).
func Parse(keys [][]byte, token string) (Link, error) {
	p, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Link{}, ErrInvalid
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return Link{}, ErrInvalid
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(got) != macLen {
		return Link{}, ErrInvalid
	}
	for _, k := range keys {
		if hmac.Equal(got, mac(k, "url", string(payload))[:macLen]) {
			parts := strings.Split(string(payload), "\x00")
			if len(parts) != 3 || parts[0] == "" || !strings.Contains(parts[1], "@") {
				return Link{}, ErrInvalid
			}
			return Link{Tenant: parts[0], Recipient: parts[1], MessageID: parts[2]}, nil
		}
	}
	return Link{}, ErrInvalid
}

// mailtoPrefix starts the local part of unsubscribe addresses; VERP return
// paths start with "b-" and "bx-".
const mailtoPrefix = "u-"

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// MailtoLocal is the local part of recipient's unsubscribe address at the
// tenant's bounce domain: "u-" and a MAC of the tenant and the recipient,
// short enough for any local part. The address does not say who the
// recipient is: the unsubscribe mail does, from the recipient's own address
// (RFC 8058 clients send it so), and MailtoMatches checks the pair.
func MailtoLocal(key []byte, tenant, recipient string) string {
	return mailtoPrefix + strings.ToLower(b32.EncodeToString(mac(key, "mailto", tenant+"\x00"+strings.ToLower(recipient))[:10]))
}

// IsMailto reports whether local has the form of an unsubscribe address.
func IsMailto(local string) bool {
	local = strings.ToLower(local)
	return strings.HasPrefix(local, mailtoPrefix) && len(local) == len(mailtoPrefix)+16
}

// MailtoMatches reports whether local is sender's unsubscribe address for
// the tenant under any of keys.
func MailtoMatches(keys [][]byte, tenant, local, sender string) bool {
	local = strings.ToLower(local)
	for _, k := range keys {
		if hmac.Equal([]byte(local), []byte(MailtoLocal(k, tenant, sender))) {
			return true
		}
	}
	return false
}

func mac(key []byte, purpose, payload string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("mailbus-unsubscribe\x00" + purpose + "\x00"))
	h.Write([]byte(payload))
	return h.Sum(nil)
}
