// Package seal encrypts secrets at rest (relay passwords, OAuth tokens, TLS
// client keys, DKIM private keys) with AES-256-GCM.
//
// A sealed value is
//
//	version(1) = 0x01 | key id(1) | nonce(12) | ciphertext+tag
//
// The key id names the key that sealed the value, so keys can rotate: a
// Sealer holds one current key, which seals, and any number of older keys,
// which still open what they sealed. Callers bind a sealed value to where it
// is stored with additional data (for example "relay/<id>/password"), so that
// a sealed value copied into another row does not open.
//
// Keys come from the environment variable MAILBUS_SECRET_KEY (see Parse) in
// production and from a key file in the data directory in `mailbus dev`
// (see LoadOrCreateKeyFile).
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// EnvKey is the environment variable that holds the key specification.
const EnvKey = "MAILBUS_SECRET_KEY"

// KeySize is the size of an AES-256 key in bytes.
const KeySize = 32

const (
	formatVersion = 0x01
	nonceSize     = 12
	headerSize    = 2 + nonceSize
)

// ErrOpen is returned when a sealed value cannot be opened: it is corrupt,
// was sealed with an unknown key, or was bound to other additional data.
var ErrOpen = errors.New("seal: cannot open sealed value")

// Sealer seals and opens secrets. It is safe for concurrent use.
type Sealer struct {
	current byte
	aeads   map[byte]cipher.AEAD
}

// New builds a Sealer from keys by id. current names the key that seals;
// the others only open. Every key must be KeySize bytes.
func New(keys map[byte][]byte, current byte) (*Sealer, error) {
	if _, ok := keys[current]; !ok {
		return nil, fmt.Errorf("seal: current key id %d is not among the keys", current)
	}
	s := &Sealer{current: current, aeads: make(map[byte]cipher.AEAD, len(keys))}
	for id, key := range keys {
		if len(key) != KeySize {
			return nil, fmt.Errorf("seal: key %d is %d bytes, want %d", id, len(key), KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("seal: key %d: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("seal: key %d: %w", id, err)
		}
		s.aeads[id] = aead
	}
	return s, nil
}

// Parse builds a Sealer from a key specification, the value of
// MAILBUS_SECRET_KEY:
//
//	<base64 key>                        one key, id 1
//	<id>:<base64 key>[,<id>:<base64 key>...]   several keys; the first seals
//
// Keys are 32 bytes, standard or URL base64 with or without padding. To
// rotate, put the new key first with a new id (1-255) and keep the old ones
// until everything sealed with them has been re-sealed.
func Parse(spec string) (*Sealer, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("seal: no key given; set %s to a base64 32-byte key (for example: openssl rand -base64 32)", EnvKey)
	}
	keys := map[byte][]byte{}
	var current byte
	for i, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		idText, keyText, hasID := strings.Cut(part, ":")
		id := 1
		if hasID {
			n, err := strconv.Atoi(idText)
			if err != nil || n < 1 || n > 255 {
				return nil, fmt.Errorf("seal: key id %q in entry %d must be a number 1-255", idText, i+1)
			}
			id = n
		} else {
			keyText = idText
			if strings.Contains(spec, ",") {
				return nil, fmt.Errorf("seal: entry %d has no key id; with several keys every entry is <id>:<base64 key>", i+1)
			}
		}
		key, err := decodeKey(keyText)
		if err != nil {
			return nil, fmt.Errorf("seal: entry %d: %w", i+1, err)
		}
		if _, dup := keys[byte(id)]; dup {
			return nil, fmt.Errorf("seal: key id %d is given twice", id)
		}
		keys[byte(id)] = key
		if i == 0 {
			current = byte(id)
		}
	}
	return New(keys, current)
}

func decodeKey(text string) ([]byte, error) {
	text = strings.TrimSpace(text)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(text); err == nil {
			if len(key) != KeySize {
				return nil, fmt.Errorf("key is %d bytes, want %d", len(key), KeySize)
			}
			return key, nil
		}
	}
	return nil, errors.New("key is not valid base64")
}

