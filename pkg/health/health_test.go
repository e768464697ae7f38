package health

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
	"github.com/mailbus/mailbus/pkg/limits"
	"github.com/mailbus/mailbus/pkg/mail"
)

func TestIsThrottle_knowsTheProvidersSlowDownRepliesAndNothingElse(t *testing.T) {
	cases := []struct {
		name  string
		reply mail.SMTPError
		want  bool
	}{
		{"gmail 4.7.28", mail.SMTPError{Code: 421, Enhanced: "4.7.28", Message: "Our system has detected an unusual rate of unsolicited mail originating from your IP address."}, true},
		{"yahoo TSS04", mail.SMTPError{Code: 421, Enhanced: "4.7.0", Message: "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints"}, true},
		{"microsoft 4.7.650", mail.SMTPError{Code: 451, Enhanced: "4.7.650", Message: "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation."}, true},
		{"microsoft S843", mail.SMTPError{Code: 451, Message: "Temporary server error. Please try again later (S843)"}, true},
		{"generic too many connections", mail.SMTPError{Code: 421, Enhanced: "4.7.0", Message: "Too many concurrent SMTP connections from this IP address; please try again later."}, true},
		{"generic rate limit", mail.SMTPError{Code: 450, Message: "4.7.1 Rate limit exceeded"}, true},
		{"greylisting is about one message", mail.SMTPError{Code: 451, Enhanced: "4.7.1", Message: "Greylisted, please try again later"}, false},
		{"mailbox full", mail.SMTPError{Code: 452, Enhanced: "4.2.2", Message: "Mailbox full"}, false},
		{"service not available", mail.SMTPError{Code: 421, Enhanced: "4.3.2", Message: "service not available"}, false},
		{"permanent refusal mentioning rate", mail.SMTPError{Code: 550, Enhanced: "5.7.1", Message: "rate limit policy: rejected"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := IsThrottle(&c.reply); got != c.want {
				t.Errorf("IsThrottle(%d %s %q) = %v, want %v", c.reply.Code, c.reply.Enhanced, c.reply.Message, got, c.want)
			}
		})
	}
}

// clock is a settable clock shared by the replicas of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestThrottled_pausesTheDestinationThenLetsConnectionsBackDoublingEachRampStep(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		ctx := context.Background()
		clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
		a := New(newClient(t, srv.addr), nil, Options{Now: clk.Now})
		b := New(newClient(t, srv.addr), nil, Options{Now: clk.Now}) // another replica
		gmail := DefaultShaping().ForMX("gmail.com", []string{"gmail-smtp-in.l.google.com"})
		gmail.Rule.ThrottlePause, gmail.Rule.RampStep, gmail.Rule.MaxConnections = 10*time.Minute, time.Minute, 20
		reply := &mail.SMTPError{Code: 421, Enhanced: "4.7.28", Message: "unusual rate of unsolicited mail"}

		st, started, err := a.Throttled(ctx, gmail, reply)
		if err != nil || !started {
			t.Fatalf("Throttled: started %v, err %v", started, err)
		}
		// Transactions in flight when the pause began bring more of the
		// same replies: they change nothing.
		clk.Add(time.Minute)
		if st2, started, _ := b.Throttled(ctx, gmail, reply); started || !st2.PausedUntil.Equal(st.PausedUntil) {
			t.Errorf("a throttling reply during the pause moved it to %v (started %v), want it to stay %v", st2.PausedUntil, started, st.PausedUntil)
		}
		steps := []struct {
			at    time.Duration // since the throttling reply
			conns int
		}{{5 * time.Minute, 0}, {10 * time.Minute, 1}, {11 * time.Minute, 2}, {12*time.Minute + 30*time.Second, 4}, {13 * time.Minute, 8}, {14 * time.Minute, 16}, {15 * time.Minute, 20}, {3 * time.Hour, 20}}
		start := st.PausedUntil.Add(-10 * time.Minute)
		for _, s := range steps {
			clk.Add(start.Add(s.at).Sub(clk.Now()))
			got, err := b.State(ctx, gmail, 20)
			if err != nil {
				t.Fatal(err)
			}
			if got.Conns != s.conns {
				t.Errorf("%s after the throttling reply: %d connections allowed, want %d", s.at, got.Conns, s.conns)
			}
			if s.conns == 0 {
				if !got.Paused() || got.Waiting(gmail) != "waiting: gmail.com (google) throttled us: 421 4.7.28 unusual rate of unsolicited mail; paused until 2026-12-01T10:10:00Z" {
					t.Errorf("paused state says %q", got.Waiting(gmail))
				}
			}
		}
	})
}

