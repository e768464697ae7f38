package seal_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mailbus/mailbus/pkg/seal"
)

func key(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }

func TestSealer_opensWhatItSealed(t *testing.T) {
	s, err := seal.Parse(key(1))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := s.Seal([]byte("hunter2"), []byte("relay/r1/password"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("sealed value contains the plaintext")
	}
	if id, ok := seal.KeyIDOf(sealed); !ok || id != 1 {
		t.Errorf("KeyIDOf = %d, %v", id, ok)
	}
	plain, err := s.Open(sealed, []byte("relay/r1/password"))
	if err != nil || string(plain) != "hunter2" {
		t.Fatalf("Open = %q, %v", plain, err)
	}
	again, _ := s.Seal([]byte("hunter2"), []byte("relay/r1/password"))
	if bytes.Equal(sealed, again) {
		t.Error("two seals of the same value are equal; nonce reused")
	}
}

func TestSealer_refusesTamperedOrMisboundValues(t *testing.T) {
	s, _ := seal.Parse(key(1))
	other, _ := seal.Parse(key(2))
	sealed, _ := s.Seal([]byte("hunter2"), []byte("relay/r1/password"))
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	keyID := bytes.Clone(sealed)
	keyID[1] = 7

	tests := []struct {
		name   string
		sealer *seal.Sealer
		value  []byte
		aad    string
	}{
		{"other additional data", s, sealed, "relay/r2/password"},
		{"flipped bit", s, flipped, "relay/r1/password"},
		{"unknown key id", s, keyID, "relay/r1/password"},
		{"other key with the same id", other, sealed, "relay/r1/password"},
		{"truncated", s, sealed[:5], "relay/r1/password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.sealer.Open(tt.value, []byte(tt.aad)); !errors.Is(err, seal.ErrOpen) {
				t.Errorf("Open = %v, want ErrOpen", err)
			}
		})
	}
}

func TestParse_rotatedKeysOpenOldValuesAndSealWithTheFirst(t *testing.T) {
	old, _ := seal.Parse("1:" + key(1))
	sealedOld, _ := old.Seal([]byte("a"), nil)

	rotated, err := seal.Parse("2:" + key(2) + ", 1:" + key(1))
	if err != nil {
		t.Fatal(err)
	}
	if rotated.KeyID() != 2 {
		t.Errorf("KeyID = %d, want 2", rotated.KeyID())
	}
	if p, err := rotated.Open(sealedOld, nil); err != nil || string(p) != "a" {
		t.Errorf("rotated Open(old) = %q, %v", p, err)
	}
	sealedNew, _ := rotated.Seal([]byte("b"), nil)
	if id, _ := seal.KeyIDOf(sealedNew); id != 2 {
		t.Errorf("new value sealed with key %d, want 2", id)
	}
}

func TestParse_rejectsBadSpecifications(t *testing.T) {
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	for _, spec := range []string{"", "not base64!", short, "0:" + key(1), "1:" + key(1) + ",1:" + key(2), key(1) + "," + key(2)} {
		if _, err := seal.Parse(spec); err == nil {
			t.Errorf("Parse(%q) succeeded", spec)
		}
	}
}

func TestLoadOrCreateKeyFile_createsOnceWithPrivateMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "secret.key")
	var (
		wg      sync.WaitGroup
		sealers [4]*seal.Sealer
		errs    [4]error
	)
	for i := range sealers {
		wg.Go(func() { sealers[i], errs[i] = seal.LoadOrCreateKeyFile(path) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", info.Mode().Perm())
	}
	sealed, _ := sealers[0].Seal([]byte("x"), nil)
	for i, s := range sealers {
		if _, err := s.Open(sealed, nil); err != nil {
			t.Errorf("sealer %d has another key: %v", i, err)
		}
	}
	reloaded, err := seal.LoadOrCreateKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reloaded.Open(sealed, nil); err != nil {
		t.Errorf("reloaded key differs: %v", err)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := seal.LoadOrCreateKeyFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key file: err = %v", err)
	}
}

func BenchmarkSealer_Seal(b *testing.B) {
	s, _ := seal.Parse(key(1))
	plain := []byte("a relay password of ordinary length")
	for b.Loop() {
		if _, err := s.Seal(plain, []byte("relay/r1/password")); err != nil {
			b.Fatal(err)
		}
	}
}
