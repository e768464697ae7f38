package smtpclient

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// go-sasl's clients cover PLAIN (used as is) and LOGIN; CRAM-MD5 and
// XOAUTH2 are not in go-sasl, and its LOGIN client sends the user name as an
// initial response and insists on the exact challenge "Password:", which
// not every relay sends. The three clients here are the few lines each
// mechanism needs.

// loginClient is LOGIN without an initial response, answering the
// "Username:" and "Password:" prompts in whatever case the server writes
// them.
type loginClient struct{ username, password string }

func (c *loginClient) Start() (string, []byte, error) { return string(MechanismLogin), nil, nil }

func (c *loginClient) Next(challenge []byte) ([]byte, error) {
	prompt := strings.ToLower(string(challenge))
	switch {
	case strings.Contains(prompt, "user"):
		return []byte(c.username), nil
	case strings.Contains(prompt, "pass"):
		return []byte(c.password), nil
	}
	return nil, fmt.Errorf("LOGIN: unexpected server prompt %q", challenge)
}

// cramMD5Client answers the challenge with the user name and the HMAC-MD5
// of the challenge keyed with the password (RFC 2195).
type cramMD5Client struct{ username, password string }

func (c *cramMD5Client) Start() (string, []byte, error) { return string(MechanismCRAMMD5), nil, nil }

func (c *cramMD5Client) Next(challenge []byte) ([]byte, error) {
	mac := hmac.New(md5.New, []byte(c.password))
	mac.Write(challenge)
	return []byte(c.username + " " + hex.EncodeToString(mac.Sum(nil))), nil
}

// xoauth2Client sends "user=U^Aauth=Bearer T^A^A" as the initial response.
// When the server rejects the token it sends a 334 with a JSON error; the
// client answers with an empty line and the server then says 535, which is
// the error Auth returns (and on which the session refreshes the token).
type xoauth2Client struct {
	username, token string
	// serverError holds the JSON the server sent with its 334, for the
	// error message.
	serverError string
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return string(MechanismXOAUTH2), []byte("user=" + c.username + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	c.serverError = string(challenge)
	return []byte{}, nil
}

var errNoMechanism = errors.New("no SASL mechanism configured")

func saslClient(a Auth, token string) (sasl.Client, error) {
	switch a.Mechanism {
	case MechanismPlain:
		return sasl.NewPlainClient("", a.Username, a.Password), nil
	case MechanismLogin:
		return &loginClient{a.Username, a.Password}, nil
	case MechanismCRAMMD5:
		return &cramMD5Client{a.Username, a.Password}, nil
	case MechanismXOAUTH2:
		return &xoauth2Client{username: a.Username, token: token}, nil
	case MechanismNone:
		return nil, errNoMechanism
	}
	return nil, fmt.Errorf("unsupported SASL mechanism %q", a.Mechanism)
}