// GenerateKey returns a new random key.
func GenerateKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("seal: generating key: %w", err)
	}
	return key, nil
}

// KeyID returns the id of the key that seals.
func (s *Sealer) KeyID() byte { return s.current }

// KeyIDs returns the ids of all keys, in ascending order.
func (s *Sealer) KeyIDs() []byte {
	ids := make([]byte, 0, len(s.aeads))
	for id := range s.aeads {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// Seal encrypts plaintext with the current key, bound to aad.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	aead := s.aeads[s.current]
	out := make([]byte, headerSize, headerSize+len(plaintext)+aead.Overhead())
	out[0] = formatVersion
	out[1] = s.current
	// Random 96-bit nonces are safe for far more than the 2^32 seals per key
	// that a config store will ever do.
	if _, err := rand.Read(out[2:headerSize]); err != nil {
		return nil, fmt.Errorf("seal: reading nonce: %w", err)
	}
	return aead.Seal(out, out[2:headerSize], plaintext, header(aad, out[:2])), nil
}

// Open decrypts a value sealed by Seal with the same aad. Errors wrap ErrOpen.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < headerSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrOpen, len(sealed))
	}
	if sealed[0] != formatVersion {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrOpen, sealed[0])
	}
	aead, ok := s.aeads[sealed[1]]
	if !ok {
		return nil, fmt.Errorf("%w: sealed with key id %d, which is not configured (have %v)", ErrOpen, sealed[1], s.KeyIDs())
	}
	plain, err := aead.Open(nil, sealed[2:headerSize], sealed[headerSize:], header(aad, sealed[:2]))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed (wrong key or additional data)", ErrOpen)
	}
	return plain, nil
}

// header makes the GCM additional data: the caller's aad plus the version
// and key id bytes, so that they cannot be altered either.
func header(aad, versionAndKey []byte) []byte {
	out := make([]byte, 0, len(versionAndKey)+len(aad))
	out = append(out, versionAndKey...)
	return append(out, aad...)
}

// KeyIDOf returns the id of the key that sealed a value, for re-sealing
// after a rotation.
func KeyIDOf(sealed []byte) (byte, bool) {
	if len(sealed) < headerSize || sealed[0] != formatVersion {
		return 0, false
	}
	return sealed[1], true
}

// LoadOrCreateKeyFile returns a Sealer with the key specification stored in
// the file at path (same format as Parse), creating the file with a new
// random key (mode 0600, parent directory 0700) when it does not exist. It
// refuses a key file that group or others can read.
//
// It is meant for `mailbus dev` and single-host installations; production
// deployments give the key in MAILBUS_SECRET_KEY from their secret store.
func LoadOrCreateKeyFile(path string) (*Sealer, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		info, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("seal: checking key file: %w", err)
		}
		if info.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("seal: key file %s has mode %v; it must not be readable by group or others (chmod 600 %s)", path, info.Mode().Perm(), path)
		}
		s, err := Parse(string(data))
		if err != nil {
			return nil, fmt.Errorf("seal: reading key file %s: %w", path, err)
		}
		return s, nil
	case errors.Is(err, fs.ErrNotExist):
		// Create below.
	default:
		return nil, fmt.Errorf("seal: reading key file: %w", err)
	}

	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("seal: creating key file directory: %w", err)
	}
	// Write a temporary file and hard-link it into place: the link fails if
	// the key file exists, so when two processes race to create the key one
	// wins and the other reads the winner's complete file.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".key-*")
	if err != nil {
		return nil, fmt.Errorf("seal: creating key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("seal: writing key file: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKeyFile(path)
	} else if err != nil {
		return nil, fmt.Errorf("seal: creating key file: %w", err)
	}
	return New(map[byte][]byte{1: key}, 1)
}
