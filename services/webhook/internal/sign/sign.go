// Package sign signs webhooks as the Standard Webhooks specification
// (standardwebhooks.com) says, so that receivers can verify them with any
// of its libraries:
//
//	webhook-id:        an id that is the same for every attempt of one event
//	webhook-timestamp: Unix seconds of this attempt
//	webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">
//
// A secret is "whsec_" followed by the base64 of the key bytes. During a
// secret rotation a webhook carries one signature per secret, separated by
// spaces, as the specification allows; a receiver that knows either secret
// accepts it.
package sign

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Headers of a signed webhook.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// SecretPrefix starts every secret.
const SecretPrefix = "whsec_"

// secretBytes is the key length: 24 bytes (192 bits), within the 24 to 64
// the specification recommends, and what its reference libraries generate.
const secretBytes = 24

// NewSecret returns a fresh random secret, whsec_<base64>.
func NewSecret() (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate webhook secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// Key decodes a whsec_ secret to its key bytes.
func Key(secret string) ([]byte, error) {
	enc, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, errors.New("webhook secret does not start with whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("webhook secret is not base64 after whsec_: %w", err)
	}
	if len(key) == 0 {
		return nil, errors.New("webhook secret is empty")
	}
	return key, nil
}

// Signature returns "v1,<base64>" for one key.
func Signature(key []byte, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(strconv.FormatInt(ts.Unix(), 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Headers returns the three headers of a webhook signed with every key
// (the current one first).
func Headers(keys [][]byte, id string, ts time.Time, body []byte) map[string]string {
	sigs := make([]string, len(keys))
	for i, k := range keys {
		sigs[i] = Signature(k, id, ts, body)
	}
	return map[string]string{
		HeaderID:        id,
		HeaderTimestamp: strconv.FormatInt(ts.Unix(), 10),
		HeaderSignature: strings.Join(sigs, " "),
	}
}
