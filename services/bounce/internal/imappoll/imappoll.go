// Package imappoll fetches bounces from a mailbox over IMAP, for tenants
// whose return path is a mailbox they own rather than a VERP address on a
// bounce domain that mailbus receives mail for.
//
// Each poll logs in, and for each folder (INBOX and the spam folder by
// default: providers file many bounces as spam) selects it, searches the
// messages not yet handled, fetches each one whole without touching its
// flags (BODY.PEEK[]) and hands it to the handler, the bounce service's
// processing of one message. What marks a message handled:
//
//   - Where the folder accepts custom keywords (PERMANENTFLAGS has \*, as
//     on Dovecot, Cyrus, Gmail and most servers), the keyword
//     $MailbusProcessed, plus \Seen so that the people reading the mailbox
//     see it was dealt with. The search is NOT KEYWORD $MailbusProcessed,
//     so a bounce that someone opened in their mail client before mailbus
//     polled is still processed, and nothing outside the mailbox (no
//     UIDVALIDITY/UID high-water mark) needs storing across restarts.
//   - Otherwise \Seen alone, and the search is UNSEEN.
//
// Messages are marked, not moved or deleted: the mailbox belongs to the
// tenant, who may want to read the bounces, and a move needs a folder that
// the tenant may not want or that the account may not be allowed to
// create. A message is marked only after the handler succeeded; a handler
// error leaves it for the next poll. The handler must therefore be
// idempotent, and the bounce service is: its event ids depend only on the
// report, and suppression entries are keyed by address. A crash between
// the handler and the mark processes the message once more, harmlessly.
package imappoll

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// TLSMode is how the connection to the IMAP server is secured.
type TLSMode string

// The TLS modes.
const (
	// TLSImplicit is TLS from the first byte (imaps, port 993).
	TLSImplicit TLSMode = "tls"
	// TLSStartTLS upgrades a plain connection with STARTTLS (port 143);
	// a server that does not offer it is an error, never a fallback.
	TLSStartTLS TLSMode = "starttls"
	// TLSNone sends the password in the clear: for loopback and tests.
	TLSNone TLSMode = "none"
)

// ProcessedKeyword is the IMAP keyword that marks a message handled.
const ProcessedKeyword imap.Flag = "$MailbusProcessed"

// Handler processes one message (its full raw bytes, or the first
// Config.MaxMessageBytes of it). An error means "try again later": the
// message is left unmarked for the next poll.
type Handler func(ctx context.Context, raw []byte) error

// Config says which mailbox to poll and how.
type Config struct {
	// Host and Port of the IMAP server. Port defaults to 993 for
	// TLSImplicit and to 143 otherwise.
	Host string
	Port int
	// TLS defaults to TLSImplicit.
	TLS TLSMode
	// InsecureSkipVerify turns certificate verification off. It is off by
	// default; turning it on lets anyone on the path read the password.
	InsecureSkipVerify bool
	// TLSConfig, when set, is the base of the TLS configuration (for
	// example a private CA in RootCAs); ServerName defaults to Host.
	TLSConfig *tls.Config
	// Username and Password log in (IMAP LOGIN).
	Username, Password string
	// Folders to poll. Empty means INBOX and the spam folder: the one
	// with the \Junk special-use attribute, else the first folder named
	// Junk, Spam, or Junk E-mail (any case), when there is one.
	Folders []string
	// Interval between polls in Run; default 1 minute.
	Interval time.Duration
	// MaxMessageBytes bounds what is fetched of one message; default
	// 10 MiB. A longer message is handed over cut at this size: the part
	// that says what bounced comes first, the returned original last.
	MaxMessageBytes int64
	// MaxPerPoll bounds the messages handled in one folder per poll, so
	// that a mailbox with years of backlog is worked through over several
	// polls instead of one endless one; default 500.
	MaxPerPoll int
	// Timeout bounds connecting and each command; default 1 minute.
	Timeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.TLS == "" {
		c.TLS = TLSImplicit
	}
	if c.Port == 0 {
		c.Port = 143
		if c.TLS == TLSImplicit {
			c.Port = 993
		}
	}
	if c.Interval <= 0 {
		c.Interval = time.Minute
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 10 << 20
	}
	if c.MaxPerPoll <= 0 {
		c.MaxPerPoll = 500
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Minute
	}
	return c
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch c.TLS {
	case "", TLSImplicit, TLSStartTLS, TLSNone:
	default:
		return fmt.Errorf("imappoll: TLS mode %q: want tls, starttls or none", c.TLS)
	}
	if c.Host == "" {
		return errors.New("imappoll: no IMAP host")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("imappoll: port %d out of range", c.Port)
	}
	if c.Username == "" {
		return errors.New("imappoll: no IMAP username")
	}
	return nil
}

