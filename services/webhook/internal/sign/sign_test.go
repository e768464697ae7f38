package sign_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailbus/mailbus/services/webhook/internal/sign"
)

// The example of the Standard Webhooks reference libraries' own tests.
func TestSignature_matchesTheSpecificationsExample(t *testing.T) {
	key, err := sign.Key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := sign.Signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
}

func TestHeaders_signWithEveryKeySpaceSeparated(t *testing.T) {
	a, _ := sign.NewSecret()
	b, _ := sign.NewSecret()
	ka, _ := sign.Key(a)
	kb, _ := sign.Key(b)
	ts := time.Unix(1700000000, 0)
	h := sign.Headers([][]byte{ka, kb}, "evt_1", ts, []byte("{}"))
	want := sign.Signature(ka, "evt_1", ts, []byte("{}")) + " " + sign.Signature(kb, "evt_1", ts, []byte("{}"))
	if h[sign.HeaderSignature] != want || h[sign.HeaderID] != "evt_1" || h[sign.HeaderTimestamp] != "1700000000" {
		t.Fatalf("headers = %v", h)
	}
}

func TestKey_rejectsWhatIsNotASecret(t *testing.T) {
	for _, s := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!"} {
		if _, err := sign.Key(s); err == nil {
			t.Errorf("Key(%q) = nil error", s)
		}
	}
	s, err := sign.NewSecret()
	if err != nil || !strings.HasPrefix(s, sign.SecretPrefix) {
		t.Fatalf("NewSecret = %q, %v", s, err)
	}
	if k, err := sign.Key(s); err != nil || len(k) != 24 {
		t.Fatalf("Key(NewSecret()) = %d bytes, %v", len(k), err)
	}
}
