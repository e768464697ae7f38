package smtpclient

import (
	"fmt"

	"github.com/mailbus/mailbus/pkg/configclient"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// FromConfig turns a configured relay and its opened secrets into what the
// client dials, with helo as its EHLO name. The sender uses it for every
// delivery and the config service for relay tests, so that a test dials
// exactly what a send would.
func FromConfig(rs *configclient.RelayWithSecrets, helo string) (Relay, error) {
	r := rs.Relay
	out := Relay{
		Host: r.GetHost(), Port: int(r.GetPort()), SkipVerify: r.GetSkipCertVerify(),
		AllowPlaintextAuth: r.GetAllowPlaintextAuth(), HeloName: helo,
		MaxConns: int(r.GetMaxConnections()),
	}
	switch r.GetSecurity() {
	case mailbusv1.RelaySecurity_RELAY_SECURITY_NONE:
		out.Security = SecurityNone
	case mailbusv1.RelaySecurity_RELAY_SECURITY_STARTTLS:
		out.Security = SecurityStartTLS
	case mailbusv1.RelaySecurity_RELAY_SECURITY_TLS:
		out.Security = SecurityTLS
	default:
		return out, fmt.Errorf("relay %s has unknown security %v", r.GetId(), r.GetSecurity())
	}
	a := r.GetAuth()
	out.Auth.Username = a.GetUsername()
	switch a.GetMechanism() {
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_UNSPECIFIED, mailbusv1.AuthMechanism_AUTH_MECHANISM_NONE:
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_PLAIN:
		out.Auth.Mechanism, out.Auth.Password = MechanismPlain, rs.Password
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_LOGIN:
		out.Auth.Mechanism, out.Auth.Password = MechanismLogin, rs.Password
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_CRAM_MD5:
		out.Auth.Mechanism, out.Auth.Password = MechanismCRAMMD5, rs.Password
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_XOAUTH2:
		out.Auth.Mechanism, out.Auth.Token = MechanismXOAUTH2, rs.OAuthToken
	case mailbusv1.AuthMechanism_AUTH_MECHANISM_CLIENT_CERT:
		// The certificate is presented in the TLS handshake; no AUTH.
	default:
		return out, fmt.Errorf("relay %s has unknown auth mechanism %v", r.GetId(), a.GetMechanism())
	}
	if rs.ClientCert != nil {
		out.Auth.ClientCert = *rs.ClientCert
	}
	return out, nil
}
