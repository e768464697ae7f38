package console

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

const (
	tenantCookie = "mailbus_tenant"
	flashCookie  = "mailbus_flash"
	// callTimeout bounds the gRPC calls of one page; a relay test gets
	// the config service's own bound instead.
	callTimeout = 30 * time.Second
)

// pages are the parsed templates, one set per page, each with the layout.
type pages struct {
	byName map[string]*template.Template
}

func loadPages() (*pages, error) {
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, err
		}
		p.byName[base] = t
	}
	return p, nil
}

// view is what every page template gets; Data is the page's own.
type view struct {
	Title   string
	Nav     string
	CSRF    string
	Tenants []*mailbusv1.Tenant
	Tenant  *mailbusv1.Tenant
	Flash   string
	FlashOK bool
	Error   *apiError
	Data    any
}

// apiError is a refused or failed call as a person should read it: the
// service's own message and, for invalid input, each field's violation
// exactly as the API reports it.
type apiError struct {
	Code    string
	Message string
	Fields  []fieldError
}

type fieldError struct{ Field, Description string }

func toAPIError(err error) *apiError {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return &apiError{Code: "error", Message: err.Error()}
	}
	e := &apiError{Code: codeText(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Fields = append(e.Fields, fieldError{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				e.Fields = append(e.Fields, fieldError{Field: v.GetSubject(), Description: v.GetDescription()})
			}
		}
	}
	return e
}

// FieldError returns the violation of one field ("relay.port"), for the
// form to show next to it.
func (e *apiError) FieldError(field string) string {
	if e == nil {
		return ""
	}
	for _, f := range e.Fields {
		if f.Field == field || strings.HasPrefix(f.Field, field+"[") {
			return f.Description
		}
	}
	return ""
}

func codeText(c codes.Code) string {
	switch c {
	case codes.PermissionDenied:
		return "not permitted"
	case codes.Unauthenticated:
		return "not signed in"
	case codes.NotFound:
		return "not found"
	case codes.InvalidArgument:
		return "invalid input"
	case codes.Unimplemented:
		return "not available"
	case codes.Unavailable:
		return "service unavailable"
	case codes.AlreadyExists:
		return "already exists"
	case codes.FailedPrecondition:
		return "not possible now"
	}
	return strings.ToLower(c.String())
}

// req is one signed-in request.
type req struct {
	s   *Service
	w   http.ResponseWriter
	r   *http.Request
	ss  session
	ctx context.Context
}

// call returns a context for gRPC calls made as the signed-in person.
func (q *req) call() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(q.r.Context(), callTimeout)
	return outgoing(ctx, q.ss), cancel
}

// Handler returns the console's HTTP handler.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /signin", s.signInPage)
	mux.HandleFunc("POST /signin", s.signIn)
	mux.HandleFunc("POST /signout", s.signOut)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })

	mux.Handle("GET /{$}", s.authed((*req).overview))
	mux.Handle("GET /messages", s.authed((*req).messages))
	mux.Handle("POST /messages/bulk", s.authed((*req).messagesBulk))
	mux.Handle("GET /messages/{id}", s.authed((*req).message))
	mux.Handle("POST /messages/{id}/{action}", s.authed((*req).messageAction))
	mux.Handle("GET /relays", s.authed((*req).relays))
	mux.Handle("GET /relays/new", s.authed((*req).relayForm))
	mux.Handle("POST /relays/new", s.authed((*req).relaySave))
	mux.Handle("POST /relays/new/test", s.authed((*req).relayTestInline))
	mux.Handle("GET /relays/{id}", s.authed((*req).relayForm))
	mux.Handle("POST /relays/{id}", s.authed((*req).relaySave))
	mux.Handle("POST /relays/{id}/test", s.authed((*req).relayTest))
	mux.Handle("GET /domains", s.authed((*req).domains))
	mux.Handle("GET /suppressions", s.authed((*req).suppressions))
	mux.Handle("GET /suppressions.csv", s.authed((*req).suppressionsCSV))
	mux.Handle("POST /suppressions/add", s.authed((*req).suppressionAdd))
	mux.Handle("POST /suppressions/remove", s.authed((*req).suppressionRemove))
	mux.Handle("GET /webhooks", s.authed((*req).webhooks))
	mux.Handle("POST /webhooks/replay", s.authed((*req).webhooksReplay))
	return securityHeaders(mux)
}

// securityHeaders forbid framing, scripts and anything from elsewhere: the
// console has no JavaScript and needs nothing but itself.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// authed sends people who are not signed in to the sign-in page and checks
// the CSRF token of every POST.
func (s *Service) authed(h func(*req) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss, ok := s.sessionOf(r)
		if !ok {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "not signed in", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost && (!sameOrigin(r) || !s.validCSRF(r, ss)) {
			http.Error(w, "the form is stale or came from another site; reload the page and try again", http.StatusForbidden)
			return
		}
		q := &req{s: s, w: w, r: r, ss: ss, ctx: r.Context()}
		if err := h(q); err != nil {
			if status.Code(err) == codes.Unauthenticated {
				// The token was revoked or the services do not know it.
				s.clearSession(w)
				s.setFlash(w, "Your token is no longer accepted: "+status.Convert(err).Message(), false)
				http.Redirect(w, r, "/signin", http.StatusSeeOther)
				return
			}
			s.log.WarnContext(r.Context(), "console page failed", "path", r.URL.Path, "err", err)
			q.render(http.StatusBadGateway, "error", "Error", "", nil, err)
		}
	})
}

