package mail

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
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
// make mailbus suppress an address or mark a message bounced. It has one
// of two forms:
//
//	b-<delivery id>-<tail>@<bounce domain>     ids of [a-z0-9.], as pkg/ids makes
//	bx-<payload>-<tail>@<bounce domain>        any other id, encoded
//
// tail is the lowercase unpadded base32 (RFC 4648 alphabet in lowercase) of
// the 5-octet recipient hash and the first 10 octets (80 bits) of
// HMAC-SHA256(key, "mailbus verp v2" || 0 || uvarint(len(tenant id)) ||
// tenant id || form || 0 || id bytes || recipient hash). payload is the same base32 of a tag octet and the id:
// 16 octets for a ULID or a UUID (all uppercase or all lowercase, so that
// decoding gives the id back exactly), the id's own octets otherwise.
// Only lowercase letters, digits, "-" and "." are used, and decoding
// lowercases first, so MTAs that change the case of local parts do no
// harm. The local part stays within 64 octets: an id in the first form may
// have MaxVERPIDLen octets; a ULID or UUID always fits; any other id may
// have MaxVERPRawIDLen octets.
//
// The recipient is identified by RecipientHash: the first 5 octets of
// SHA-256 over the lowercased canonical address. A hash, not an index, so
// that the token does not depend on the order of a delivery's recipients
// and reveals nothing about the address; 40 bits are plenty to tell apart
// the recipients of one delivery, which is all it is used for (the bounce
// service compares it with RecipientHash of the delivery's recipients).
//
// The MAC binds the address to the tenant whose delivery it names, which
// the address itself does not carry: the bounce service verifies it with
// the tenant that owns the bounce domain the mail came to, so that a
// return path of one tenant is worthless at another tenant's bounce
// domain (it would otherwise put one tenant's recipient on another
// tenant's suppression list). Addresses made before the tenant was bound
// ("mailbus verp v1") no longer verify.
//
// The bounce domain is not covered by the MAC: moving the bounce domain
// must not invalidate mail in flight, and the bounce service checks that
// the domain belongs to the tenant anyway.

const (
	// MaxVERPIDLen is the longest delivery id, in octets, made of
	// lowercase letters, digits and inner dots, that VERPEncode accepts.
	MaxVERPIDLen = MaxLocalPartLen - len(verpPlain) - 1 - verpTailLen
	// MaxVERPRawIDLen is the longest other delivery id (neither such an id
	// nor a ULID or UUID), in octets, that VERPEncode accepts.
	MaxVERPRawIDLen = (MaxLocalPartLen-len(verpEncoded)-1-verpTailLen)*5/8 - 1
)

const (
	verpPlain   = "b-"
	verpEncoded = "bx-"
	verpMACLen  = 10
	verpHashLen = 5
	// verpTailLen is the base32 length of the hash and the MAC.
	verpTailLen = ((verpHashLen+verpMACLen)*8 + 4) / 5

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
// delivery of tenantID, on bounceDomain. key is the HMAC key (at least 16
// octets of secret). deliveryID is an id of lowercase letters, digits and inner dots
// (at most MaxVERPIDLen octets), a ULID, a UUID, or any other id of at
// most MaxVERPRawIDLen octets.
func VERPEncode(key []byte, tenantID, deliveryID, recipient, bounceDomain string) (string, error) {
	if len(key) < 16 {
		return "", fmt.Errorf("encode VERP address: key is %d octets; use at least 16 octets of secret", len(key))
	}
	if tenantID == "" {
		return "", errors.New("encode VERP address: empty tenant id")
	}
	domain, reason := normalizeDomain(bounceDomain)
	if reason != "" {
		return "", fmt.Errorf("encode VERP address: bounce domain: %w", &AddressError{Input: bounceDomain, Reason: reason})
	}
	if deliveryID == "" {
		return "", errors.New("encode VERP address: empty delivery id")
	}
	hash := recipientHash(recipient)
	var form, idPart string
	var idBytes []byte
	if isPlainVERPID(deliveryID) {
		form, idPart, idBytes = verpPlain, deliveryID, []byte(deliveryID)
	} else {
		payload := make([]byte, 0, 1+MaxVERPRawIDLen)
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
		case len(deliveryID) > MaxVERPRawIDLen:
			return "", fmt.Errorf("encode VERP address: delivery id %q does not fit in a 64-octet local part: use lowercase letters, digits and dots (at most %d octets), a ULID, a UUID, or at most %d octets",
				clip(deliveryID), MaxVERPIDLen, MaxVERPRawIDLen)
		default:
			payload = append(append(payload, verpTagRaw), deliveryID...)
		}
		form, idPart, idBytes = verpEncoded, verpEncoding.EncodeToString(payload), payload
	}
	tail := make([]byte, 0, verpHashLen+verpMACLen)
	tail = append(tail, hash[:]...)
	tail = append(tail, verpMAC(key, tenantID, form, idBytes, hash[:])...)
	return form + idPart + "-" + verpEncoding.EncodeToString(tail) + "@" + domain, nil
}

