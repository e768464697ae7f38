package testkit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// dovecotBin is where Debian's dovecot-core puts the master binary.
const dovecotBin = "/usr/sbin/dovecot"

// dovecotInstall says how to get Dovecot when it is missing.
const dovecotInstall = "apt-get install dovecot-imapd"

// dovecotStartAttempts bounds the retries when another process takes the
// port picked for Dovecot before it binds it.
const dovecotStartAttempts = 3

// dovecotReadyTimeout is how long a fresh Dovecot may take to listen;
// generous because the test machines are small and shared (see
// WaitTimeout).
const dovecotReadyTimeout = WaitTimeout

// Dovecot is a private Dovecot IMAP server started by StartDovecot: its own
// configuration, runtime directory, log and one user whose mail is a
// Maildir under the test's temporary directory.
type Dovecot struct {
	// Addr is the IMAP listener (host:port on 127.0.0.1). It accepts
	// plaintext LOGIN; with DovecotTLS it also offers STARTTLS.
	Addr string
	// TLSAddr is the implicit-TLS (imaps) listener; empty without
	// DovecotTLS.
	TLSAddr string
	// User and Password log in.
	User, Password string

	dir      string
	maildir  string
	uid, gid int
	seq      atomic.Uint64
}

// DovecotOption changes how StartDovecot configures the server.
type DovecotOption func(*dovecotConfig)

type dovecotConfig struct {
	cert    *Cert
	folders []string
}

// DovecotTLS serves the certificate: STARTTLS on Addr and implicit TLS on
// TLSAddr. Clients verify it with cert.CAPool.
func DovecotTLS(cert *Cert) DovecotOption {
	return func(c *dovecotConfig) { c.cert = cert }
}

// DovecotFolders creates these top-level folders besides INBOX and Junk
// (Junk always exists and carries the \Junk special-use attribute, as on
// most providers).
func DovecotFolders(names ...string) DovecotOption {
	return func(c *dovecotConfig) { c.folders = append(c.folders, names...) }
}

