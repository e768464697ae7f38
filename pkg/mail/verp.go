package mail

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/oklog/ulid/v2"
)

// VERP return paths.
//
// A VERP address carries, in its local part, which delivery and which
// recipient a bounce is about, and a MAC so that nobody can forge one to
// make mailbus suppress an address or mark a message bounced:
//
//	b-<payload>-<mac>@<bounce domain>
//
// payload is lowercase unpadded base32 (RFC 4648 alphabet in lowercase) of
// a tag byte, the delivery id, and the recipient hash; mac is the first 10
// octets (80 bits) of HMAC-SHA256(key, "mailbus verp v1" || 0 || payload
// bytes), in the same base32. Lowercase base32 and "-" survive MTAs that
// change the case of local parts: decoding lowercases first.
//
// The delivery id is stored compactly (16 octets) when it is a ULID or a
// UUID, all in uppercase or all in lowercase, and as its bytes otherwise (at most MaxVERPRawIDLen octets), so that the local
// part stays within 64 octets: a ULID gives 55.
//
// The recipient is identified by RecipientHash: the first 5 octets of
// SHA-256 over the lowercased canonical address. A hash, not an index, so
// that the token does not depend on the order of a delivery's recipients
// and reveals nothing about the address; 40 bits are plenty to tell apart
// the recipients of one delivery, which is all it is used for (the bounce
// service compares it with RecipientHash of the delivery's recipients).
//
// The bounce domain is not covered by the MAC: moving the bounce domain
// must not invalidate mail in flight, and the bounce service only reads
// mail for its own domains anyway.

// MaxVERPRawIDLen is the longest delivery id, in octets, that VERPEncode
// accepts when it is neither a canonical ULID nor a canonical UUID.
const MaxVERPRawIDLen = 22

const (
	verpPrefix  = "b-"
	verpMACLen  = 10
	verpHashLen = 5

	verpTagULID      = 'u' // canonical (uppercase) ULID
	verpTagULIDLower = 'l' // the same in lowercase
	verpTagUUID      = 'g' // canonical (lowercase) UUID
	verpTagUUIDUpper = 'G' // the same in uppercase
	verpTagRaw       = 's'
)

var verpEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

var (
	// ErrNotVERP is returned by VERPDecode for an address that is not a
	// mailbus VERP address at all.
	ErrNotVERP = errors.New("not a mailbus VERP address")
	// ErrVERPForged is returned by VERPDecode when the MAC does not match:
	// the address was altered, or made with another key.
	ErrVERPForged = errors.New("VERP address signature does not match: altered, or signed with another key")
)

// RecipientHash identifies a recipient inside a VERP address: hex of the
// first 5 octets of SHA-256 over the lowercased canonical address (the
// address as given when it does not parse). Addresses that differ only in
// case have the same hash, because MTAs and DSNs do not keep case.
func RecipientHash(recipient string) string {
	sum := recipientHash(recipient)
	return hex.EncodeToString(sum[:])
}

func recipientHash(recipient string) [verpHashLen]byte {
	r := strings.TrimSpace(recipient)
	if canon, err := NormalizeMailbox(r); err == nil {
		r = canon
	}
	sum := sha256.Sum256([]byte(strings.ToLower(r)))
	var out [verpHashLen]byte
	copy(out[:], sum[:])
	return out
}