// Poller polls one mailbox.
type Poller struct {
	cfg    Config
	handle Handler
	log    *slog.Logger
}

// New returns a poller of the mailbox in cfg that hands every new message
// to handle. log may be nil.
func New(cfg Config, handle Handler, log *slog.Logger) (*Poller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if handle == nil {
		return nil, errors.New("imappoll: no handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	return &Poller{cfg: cfg, handle: handle, log: log.With("imap", cfg.Username+"@"+cfg.Host)}, nil
}

// Run polls every Interval until ctx is cancelled. A failed poll is
// logged and tried again at the next interval: the server being away for
// a while must not stop the service.
func (p *Poller) Run(ctx context.Context) error {
	if p.cfg.TLS == TLSNone {
		p.log.WarnContext(ctx, "polling IMAP without TLS: the password crosses the network in the clear")
	}
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		n, err := p.PollOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			p.log.ErrorContext(ctx, "IMAP poll failed; trying again at the next interval", "processed", n, "err", err)
		case n > 0:
			p.log.InfoContext(ctx, "processed mail from the IMAP mailbox", "processed", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// PollOnce logs in, handles every message not yet handled in each folder
// (up to MaxPerPoll per folder), and logs out. processed counts the
// messages the handler accepted (and that were then marked). A handler
// error does not stop the poll, so that one message that cannot be handled
// does not hold back the others; the handler errors come back joined in
// err, with any IMAP error.
func (p *Poller) PollOnce(ctx context.Context) (processed int, err error) {
	c, err := p.dial()
	if err != nil {
		return 0, err
	}
	// The IMAP client takes no context: closing the connection is what
	// stops a command in progress when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer func() {
		if stop() {
			// Polite logout; the result does not matter any more.
			_ = c.Logout().Wait()
		}
		_ = c.Close()
	}()
	if err := c.Login(p.cfg.Username, p.cfg.Password).Wait(); err != nil {
		return 0, p.ctxErr(ctx, fmt.Errorf("imappoll: log in to %s as %s: %w", p.addr(), p.cfg.Username, err))
	}
	folders := p.cfg.Folders
	if len(folders) == 0 {
		if folders, err = defaultFolders(c); err != nil {
			return 0, p.ctxErr(ctx, err)
		}
	}
	var errs []error
	for _, f := range folders {
		n, err := p.pollFolder(ctx, c, f)
		processed += n
		if err != nil {
			errs = append(errs, err)
			// The handler's errors and the server's refusals (a folder
			// that does not exist) leave the connection usable; anything
			// else leaves it in an unknown state: stop here.
			var refused *imap.Error
			if !errors.Is(err, errHandler) && !errors.As(err, &refused) {
				break
			}
		}
	}
	return processed, p.ctxErr(ctx, errors.Join(errs...))
}

// ctxErr prefers ctx's error to the connection error that closing the
// connection on cancellation caused.
func (p *Poller) ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("imappoll: poll of %s stopped: %w", p.addr(), context.Cause(ctx))
	}
	return err
}

func (p *Poller) addr() string { return net.JoinHostPort(p.cfg.Host, strconv.Itoa(p.cfg.Port)) }

func (p *Poller) dial() (*imapclient.Client, error) {
	var tc *tls.Config
	if p.cfg.TLSConfig != nil {
		tc = p.cfg.TLSConfig.Clone()
	} else {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if tc.ServerName == "" {
		tc.ServerName = p.cfg.Host
	}
	if p.cfg.InsecureSkipVerify {
		tc.InsecureSkipVerify = true
	}
	opts := &imapclient.Options{TLSConfig: tc, Dialer: &net.Dialer{Timeout: p.cfg.Timeout}}
	var (
		c   *imapclient.Client
		err error
	)
	switch p.cfg.TLS {
	case TLSImplicit:
		c, err = imapclient.DialTLS(p.addr(), opts)
	case TLSStartTLS:
		c, err = imapclient.DialStartTLS(p.addr(), opts)
	default:
		c, err = imapclient.DialInsecure(p.addr(), opts)
	}
	if err != nil {
		return nil, fmt.Errorf("imappoll: connect to %s (%s): %w", p.addr(), p.cfg.TLS, err)
	}
	return c, nil
}

// spamNames are the usual names of the spam folder on servers without
// SPECIAL-USE, in the order they are preferred.
var spamNames = []string{"junk", "spam", "junk e-mail", "junk email", "bulk mail"}

// defaultFolders is INBOX and the spam folder, when there is one.
func defaultFolders(c *imapclient.Client) ([]string, error) {
	var opts *imap.ListOptions
	if c.Caps().Has(imap.CapSpecialUse) {
		opts = &imap.ListOptions{ReturnSpecialUse: true}
	}
	list, err := c.List("", "*", opts).Collect()
	if err != nil {
		return nil, fmt.Errorf("imappoll: list folders: %w", err)
	}
	return pickFolders(list), nil
}

// pickFolders chooses INBOX and the spam folder from a LIST answer.
func pickFolders(list []*imap.ListData) []string {
	folders := []string{"INBOX"}
	selectable := func(l *imap.ListData) bool {
		return !slices.Contains(l.Attrs, imap.MailboxAttrNoSelect) && !slices.Contains(l.Attrs, imap.MailboxAttrNonExistent)
	}
	for _, l := range list {
		if slices.Contains(l.Attrs, imap.MailboxAttrJunk) && selectable(l) {
			return append(folders, l.Mailbox)
		}
	}
	for _, name := range spamNames {
		for _, l := range list {
			// Match the last level too: "[Gmail]/Spam", "INBOX.Junk".
			leaf := l.Mailbox
			if l.Delim != 0 {
				if i := strings.LastIndexByte(leaf, byte(l.Delim)); i >= 0 {
					leaf = leaf[i+1:]
				}
			}
			if strings.EqualFold(leaf, name) && selectable(l) {
				return append(folders, l.Mailbox)
			}
		}
	}
	return folders
}

// errHandler marks the handler's errors among an IMAP poll's.
var errHandler = errors.New("handler failed")

// pollFolder handles the folder's unhandled messages.
func (p *Poller) pollFolder(ctx context.Context, c *imapclient.Client, folder string) (int, error) {
	sel, err := c.Select(folder, nil).Wait()
	if err != nil {
		return 0, fmt.Errorf("imappoll: select %s: %w", folder, err)
	}
	if sel.NumMessages == 0 {
		return 0, nil
	}
	// The keyword works only where the folder keeps new keywords; else
	// \Seen is all there is.
	useKeyword := slices.Contains(sel.PermanentFlags, imap.FlagWildcard) || slices.Contains(sel.PermanentFlags, ProcessedKeyword)
	criteria := &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}
	mark := []imap.Flag{imap.FlagSeen}
	if useKeyword {
		criteria = &imap.SearchCriteria{NotFlag: []imap.Flag{ProcessedKeyword}}
		mark = append(mark, ProcessedKeyword)
	}
	found, err := c.UIDSearch(criteria, nil).Wait()
	if err != nil {
		return 0, fmt.Errorf("imappoll: search %s: %w", folder, err)
	}
	uids := found.AllUIDs()
	if len(uids) > p.cfg.MaxPerPoll {
		p.log.InfoContext(ctx, "more unhandled messages than one poll takes; the rest come in the next polls",
			"folder", folder, "unhandled", len(uids), "this_poll", p.cfg.MaxPerPoll)
		uids = uids[:p.cfg.MaxPerPoll]
	}
	section := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 0, Size: p.cfg.MaxMessageBytes}}
	var (
		processed int
		errs      []error
	)
	// One message at a time: memory stays at one message, and a handler
	// that is slow (publishing to Kafka) does not hold a fetch open.
	for _, uid := range uids {
		if ctx.Err() != nil {
			break
		}
		msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
		if err != nil {
			return processed, errors.Join(append(errs, fmt.Errorf("imappoll: fetch %s UID %d: %w", folder, uid, err))...)
		}
		if len(msgs) == 0 {
			continue // expunged meanwhile
		}
		raw := msgs[0].FindBodySection(section)
		if raw == nil {
			return processed, errors.Join(append(errs, fmt.Errorf("imappoll: fetch %s UID %d: no body in the answer", folder, uid))...)
		}
		if err := p.handle(ctx, raw); err != nil {
			p.log.WarnContext(ctx, "could not handle a message; it stays for the next poll", "folder", folder, "uid", uint32(uid), "err", err)
			errs = append(errs, fmt.Errorf("imappoll: %w: %s UID %d: %w", errHandler, folder, uid, err))
			continue
		}
		store := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: mark}
		if err := c.Store(imap.UIDSetNum(uid), store, nil).Close(); err != nil {
			// Handled but not marked: the next poll hands it over again,
			// which the handler's idempotence makes harmless.
			return processed, errors.Join(append(errs, fmt.Errorf("imappoll: mark %s UID %d handled: %w", folder, uid, err))...)
		}
		processed++
	}
	return processed, errors.Join(errs...)
}