// StartDovecot starts a private Dovecot IMAP server on a free loopback port
// with one user, user/pass, and stops it (the master process it started,
// which takes its children with it) when t ends. Mail is put in with
// Deliver, which writes straight into the Maildir as a local delivery agent
// would, so that tests do not depend on an MTA or on IMAP APPEND.
//
// A failed login makes Dovecot delay the next ones from the same address
// by seconds (its auth penalty, which no 2.3 setting turns off): a test of
// a wrong password is best given its own server.
//
// It needs Debian's dovecot-imapd (Dovecot 2.3 configuration syntax) and
// root, because Dovecot's master drops privileges to its own users. When
// Dovecot is missing or cannot start the test is skipped with the reason,
// unless the CI environment variable is set: there a missing or broken
// Dovecot is a broken image and the test fails.
func StartDovecot(t testing.TB, user, pass string, opts ...DovecotOption) *Dovecot {
	t.Helper()
	var cfg dovecotConfig
	for _, o := range opts {
		o(&cfg)
	}
	if _, err := os.Stat(dovecotBin); err != nil {
		dovecotUnavailable(t, fmt.Sprintf("Dovecot is not installed (%v); to run the IMAP tests: %s", err, dovecotInstall))
	}
	if os.Geteuid() != 0 {
		dovecotUnavailable(t, fmt.Sprintf("the Dovecot tests need root (Dovecot's master runs as root and drops privileges); running as uid %d", os.Geteuid()))
	}
	if strings.ContainsAny(user, ":/\n") || strings.ContainsAny(pass, ":\n") {
		t.Fatalf("testkit: Dovecot user %q or its password holds a character the passwd-file cannot store", user)
	}
	// Dovecot refuses to give mail access to uid 0, so the mailbox belongs
	// to nobody: a user that exists everywhere and owns nothing else.
	uid, gid := 65534, 65534
	if u, err := lookupUser("nobody"); err == nil {
		uid, gid = u[0], u[1]
	}
	// Not t.TempDir: its directories are 0700, and Dovecot's processes,
	// which run as other users, must reach the mail and the sockets.
	dir, err := os.MkdirTemp("", "mailbus-dovecot-")
	if err != nil {
		t.Fatalf("testkit: Dovecot directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs after the stop below
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testkit: Dovecot directory: %v", err)
	}
	d := &Dovecot{User: user, Password: pass, dir: dir, maildir: filepath.Join(dir, "mail", user, "Maildir"), uid: uid, gid: gid}
	if err := os.Mkdir(filepath.Join(dir, "mail"), 0o755); err != nil {
		t.Fatalf("testkit: Dovecot mail directory: %v", err)
	}
	for _, f := range append([]string{"INBOX", "Junk"}, cfg.folders...) {
		if err := d.makeFolder(f); err != nil {
			t.Fatalf("testkit: Dovecot folder %s: %v", f, err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "mail", user), uid, gid); err != nil {
		t.Fatalf("testkit: Dovecot mail home: %v", err)
	}
	home := filepath.Join(dir, "mail", user)
	if err := os.WriteFile(filepath.Join(dir, "users"),
		fmt.Appendf(nil, "%s:{PLAIN}%s:%d:%d::%s\n", user, pass, uid, gid, home), 0o644); err != nil {
		t.Fatalf("testkit: Dovecot users: %v", err)
	}
	if cfg.cert != nil {
		if err := os.WriteFile(filepath.Join(dir, "cert.pem"), cfg.cert.CertPEM, 0o644); err != nil {
			t.Fatalf("testkit: Dovecot certificate: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "key.pem"), cfg.cert.KeyPEM, 0o600); err != nil {
			t.Fatalf("testkit: Dovecot key: %v", err)
		}
	}
	var lastErr error
	for range dovecotStartAttempts {
		if lastErr = d.start(t, cfg); lastErr == nil {
			return d
		}
		if !errors.Is(lastErr, errDovecotExited) {
			break
		}
	}
	dovecotUnavailable(t, fmt.Sprintf("Dovecot did not start: %v", lastErr))
	return nil
}

// errDovecotExited means the master stopped before listening, most often
// because a port was taken; StartDovecot then tries other ports.
var errDovecotExited = errors.New("dovecot exited before it listened")

func (d *Dovecot) start(t testing.TB, cfg dovecotConfig) error {
	t.Helper()
	port, err := freePort()
	if err != nil {
		return err
	}
	tlsPort := 0
	if cfg.cert != nil {
		if tlsPort, err = freePort(); err != nil {
			return err
		}
	}
	conf := filepath.Join(d.dir, "dovecot.conf")
	if err := os.WriteFile(conf, []byte(d.config(port, tlsPort, cfg.cert != nil)), 0o644); err != nil {
		return fmt.Errorf("write Dovecot configuration: %w", err)
	}
	// Remove the log of a failed attempt, so that errors name this one.
	_ = os.Remove(d.logPath())
	// -F keeps the master in the foreground: this process then is the
	// master, the one thing the cleanup stops.
	cmd := exec.Command(dovecotBin, "-F", "-c", conf)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	setRedisProcAttr(cmd) // the parent-death signal: no Dovecot outlives a crashed test binary
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", dovecotBin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		// SIGTERM lets the master stop its children; SIGKILL only if it
		// does not go.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	d.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d.TLSAddr = ""
	addrs := []string{d.Addr}
	if tlsPort != 0 {
		d.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
		addrs = append(addrs, d.TLSAddr)
	}
	for _, a := range addrs {
		if err := waitListening(a, exited); err != nil {
			stop()
			return fmt.Errorf("dovecot on %s: %w; output:\n%s\nlog:\n%s", a, err, out.String(), d.Log())
		}
	}
	t.Cleanup(stop)
	return nil
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(dovecotReadyTimeout)
	for {
		select {
		case <-exited:
			return errDovecotExited
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening after %s: %w", dovecotReadyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *Dovecot) logPath() string { return filepath.Join(d.dir, "dovecot.log") }

// Log returns Dovecot's log so far, for a failing test to show.
func (d *Dovecot) Log() string {
	b, err := os.ReadFile(d.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// config is a minimal Dovecot 2.3 configuration: IMAP only, on loopback,
// plaintext passwords from a passwd-file, Maildir++ mail in the temporary
// directory, nothing read from /etc/dovecot.
func (d *Dovecot) config(port, tlsPort int, withTLS bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# A private Dovecot for one test (mailbus pkg/testkit).
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
protocols = imap
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests try wrong passwords on purpose; the default 2 s penalty only slows them.
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[1]s/users
}
userdb {
  driver = passwd-file
  args = username_format=%%u %[1]s/users
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox Junk {
    special_use = \Junk
    auto = subscribe
  }
}
`, d.dir)
	if withTLS {
		fmt.Fprintf(&b, "ssl = yes\nssl_cert = <%[1]s/cert.pem\nssl_key = <%[1]s/key.pem\nssl_min_protocol = TLSv1.2\n", d.dir)
	} else {
		b.WriteString("ssl = no\n")
	}
	fmt.Fprintf(&b, `service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %d
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = %d
  }
}
`, port, tlsPort)
	return b.String()
}

// folderDir is the Maildir++ directory of a top-level folder.
func (d *Dovecot) folderDir(folder string) (string, error) {
	if strings.EqualFold(folder, "INBOX") {
		return d.maildir, nil
	}
	if folder == "" || strings.ContainsAny(folder, "./\x00") {
		return "", fmt.Errorf("folder %q: only top-level folder names without dots or slashes", folder)
	}
	return filepath.Join(d.maildir, "."+folder), nil
}

func (d *Dovecot) makeFolder(folder string) error {
	fd, err := d.folderDir(folder)
	if err != nil {
		return err
	}
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		p := filepath.Join(fd, sub)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
	}
	// MkdirAll made the parents as root: hand everything from the mail
	// home down to the mail user.
	return filepath.Walk(filepath.Dir(d.maildir), func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, d.uid, d.gid)
	})
}

// Deliver puts raw into folder ("INBOX", "Junk", or a folder made with
// DovecotFolders, or a new top-level name) as a new, unseen message, the
// way a local delivery agent does: written under tmp/, then renamed into
// new/. Dovecot picks it up at the next SELECT or NOOP.
func (d *Dovecot) Deliver(t testing.TB, folder string, raw []byte) {
	t.Helper()
	if err := d.makeFolder(folder); err != nil {
		t.Fatalf("testkit: deliver to %s: %v", folder, err)
	}
	fd, _ := d.folderDir(folder)
	now := time.Now()
	name := fmt.Sprintf("%d.M%dP%dQ%d.mailbus-test", now.Unix(), now.Nanosecond()/1000, os.Getpid(), d.seq.Add(1))
	tmp := filepath.Join(fd, "tmp", name)
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		t.Fatalf("testkit: deliver to %s: %v", folder, err)
	}
	if err := os.Chown(tmp, d.uid, d.gid); err != nil {
		t.Fatalf("testkit: deliver to %s: %v", folder, err)
	}
	if err := os.Rename(tmp, filepath.Join(fd, "new", name)); err != nil {
		t.Fatalf("testkit: deliver to %s: %v", folder, err)
	}
}

// dovecotUnavailable ends t because Dovecot cannot run here: a failure in
// CI, where that is a broken image, a skip on a developer's machine.
func dovecotUnavailable(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// lookupUser returns a system user's uid and gid.
func lookupUser(name string) ([2]int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return [2]int{}, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return [2]int{}, fmt.Errorf("user %s: %w", name, err)
	}
	return [2]int{uid, gid}, nil
}