func TestThrottled_againDuringTheRampDoublesThePauseUpToTheLongest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		ctx := context.Background()
		clk := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
		h := New(newClient(t, srv.addr), nil, Options{Now: clk.Now})
		dest := DefaultShaping().ForMX("yahoo.com", []string{"mta5.am0.yahoodns.net"})
		dest.Rule.ThrottlePause, dest.Rule.MaxThrottlePause, dest.Rule.RampStep = time.Minute, 3*time.Minute, time.Minute
		reply := &mail.SMTPError{Code: 421, Enhanced: "4.7.0", Message: "[TSS04] Messages temporarily deferred"}
		var pauses []time.Duration
		for range 4 {
			now := clk.Now()
			st, started, err := h.Throttled(ctx, dest, reply)
			if err != nil || !started {
				t.Fatalf("Throttled: started %v, err %v", started, err)
			}
			pauses = append(pauses, st.PausedUntil.Sub(now))
			clk.Add(st.PausedUntil.Sub(now) + 30*time.Second) // throttled again early in the ramp
		}
		want := []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute, 3 * time.Minute}
		for i := range want {
			if pauses[i] != want[i] {
				t.Errorf("pauses %v, want %v", pauses, want)
				break
			}
		}
		// Long after the ramp, a new throttling reply starts from the
		// first pause again.
		clk.Add(time.Hour)
		now := clk.Now()
		if st, _, _ := h.Throttled(ctx, dest, reply); st.PausedUntil.Sub(now) != time.Minute {
			t.Errorf("a throttling reply an hour after the last pause paused for %s, want 1m", st.PausedUntil.Sub(now))
		}
	})
}

func TestAllowMessage_replicasShareADestinationsMessagesPerMinute(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		ctx := context.Background()
		a := New(newClient(t, srv.addr), nil, Options{})
		b := New(newClient(t, srv.addr), nil, Options{})
		dest := Destination{Key: "site:test", Name: "test", Rule: Rule{MessagesPerMinute: 3}}
		if w, err := a.AllowMessage(ctx, dest); err != nil || w != 0 {
			t.Fatalf("first message: wait %s, err %v", w, err)
		}
		// A burst of 1 at 3 a minute: the next message is 20 s away, on
		// either replica.
		w, err := b.AllowMessage(ctx, dest)
		if err != nil || w < 10*time.Second || w > 20*time.Second {
			t.Errorf("second message on another replica: wait %s, err %v; want up to 20s", w, err)
		}
		if w, _ := a.AllowMessage(ctx, Destination{Key: "site:other", Name: "other"}); w != 0 {
			t.Errorf("a destination without a rate waits %s", w)
		}
	})
}