// tenants lists the tenants the person may see and picks the current one:
// ?tenant=, else the remembered choice, else the first.
func (q *req) tenants() ([]*mailbusv1.Tenant, *mailbusv1.Tenant, error) {
	ctx, cancel := q.call()
	defer cancel()
	var all []*mailbusv1.Tenant
	token := ""
	for {
		resp, err := q.s.api.Config.ListTenants(ctx, &mailbusv1.ListTenantsRequest{PageSize: 200, PageToken: token})
		if err != nil {
			return nil, nil, err
		}
		all = append(all, resp.GetTenants()...)
		if token = resp.GetNextPageToken(); token == "" || len(all) >= 1000 {
			break
		}
	}
	want := q.r.URL.Query().Get("tenant")
	if want == "" {
		want = q.r.PostFormValue("tenant")
	}
	if want != "" {
		http.SetCookie(q.w, &http.Cookie{Name: tenantCookie, Value: url.QueryEscape(want), Path: "/", HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Secure: q.s.cfg.SecureCookies})
	} else if c, err := q.r.Cookie(tenantCookie); err == nil {
		want, _ = url.QueryUnescape(c.Value)
	}
	for _, t := range all {
		if t.GetId() == want {
			return all, t, nil
		}
	}
	if len(all) > 0 {
		return all, all[0], nil
	}
	return all, nil, nil
}

func (q *req) render(code int, page, title, nav string, data any, err error) {
	v := view{Title: title, Nav: nav, CSRF: q.s.csrfToken(q.ss), Data: data, Error: toAPIError(err)}
	if ts, cur, terr := q.tenants(); terr == nil {
		v.Tenants, v.Tenant = ts, cur
	}
	v.Flash, v.FlashOK = q.s.takeFlash(q.w, q.r)
	q.s.renderView(q.w, code, page, v)
}

func (s *Service) renderView(w http.ResponseWriter, code int, page string, v view) {
	t := s.pages.byName[page]
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		s.log.Error("render console page", "page", page, "err", err)
		http.Error(w, "the page could not be drawn: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// setFlash leaves a one-line notice for the next page (Post/Redirect/Get).
func (s *Service) setFlash(w http.ResponseWriter, msg string, ok bool) {
	prefix := "e:"
	if ok {
		prefix = "o:"
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: base64.RawURLEncoding.EncodeToString([]byte(prefix + msg)),
		Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.cfg.SecureCookies, MaxAge: 60})
}

func (s *Service) takeFlash(w http.ResponseWriter, r *http.Request) (string, bool) {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return "", false
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || len(b) < 2 {
		return "", false
	}
	return string(b[2:]), string(b[:2]) == "o:"
}

// redirect finishes a POST: the notice, then the page to show.
func (q *req) redirect(to, msg string, ok bool) error {
	if msg != "" {
		q.s.setFlash(q.w, msg, ok)
	}
	http.Redirect(q.w, q.r, to, http.StatusSeeOther)
	return nil
}

func (s *Service) signInPage(w http.ResponseWriter, r *http.Request) {
	v := view{Title: "Sign in"}
	v.Flash, v.FlashOK = s.takeFlash(w, r)
	v.Data = map[string]string{"Next": safeNext(r.URL.Query().Get("next"))}
	s.renderView(w, http.StatusOK, "signin", v)
}

// signIn checks the pasted token with a call that every role that may use
// the console can make (listing the tenants it may see) and keeps it.
func (s *Service) signIn(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "the form came from another site", http.StatusForbidden)
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	fail := func(msg string) {
		s.renderView(w, http.StatusUnauthorized, "signin", view{Title: "Sign in", Flash: msg, Data: map[string]string{"Next": next}})
	}
	if token == "" {
		fail("Paste an API token to sign in.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	_, err := s.api.Config.ListTenants(outgoing(ctx, session{Token: token}), &mailbusv1.ListTenantsRequest{PageSize: 1})
	if err != nil && status.Code(err) != codes.PermissionDenied {
		msg := "The services did not accept this token: " + status.Convert(err).Message()
		if status.Code(err) != codes.Unauthenticated {
			msg = "Could not check the token: " + status.Convert(err).Message()
		}
		fail(msg)
		return
	}
	if err := s.setSession(w, token); err != nil {
		http.Error(w, "could not start a session", http.StatusInternalServerError)
		return
	}
	s.log.InfoContext(r.Context(), "signed in to the console", "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Service) signOut(w http.ResponseWriter, r *http.Request) {
	if ss, ok := s.sessionOf(r); ok && (!sameOrigin(r) || !s.validCSRF(r, ss)) {
		http.Error(w, "the form is stale or came from another site", http.StatusForbidden)
		return
	}
	s.clearSession(w)
	s.setFlash(w, "Signed out.", true)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// safeNext keeps a redirect target on this site.
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

var errNoTenant = errors.New("no tenant: this token may not see any tenant")
