package testkit

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// go-sasl has server sides for PLAIN, OAUTHBEARER, ANONYMOUS and EXTERNAL
// only; the mechanisms that relays in the field still offer (LOGIN,
// CRAM-MD5, Google's and Microsoft's XOAUTH2) are written here so that the
// client's implementations meet a real counterpart.

// errSMTPAuthFailed is what the server says for any failed mechanism, the
// words Postfix and most providers use.
var errSMTPAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication failed"}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): it asks "Username:" then "Password:",
// taking the user name as an initial response when the client sends one.
type loginServer struct {
	step     int
	username string
	check    func(username, password string) error
}

func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		if response == nil {
			s.step = 1
			return []byte("Username:"), false, nil
		}
		s.username = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 1:
		s.username = string(response)
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		return nil, true, s.check(s.username, string(response))
	default:
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
}

// cramMD5Server is the server side of CRAM-MD5 (RFC 2195): a unique
// challenge, answered with the user name and the hex HMAC-MD5 of the
// challenge keyed with the password.
type cramMD5Server struct {
	challenge []byte
	password  func(username string) (string, bool)
	onSuccess func(username string)
}

var cramMD5Counter atomic.Uint64

func (s *cramMD5Server) Next(response []byte) ([]byte, bool, error) {
	if s.challenge == nil {
		if len(response) > 0 {
			// CRAM-MD5 has no initial response.
			return nil, true, sasl.ErrUnexpectedClientResponse
		}
		s.challenge = fmt.Appendf(nil, "<%d.%d@testkit.local>", cramMD5Counter.Add(1), time.Now().UnixNano())
		return s.challenge, false, nil
	}
	user, digest, ok := bytes.Cut(response, []byte(" "))
	if !ok {
		return nil, true, errSMTPAuthFailed
	}
	password, known := s.password(string(user))
	if !known {
		return nil, true, errSMTPAuthFailed
	}
	mac := hmac.New(md5.New, []byte(password))
	mac.Write(s.challenge)
	want := hex.EncodeToString(mac.Sum(nil))
	if subtle.ConstantTimeCompare([]byte(want), bytes.ToLower(digest)) != 1 {
		return nil, true, errSMTPAuthFailed
	}
	s.onSuccess(string(user))
	return nil, true, nil
}

// xoauth2Server is the server side of XOAUTH2 as Gmail and Microsoft 365
// speak it: the client sends "user=U^Aauth=Bearer T^A^A"; a bad token gets
// a 334 with a JSON error, the client answers with an empty line, and only
// then does the server say 535.
type xoauth2Server struct {
	failed bool
	check  func(username, token string) error
}

// xoauth2Failure is the JSON challenge Gmail sends for a rejected token.
const xoauth2Failure = `{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}`

func (s *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if s.failed {
		return nil, true, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Username and Password not accepted"}
	}
	if response == nil {
		return []byte{}, false, nil
	}
	user, token, err := parseXOAUTH2(response)
	if err == nil {
		err = s.check(user, token)
	}
	if err != nil {
		s.failed = true
		return []byte(xoauth2Failure), false, nil
	}
	return nil, true, nil
}

func parseXOAUTH2(resp []byte) (user, token string, err error) {
	for _, field := range strings.Split(string(resp), "\x01") {
		switch {
		case strings.HasPrefix(field, "user="):
			user = strings.TrimPrefix(field, "user=")
		case strings.HasPrefix(field, "auth="):
			auth := strings.TrimPrefix(field, "auth=")
			scheme, tok, ok := strings.Cut(auth, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", errors.New("xoauth2: auth is not a bearer token")
			}
			token = tok
		}
	}
	if user == "" || token == "" {
		return "", "", errors.New("xoauth2: missing user or token")
	}
	return user, token, nil
}
