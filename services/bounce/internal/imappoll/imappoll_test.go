package imappoll

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// corpusDir is the shared bounce corpus (the repository is cloned with
// shared/ beside it).
const corpusDir = "../../../../../shared/testdata/bounces"

func corpusFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, rel))
	if err != nil {
		t.Fatalf("bounce corpus file %s (clone the repository with shared/ beside it): %v", rel, err)
	}
	return b
}

// lf makes line endings comparable: Maildir files here have LF, IMAP
// sends CRLF.
func lf(b []byte) string { return strings.ReplaceAll(string(b), "\r\n", "\n") }

// recorder is the handler under the poller: it keeps what it was given
// and fails for messages containing failOn.
type recorder struct {
	mu     sync.Mutex
	got    []string
	failOn string
}

func (r *recorder) handle(_ context.Context, raw []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOn != "" && strings.Contains(string(raw), r.failOn) {
		return errors.New("broker unavailable")
	}
	r.got = append(r.got, lf(raw))
	return nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

func (r *recorder) setFailOn(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failOn = s
}

func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return h, port
}

func newPoller(t *testing.T, d *testkit.Dovecot, h Handler, mod func(*Config)) *Poller {
	t.Helper()
	host, port := hostPort(t, d.Addr)
	cfg := Config{Host: host, Port: port, TLS: TLSNone, Username: d.User, Password: d.Password}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// flagsIn returns every message's flags in folder, read over a separate
// IMAP connection.
func flagsIn(t *testing.T, d *testkit.Dovecot, folder string) [][]imap.Flag {
	t.Helper()
	c, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(d.User, d.Password).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select(folder, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	var seq imap.SeqSet
	seq.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(seq, &imap.FetchOptions{Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]imap.Flag
	for _, m := range msgs {
		out = append(out, m.Flags)
	}
	return out
}

// markSeen sets \Seen on every message of folder, as a person reading the
// mailbox would.
func markSeen(t *testing.T, d *testkit.Dovecot, folder string) {
	t.Helper()
	c, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(d.User, d.Password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select(folder, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	var seq imap.SeqSet
	seq.AddRange(1, 0) // 1:*
	if err := c.Store(seq, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Logout().Wait()
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestPoller_handsEveryNewMessageInInboxAndJunkToTheHandlerOnce(t *testing.T) {
	ctx := context.Background()
	d := testkit.StartDovecot(t, "bounces@acme.example", "imap-s3cret")
	postfixDSN := corpusFile(t, "samples/lhost-postfix-01.eml")
	rfcDSN := corpusFile(t, "samples/rfc3464-01.eml")
	notBounce := corpusFile(t, "not-bounce/is-not-bounce-01.eml")
	d.Deliver(t, "INBOX", postfixDSN)
	d.Deliver(t, "INBOX", notBounce)
	// Providers file many bounces as spam: the Junk folder is polled too.
	d.Deliver(t, "Junk", rfcDSN)
	rec := &recorder{}
	p := newPoller(t, d, rec.handle, nil) // default folders: found by LIST

	n, err := p.PollOnce(ctx)
	if err != nil {
		t.Fatalf("first poll: %v\n%s", err, d.Log())
	}
	if n != 3 {
		t.Errorf("first poll processed %d messages, want 3", n)
	}
	want := sorted([]string{lf(postfixDSN), lf(notBounce), lf(rfcDSN)})
	if got := sorted(rec.take()); !slices.Equal(got, want) {
		t.Errorf("handler got %d messages, not the three delivered byte for byte", len(got))
	}
	for _, folder := range []string{"INBOX", "Junk"} {
		for i, flags := range flagsIn(t, d, folder) {
			if !slices.Contains(flags, imap.FlagSeen) || !slices.Contains(flags, ProcessedKeyword) {
				t.Errorf("%s message %d has flags %v, want \\Seen and %s", folder, i+1, flags, ProcessedKeyword)
			}
		}
	}

	n, err = p.PollOnce(ctx)
	if err != nil || n != 0 {
		t.Errorf("second poll = %d, %v; want 0, nil", n, err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Errorf("second poll handed %d messages again", len(got))
	}

	// Mail that arrives later is picked up by a later poll, alone.
	late := corpusFile(t, "samples/lhost-postfix-04.eml")
	d.Deliver(t, "Junk", late)
	n, err = p.PollOnce(ctx)
	if err != nil || n != 1 {
		t.Errorf("poll after a new delivery = %d, %v; want 1, nil", n, err)
	}
	if got := rec.take(); len(got) != 1 || got[0] != lf(late) {
		t.Errorf("poll after a new delivery handed %d messages, want only the new one", len(got))
	}
}

func TestPoller_leavesAMessageWhoseHandlerFailedForTheNextPoll(t *testing.T) {
	ctx := context.Background()
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret")
	d.Deliver(t, "INBOX", corpusFile(t, "samples/lhost-postfix-01.eml"))
	failing := corpusFile(t, "samples/lhost-postfix-05.eml")
	d.Deliver(t, "INBOX", failing)
	d.Deliver(t, "Junk", corpusFile(t, "samples/rfc3464-01.eml"))
	// A line only the failing message has.
	marker := ""
	for _, l := range strings.Split(lf(failing), "\n") {
		if strings.HasPrefix(l, "Message-Id:") || strings.HasPrefix(l, "Message-ID:") {
			marker = l
			break
		}
	}
	if marker == "" {
		t.Fatal("lhost-postfix-05.eml has no Message-Id line to tell it apart")
	}
	rec := &recorder{failOn: marker}
	p := newPoller(t, d, rec.handle, nil)

	n, err := p.PollOnce(ctx)
	if !errors.Is(err, errHandler) || !strings.Contains(err.Error(), "broker unavailable") {
		t.Errorf("poll with a failing handler: err = %v, want the handler's error", err)
	}
	if n != 2 || len(rec.take()) != 2 {
		t.Errorf("poll with a failing handler processed %d, want the other 2", n)
	}

	rec.setFailOn("")
	n, err = p.PollOnce(ctx)
	if err != nil || n != 1 {
		t.Fatalf("poll after the handler recovered = %d, %v; want 1, nil", n, err)
	}
	if got := rec.take(); len(got) != 1 || got[0] != lf(failing) {
		t.Errorf("poll after the handler recovered handed %d messages, want only the one that failed", len(got))
	}
	if n, err := p.PollOnce(ctx); err != nil || n != 0 {
		t.Errorf("third poll = %d, %v; want 0, nil", n, err)
	}
}

func TestPoller_processesABounceSomeoneAlreadyReadInTheirMailClient(t *testing.T) {
	ctx := context.Background()
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret")
	dsn := corpusFile(t, "samples/lhost-postfix-01.eml")
	d.Deliver(t, "INBOX", dsn)
	// The tenant owns the mailbox and may open it before mailbus polls.
	markSeen(t, d, "INBOX")
	rec := &recorder{}
	p := newPoller(t, d, rec.handle, func(c *Config) { c.Folders = []string{"INBOX"} })
	if n, err := p.PollOnce(ctx); err != nil || n != 1 {
		t.Fatalf("poll = %d, %v; want 1, nil", n, err)
	}
	if got := rec.take(); len(got) != 1 || got[0] != lf(dsn) {
		t.Errorf("handler got %d messages, want the read bounce", len(got))
	}
}

func TestPoller_verifiesTheServerCertificateUnlessToldNotTo(t *testing.T) {
	ctx := context.Background()
	cert := testkit.NewCert(t)
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret", testkit.DovecotTLS(cert))
	d.Deliver(t, "INBOX", corpusFile(t, "samples/lhost-postfix-01.eml"))
	trusted := cert.ClientTLSConfig("")
	tests := []struct {
		name    string
		mode    TLSMode
		tls     bool // dial TLSAddr
		base    bool // trust the test CA
		skip    bool
		wantErr string
	}{
		{name: "starttls trusting the CA", mode: TLSStartTLS, base: true},
		{name: "implicit TLS trusting the CA", mode: TLSImplicit, tls: true, base: true},
		{name: "implicit TLS with the system roots", mode: TLSImplicit, tls: true, wantErr: "certificate"},
		{name: "starttls with the system roots", mode: TLSStartTLS, wantErr: "certificate"},
		{name: "implicit TLS with verification off", mode: TLSImplicit, tls: true, skip: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := d.Addr
			if tt.tls {
				addr = d.TLSAddr
			}
			host, port := hostPort(t, addr)
			cfg := Config{Host: host, Port: port, TLS: tt.mode, Username: d.User, Password: d.Password,
				Folders: []string{"INBOX"}, InsecureSkipVerify: tt.skip}
			if tt.base {
				cfg.TLSConfig = trusted
			}
			// Nothing is marked, so every subtest finds the message.
			p, err := New(cfg, func(context.Context, []byte) error { return errors.New("not now") }, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.PollOnce(ctx)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %v, want one about %q", err, tt.wantErr)
				}
			case !errors.Is(err, errHandler):
				// Reaching the handler proves login and fetch worked.
				t.Errorf("err = %v, want only the handler's", err)
			}
		})
	}
}

func TestPoller_reportsAWrongPassword(t *testing.T) {
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret")
	rec := &recorder{}
	p := newPoller(t, d, rec.handle, func(c *Config) { c.Password = "wrong" })
	_, err := p.PollOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "log in") {
		t.Errorf("err = %v, want a login failure", err)
	}
}

func TestPickFolders_choosesInboxAndTheSpamFolder(t *testing.T) {
	tests := []struct {
		name string
		list []*imap.ListData
		want []string
	}{
		{"special-use attribute wins over names",
			[]*imap.ListData{{Mailbox: "INBOX"}, {Mailbox: "Spam"}, {Mailbox: "Courrier indésirable", Attrs: []imap.MailboxAttr{imap.MailboxAttrJunk}}},
			[]string{"INBOX", "Courrier indésirable"}},
		{"junk by name, any case",
			[]*imap.ListData{{Mailbox: "INBOX"}, {Mailbox: "JUNK"}},
			[]string{"INBOX", "JUNK"}},
		{"gmail style nested spam",
			[]*imap.ListData{{Mailbox: "INBOX"}, {Mailbox: "[Gmail]", Delim: '/', Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}}, {Mailbox: "[Gmail]/Spam", Delim: '/'}},
			[]string{"INBOX", "[Gmail]/Spam"}},
		{"junk preferred to spam",
			[]*imap.ListData{{Mailbox: "Spam"}, {Mailbox: "Junk"}},
			[]string{"INBOX", "Junk"}},
		{"no spam folder",
			[]*imap.ListData{{Mailbox: "INBOX"}, {Mailbox: "Sent"}},
			[]string{"INBOX"}},
		{"a non-selectable spam folder is not polled",
			[]*imap.ListData{{Mailbox: "INBOX"}, {Mailbox: "Junk", Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}}},
			[]string{"INBOX"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pickFolders(tt.list); !slices.Equal(got, tt.want) {
				t.Errorf("pickFolders = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNew_refusesAConfigurationThatCannotWork(t *testing.T) {
	h := func(context.Context, []byte) error { return nil }
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no host", Config{Username: "u"}},
		{"no user", Config{Host: "imap.example"}},
		{"unknown TLS mode", Config{Host: "imap.example", Username: "u", TLS: "ssl3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, h, nil); err == nil {
				t.Error("New accepted it")
			}
		})
	}
	if p, err := New(Config{Host: "imap.example", Username: "u"}, h, nil); err != nil || p.cfg.Port != 993 || p.cfg.TLS != TLSImplicit {
		t.Errorf("defaults: %+v, %v; want implicit TLS on 993", p, err)
	}
}

func TestPoller_runKeepsPollingUntilCancelled(t *testing.T) {
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret")
	got := make(chan []byte, 4)
	p := newPoller(t, d, func(_ context.Context, raw []byte) error { got <- raw; return nil },
		func(c *Config) { c.Interval = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	// Delivered while Run is already polling: a later poll finds it.
	d.Deliver(t, "Junk", corpusFile(t, "samples/lhost-postfix-01.eml"))
	select {
	case <-got:
	case err := <-done:
		t.Fatalf("Run returned before handling the message: %v", err)
	case <-time.After(testkit.WaitTimeout):
		t.Fatalf("Run did not hand over the message\n%s", d.Log())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	if len(got) != 0 {
		t.Errorf("the message was handed over %d more times", len(got))
	}
}

func TestPoller_aMissingFolderDoesNotStopTheOthers(t *testing.T) {
	d := testkit.StartDovecot(t, "bounces", "imap-s3cret")
	d.Deliver(t, "INBOX", corpusFile(t, "samples/lhost-postfix-01.eml"))
	rec := &recorder{}
	p := newPoller(t, d, rec.handle, func(c *Config) { c.Folders = []string{"Bounces", "INBOX"} })
	n, err := p.PollOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "select Bounces") {
		t.Errorf("err = %v, want one about the missing folder", err)
	}
	if n != 1 || len(rec.take()) != 1 {
		t.Errorf("processed %d, want INBOX's message all the same", n)
	}
}
