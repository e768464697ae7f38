package configclient_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/configclient"
	pb "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// The client is exercised end to end against the real config service in
// services/config (watch_test.go); here only what needs no server.

func TestRelayWithSecrets_neverPrintsItsSecrets(t *testing.T) {
	r := &configclient.RelayWithSecrets{
		Relay:      &pb.Relay{Id: "r1", Host: "smtp.example", Port: 587},
		Password:   "hunter2-password",
		OAuthToken: "ya29.token",
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(format, r)
		if strings.Contains(out, "hunter2") || strings.Contains(out, "ya29") {
			t.Errorf("%s prints a secret: %s", format, out)
		}
	}
	if !strings.Contains(r.String(), "r1") {
		t.Errorf("String = %q", r.String())
	}
}

func TestAAD_bindsSecretsToTheirPlace(t *testing.T) {
	if string(configclient.RelaySecretAAD("r1", configclient.SecretPassword)) == string(configclient.RelaySecretAAD("r2", configclient.SecretPassword)) {
		t.Error("two relays share additional data")
	}
	if string(configclient.DKIMKeyAAD("a.example", "s")) == string(configclient.DKIMKeyAAD("b.example", "s")) {
		t.Error("two domains share additional data")
	}
}