func TestShaping_sitesShareABudgetByMXSuffixAndAFileOverridesTheBuiltIn(t *testing.T) {
	def := DefaultShaping()
	cases := []struct {
		domain string
		mx     []string
		key    string
	}{
		{"gmail.com", []string{"gmail-smtp-in.l.google.com."}, "site:google"},
		{"acme-workspace.example", []string{"aspmx.l.google.com"}, "site:google"},
		{"hotmail.com", []string{"hotmail-com.olc.protection.outlook.com"}, "site:microsoft"},
		{"yahoo.com", []string{"mta5.am0.yahoodns.net"}, "site:yahoo"},
		{"small.example", []string{"mx1.small.example", "mx2.small.example"}, "mx:mx1.small.example"},
		{"notgoogle.example", []string{"mx.evilgoogle.com"}, "mx:mx.evilgoogle.com"},
	}
	for _, c := range cases {
		if got := def.ForMX(c.domain, c.mx); got.Key != c.key {
			t.Errorf("ForMX(%s, %v) = %s, want %s", c.domain, c.mx, got.Key, c.key)
		}
	}
	if r := def.ForMX("yahoo.com", []string{"mta5.am0.yahoodns.net"}).Rule; r.MaxMessagesPerConnection != 20 || r.RampStep != time.Minute {
		t.Errorf("yahoo's rule %+v: want its own 20 messages per connection and the default ramp step", r)
	}

	path := filepath.Join(t.TempDir(), "shaping.yaml")
	if err := os.WriteFile(path, []byte("default:\n  throttle_pause: 1m\nsites:\n  - name: google\n    mx: [google.com]\n    max_connections: 3\n  - name: corp\n    mx: [corp.example]\n    max_connections: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadShaping(path)
	if err != nil {
		t.Fatal(err)
	}
	if g := s.ForMX("gmail.com", []string{"gmail-smtp-in.l.google.com"}); g.Rule.MaxConnections != 3 || g.Rule.ThrottlePause != time.Minute {
		t.Errorf("google after the override: %+v, want 3 connections and the file's 1m pause", g.Rule)
	}
	if c := s.ForMX("corp.example", []string{"mx.corp.example"}); c.Key != "site:corp" {
		t.Errorf("the file's own site: %s", c.Key)
	}
	if y := s.ForMX("yahoo.com", []string{"mta5.am0.yahoodns.net"}); y.Key != "site:yahoo" {
		t.Errorf("a built-in site the file does not mention is gone: %s", y.Key)
	}
	for _, bad := range []string{"default:\n  max_connections: -1\n", "sites:\n  - name: x\n", "default:\n  max_conections: 3\n"} {
		if _, err := ParseShaping([]byte(bad)); err == nil {
			t.Errorf("ParseShaping(%q) accepted it", bad)
		}
	}
}

// The example configuration is the built-in shaping, so that what an
// operator copies is what runs without a file.
func TestShaping_theDeployedExampleIsTheBuiltInFile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/shaping.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, defaultShapingYAML) {
		t.Error("deploy/shaping.example.yaml differs from pkg/health/shaping.yaml; copy one over the other")
	}
}

func TestFallback_excludesTheRelayAndLeavesTheDeliveryAlone(t *testing.T) {
	d := &mailbusv1.Delivery{DeliveryId: "m1.r0", Route: &mailbusv1.Route{RelayId: "wf"}, ExcludedRelayIds: []string{"mass"}}
	f := Fallback(d)
	if got := f.GetExcludedRelayIds(); len(got) != 2 || got[1] != "wf" {
		t.Errorf("fallback excludes %v, want [mass wf]", got)
	}
	if len(d.GetExcludedRelayIds()) != 1 {
		t.Errorf("the original delivery was changed: %v", d.GetExcludedRelayIds())
	}
}

func TestRelayFailed_thirdFailureDisablesTheRelayForTheTenantsDay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, srv server) {
		ctx := context.Background()
		rdb := newClient(t, srv.addr)
		h := New(rdb, limits.New(rdb), Options{})
		tenant := &mailbusv1.Tenant{Id: "acme", TimeZone: "Europe/Berlin"}
		var disabledAt []int
		for i := 1; i <= 4; i++ {
			n, now, err := h.RelayFailed(ctx, tenant, "wf")
			if err != nil || n != i {
				t.Fatalf("failure %d: counted %d, err %v", i, n, err)
			}
			if now {
				disabledAt = append(disabledAt, n)
			}
		}
		if len(disabledAt) != 1 || disabledAt[0] != 3 || !h.Disabled(ctx, tenant, "wf") || h.Disabled(ctx, tenant, "other") {
			t.Errorf("disabled at failures %v; wf disabled %v, other %v", disabledAt, h.Disabled(ctx, tenant, "wf"), h.Disabled(ctx, tenant, "other"))
		}
		h.RelaySucceeded(ctx, tenant, "wf")
		if !h.Disabled(ctx, tenant, "wf") {
			t.Error("a success re-enabled a relay disabled for the day")
		}
	})
}