// isPlainVERPID reports an id that can stand in the local part as it is:
// lowercase letters, digits and single inner dots, short enough.
func isPlainVERPID(id string) bool {
	if len(id) > MaxVERPIDLen || id[0] == '.' || id[len(id)-1] == '.' || strings.Contains(id, "..") {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.') {
			return false
		}
	}
	return true
}

// VERPDecode checks a VERP address made by VERPEncode with key for
// tenantID and returns the delivery id and the recipient hash (as
// RecipientHash gives it). The address may be in any case, with or without
// angle brackets; its domain is not checked (see the notes above
// VERPEncode). The MAC comparison takes constant time. Errors: ErrNotVERP
// for other addresses, ErrVERPForged for a bad MAC, which includes an
// address made for another tenant; to rotate keys, try the new key and
// then the old one while mail signed with it may still bounce.
func VERPDecode(key []byte, tenantID, address string) (deliveryID, recipientHash string, err error) {
	a := strings.ToLower(strings.TrimSpace(address))
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		a = a[:at]
	}
	var form string
	switch {
	case strings.HasPrefix(a, verpEncoded):
		form = verpEncoded
	case strings.HasPrefix(a, verpPlain):
		form = verpPlain
	default:
		return "", "", ErrNotVERP
	}
	rest := a[len(form):]
	dash := strings.LastIndexByte(rest, '-')
	if dash <= 0 {
		return "", "", ErrNotVERP
	}
	idPart := rest[:dash]
	tail, err := verpEncoding.DecodeString(rest[dash+1:])
	if err != nil || len(tail) != verpHashLen+verpMACLen {
		return "", "", ErrNotVERP
	}
	var idBytes []byte
	if form == verpPlain {
		if !isPlainVERPID(idPart) {
			return "", "", ErrNotVERP
		}
		idBytes = []byte(idPart)
	} else {
		idBytes, err = verpEncoding.DecodeString(idPart)
		if err != nil || len(idBytes) < 2 {
			return "", "", ErrNotVERP
		}
	}
	hash, mac := tail[:verpHashLen], tail[verpHashLen:]
	if len(key) == 0 || tenantID == "" || !hmac.Equal(mac, verpMAC(key, tenantID, form, idBytes, hash)) {
		return "", "", ErrVERPForged
	}
	hashHex := hex.EncodeToString(hash)
	if form == verpPlain {
		return idPart, hashHex, nil
	}
	id := idBytes[1:]
	switch idBytes[0] {
	case verpTagULID, verpTagULIDLower:
		var u ulid.ULID
		if len(id) != len(u) {
			return "", "", ErrNotVERP
		}
		copy(u[:], id)
		if idBytes[0] == verpTagULIDLower {
			return strings.ToLower(u.String()), hashHex, nil
		}
		return u.String(), hashHex, nil
	case verpTagUUID, verpTagUUIDUpper:
		u, err := uuid.FromBytes(id)
		if err != nil {
			return "", "", ErrNotVERP
		}
		if idBytes[0] == verpTagUUIDUpper {
			return strings.ToUpper(u.String()), hashHex, nil
		}
		return u.String(), hashHex, nil
	case verpTagRaw:
		return string(id), hashHex, nil
	}
	return "", "", ErrNotVERP
}

func verpMAC(key []byte, tenantID, form string, id, hash []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("mailbus verp v2\x00"))
	// Length-prefixed, so that no tenant id can run into the form.
	m.Write(binary.AppendUvarint(nil, uint64(len(tenantID))))
	m.Write([]byte(tenantID))
	m.Write([]byte(form))
	m.Write([]byte{0})
	m.Write(id)
	m.Write(hash)
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
