package obs

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestNewLogger_writesJSONByDefault(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, LogConfig{}).Info("hello", "tenant", "acme")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %q: %v", buf.String(), err)
	}
	if rec["tenant"] != "acme" || rec["msg"] != "hello" {
		t.Fatalf("unexpected record %v", rec)
	}
}

func TestChildTraceparent_keepsTraceID(t *testing.T) {
	p := NewTraceparent()
	c := ChildTraceparent(p)
	if TraceID(c) != TraceID(p) || c == p {
		t.Fatalf("child %q of %q should keep the trace id and change the span", c, p)
	}
	if TraceID(ChildTraceparent("garbage")) == "" {
		t.Fatal("an invalid parent should start a new trace")
	}
}

func TestAdminHandler_readyzFollowsHealth(t *testing.T) {
	var h Health
	srv := httptest.NewServer(AdminHandler(NewRegistry(), &h))
	defer srv.Close()
	get := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Fatalf("readyz before ready = %d", got)
	}
	h.SetReady(true)
	if got := get("/readyz"); got != http.StatusOK {
		t.Fatalf("readyz after ready = %d", got)
	}
	if got := get("/metrics"); got != http.StatusOK {
		t.Fatalf("metrics = %d", got)
	}
}