// VERPEncode returns the VERP return path for one recipient of one
// delivery, on bounceDomain. key is the HMAC key (at least 16 octets of
// secret). deliveryID is a ULID, a UUID, or any id of at most
// MaxVERPRawIDLen octets.
func VERPEncode(key []byte, deliveryID, recipient, bounceDomain string) (string, error) {
	if len(key) < 16 {
		return "", fmt.Errorf("encode VERP address: key is %d octets; use at least 16 octets of secret", len(key))
	}
	domain, reason := normalizeDomain(bounceDomain)
	if reason != "" {
		return "", fmt.Errorf("encode VERP address: bounce domain: %w", &AddressError{Input: bounceDomain, Reason: reason})
	}
	payload := make([]byte, 0, 1+MaxVERPRawIDLen+verpHashLen)
	switch {
	case isCanonicalULID(deliveryID):
		id := ulid.MustParseStrict(deliveryID)
		payload = append(append(payload, verpTagULID), id[:]...)
	case deliveryID == strings.ToLower(deliveryID) && isCanonicalULID(strings.ToUpper(deliveryID)):
		id := ulid.MustParseStrict(strings.ToUpper(deliveryID))
		payload = append(append(payload, verpTagULIDLower), id[:]...)
	case isCanonicalUUID(deliveryID):
		id := uuid.MustParse(deliveryID)
		payload = append(append(payload, verpTagUUID), id[:]...)
	case deliveryID == strings.ToUpper(deliveryID) && isCanonicalUUID(strings.ToLower(deliveryID)):
		id := uuid.MustParse(deliveryID)
		payload = append(append(payload, verpTagUUIDUpper), id[:]...)
	case deliveryID == "":
		return "", errors.New("encode VERP address: empty delivery id")
	case len(deliveryID) > MaxVERPRawIDLen:
		return "", fmt.Errorf("encode VERP address: delivery id %q is %d octets; a ULID, a UUID or at most %d octets fit in a 64-octet local part", clip(deliveryID), len(deliveryID), MaxVERPRawIDLen)
	default:
		payload = append(append(payload, verpTagRaw), deliveryID...)
	}
	h := recipientHash(recipient)
	payload = append(payload, h[:]...)

	mac := verpMAC(key, payload)
	local := verpPrefix + verpEncoding.EncodeToString(payload) + "-" + verpEncoding.EncodeToString(mac)
	return local + "@" + domain, nil
}

// VERPDecode checks a VERP address made by VERPEncode with key and returns
// the delivery id and the recipient hash (as RecipientHash gives it). The
// address may be in any case, with or without angle brackets; its domain
// is not checked (see the package notes above). The MAC comparison takes
// constant time. Errors: ErrNotVERP for other addresses, ErrVERPForged for
// a bad MAC; to rotate keys, try the new key and then the old one while
// mail signed with it may still bounce.
func VERPDecode(key []byte, address string) (deliveryID, recipientHash string, err error) {
	a := strings.ToLower(strings.TrimSpace(address))
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		a = a[:at]
	}
	rest, ok := strings.CutPrefix(a, verpPrefix)
	if !ok {
		return "", "", ErrNotVERP
	}
	enc, encMAC, ok := strings.Cut(rest, "-")
	if !ok {
		return "", "", ErrNotVERP
	}
	payload, err := verpEncoding.DecodeString(enc)
	if err != nil || len(payload) < 1+1+verpHashLen {
		return "", "", ErrNotVERP
	}
	mac, err := verpEncoding.DecodeString(encMAC)
	if err != nil || len(mac) != verpMACLen {
		return "", "", ErrNotVERP
	}
	if len(key) == 0 || !hmac.Equal(mac, verpMAC(key, payload)) {
		return "", "", ErrVERPForged
	}
	id := payload[1 : len(payload)-verpHashLen]
	hash := hex.EncodeToString(payload[len(payload)-verpHashLen:])
	switch payload[0] {
	case verpTagULID, verpTagULIDLower:
		var u ulid.ULID
		if len(id) != len(u) {
			return "", "", ErrNotVERP
		}
		copy(u[:], id)
		if payload[0] == verpTagULIDLower {
			return strings.ToLower(u.String()), hash, nil
		}
		return u.String(), hash, nil
	case verpTagUUID, verpTagUUIDUpper:
		u, err := uuid.FromBytes(id)
		if err != nil {
			return "", "", ErrNotVERP
		}
		if payload[0] == verpTagUUIDUpper {
			return strings.ToUpper(u.String()), hash, nil
		}
		return u.String(), hash, nil
	case verpTagRaw:
		return string(id), hash, nil
	}
	return "", "", ErrNotVERP
}

func verpMAC(key, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("mailbus verp v1\x00"))
	m.Write(payload)
	return m.Sum(nil)[:verpMACLen]
}

func isCanonicalULID(s string) bool {
	id, err := ulid.ParseStrict(s)
	return err == nil && id.String() == s
}

func isCanonicalUUID(s string) bool {
	id, err := uuid.Parse(s)
	return err == nil && len(s) == 36 && id.String() == s
}
