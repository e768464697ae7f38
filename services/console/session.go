package console

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/mailbus/mailbus/pkg/auth"
)

const (
	sessionCookie = "mailbus_session"
	// sessionAAD binds sealed cookies to their purpose, so that nothing
	// else sealed with the same key opens as a session.
	sessionAAD = "mailbus-console-session/v1"
	csrfField  = "_csrf"
)

// session is what the cookie holds, sealed: the person's API token and
// when the sign-in ends. The browser can neither read it (HttpOnly, and
// sealed anyway) nor send it from another site (SameSite=Strict).
type session struct {
	Token   string `json:"t"`
	Expires int64  `json:"e"`
}

func deriveKey(key []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func (s *Service) setSession(w http.ResponseWriter, token string) error {
	b, _ := json.Marshal(session{Token: token, Expires: s.now().Add(s.cfg.SessionTTL).Unix()})
	sealed, err := s.sealer.Seal(b, []byte(sessionAAD))
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: base64.RawURLEncoding.EncodeToString(sealed), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.cfg.SecureCookies,
		MaxAge: int(s.cfg.SessionTTL / time.Second),
	})
	return nil
}

func (s *Service) clearSession(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: s.cfg.SecureCookies, MaxAge: -1,
	})
}

// sessionOf returns the signed-in person's session, or false.
func (s *Service) sessionOf(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return session{}, false
	}
	b, err := s.sealer.Open(raw, []byte(sessionAAD))
	if err != nil {
		return session{}, false
	}
	var ss session
	if json.Unmarshal(b, &ss) != nil || ss.Token == "" || s.now().Unix() >= ss.Expires {
		return session{}, false
	}
	return ss, true
}

// csrfToken is bound to the session's token: a form from one sign-in is
// useless in another, and a page of another site cannot compute it.
func (s *Service) csrfToken(ss session) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(ss.Token))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Service) validCSRF(r *http.Request, ss session) bool {
	got := r.PostFormValue(csrfField)
	return got != "" && hmac.Equal([]byte(got), []byte(s.csrfToken(ss)))
}

// sameOrigin refuses a POST whose Origin header names another site;
// browsers send it on every POST, so this is a second line behind the CSRF
// token and the SameSite cookie (and the only one for the sign-in form).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return o == ""
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// outgoing returns ctx carrying the person's token for the gRPC call, as
// auth.StaticToken would send it.
func outgoing(ctx context.Context, ss session) context.Context {
	return metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer "+ss.Token)
}
