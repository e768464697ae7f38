package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestSession_roundTripsAndRefusesTamperedExpiredOrForeignCookies(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	s, err := New(Config{SessionTTL: time.Hour}, Deps{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(Config{}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if err := s.setSession(rec, "mbt_secret-token"); err != nil {
		t.Fatal(err)
	}
	cookie := rec.Result().Cookies()[0]
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || strings.Contains(cookie.Value, "secret") {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, the token sealed", cookie)
	}
	req := func(value string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.AddCookie(&http.Cookie{Name: sessionCookie, Value: value})
		return r
	}
	if ss, ok := s.sessionOf(req(cookie.Value)); !ok || ss.Token != "mbt_secret-token" {
		t.Fatalf("sessionOf = %+v, %v", ss, ok)
	}
	tampered := []byte(cookie.Value)
	tampered[len(tampered)/2] ^= 1
	for name, r := range map[string]*http.Request{
		"tampered": req(string(tampered)),
		"garbage":  req("!!"),
		"missing":  httptest.NewRequest(http.MethodGet, "/", nil),
	} {
		if _, ok := s.sessionOf(r); ok {
			t.Errorf("%s cookie opened a session", name)
		}
	}
	if _, ok := other.sessionOf(req(cookie.Value)); ok {
		t.Error("another console's key opened the session")
	}
	now = now.Add(time.Hour)
	if _, ok := s.sessionOf(req(cookie.Value)); ok {
		t.Error("an expired session still opens")
	}
}

func TestCSRF_isBoundToTheSession(t *testing.T) {
	s, err := New(Config{}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := session{Token: "token-a"}, session{Token: "token-b"}
	form := func(v string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/x", strings.NewReader("_csrf="+v))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return r
	}
	if !s.validCSRF(form(s.csrfToken(a)), a) {
		t.Error("the session's own token is refused")
	}
	if s.validCSRF(form(s.csrfToken(b)), a) || s.validCSRF(form(""), a) {
		t.Error("another session's token, or none, is accepted")
	}
}

func TestSafeNextAndSameOrigin(t *testing.T) {
	for in, want := range map[string]string{"": "/", "/messages?x=1": "/messages?x=1", "//evil.example": "/", "https://evil.example": "/", `/\evil`: "/"} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
	for origin, want := range map[string]bool{"": true, "http://console.test": true, "http://evil.example": false, "null": false} {
		r := httptest.NewRequest(http.MethodPost, "http://console.test/signin", nil)
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if got := sameOrigin(r); got != want {
			t.Errorf("sameOrigin(Origin: %q) = %v, want %v", origin, got, want)
		}
	}
}

func TestCharts_scaleToWholeGridLinesAndEscapeLabels(t *testing.T) {
	for v, want := range map[int]int{0: 4, 3: 4, 5: 8, 9: 20, 21: 40, 41: 80, 150: 200, 901: 2000} {
		if got := niceMax(v); got != want {
			t.Errorf("niceMax(%d) = %d, want %d", v, got, want)
		}
	}
	svg := string(barChart([]bar{{Label: `<script>x</script>`, Value: 3}}, "#000", "none"))
	if strings.Contains(svg, "<script>") {
		t.Fatalf("a label reached the SVG unescaped: %s", svg)
	}
	if csvSafe("=HYPERLINK(1)") != "'=HYPERLINK(1)" || csvSafe("a@b.example") != "a@b.example" {
		t.Error("csvSafe lets a formula through or changes an address")
	}
}

func TestPages_allParseAndRenderWithoutData(t *testing.T) {
	s, err := New(Config{}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"signin", "webhooks", "error"} {
		rec := httptest.NewRecorder()
		v := view{Title: name, CSRF: "x", Data: map[string]string{"Next": "/"}}
		s.renderView(rec, http.StatusOK, name, v)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "mailbus") {
			t.Errorf("%s: %d\n%s", name, rec.Code, rec.Body)
		}
	}
	if len(s.pages.byName) < 10 {
		t.Errorf("parsed %d pages", len(s.pages.byName))
	}
}
