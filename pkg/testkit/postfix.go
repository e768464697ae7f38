package testkit

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Postfix, Debian's production MTA, is what the tests that must see a real
// MTA's behaviour start (TLS and SASL as Postfix does them, DSNs that
// Postfix writes itself). They need
//
//	apt-get install postfix sasl2-bin libsasl2-modules
//
// and root, because Postfix's master runs as root and drops to the postfix
// user; without either StartPostfix skips the test, saying so.
const (
	postfixBin     = "/usr/sbin/postfix"
	postfixInstall = "apt-get install postfix sasl2-bin libsasl2-modules"
	// postfixWait bounds how long Postfix may take to start listening, to
	// stop, or to write an expected log line on the small shared machines
	// (see WaitTimeout).
	postfixWait = WaitTimeout
)

// PostfixOptions configures a private Postfix. The zero value is a Postfix
// that accepts mail from loopback for any domain and discards it.
type PostfixOptions struct {
	// Hostname is myhostname, mydomain and myorigin, and the name in the
	// greeting; "postfix.test" when empty.
	Hostname string
	// SASLUsers are the accounts for SMTP AUTH, "user@realm" → password,
	// kept in a Cyrus sasldb (which needs saslpasswd2). With any, smtpd
	// offers AUTH PLAIN and LOGIN only over TLS and relays only for
	// authenticated clients; without, it relays for any loopback client.
	SASLUsers map[string]string
	// Transport is the transport(5) table, for example
	// "example.net" → "error:5.1.1 User unknown" to have Postfix accept
	// mail and then bounce it itself, or
	// "bounce.example" → "smtp:[127.0.0.1]:2525" to send a domain's mail
	// to a test's own SMTP server. Unlisted domains are discarded.
	Transport map[string]string
	// MainCF are main.cf parameters that replace the defaults of the same
	// name or add to them ("notify_classes" → "bounce, resource"). For
	// local delivery (which bounces users that do not exist) set
	// mydestination and local_transport = local.
	MainCF map[string]string
}

// Postfix is a private Postfix instance on loopback ports, with its own
// configuration, queue, data directory and log, started by StartPostfix.
type Postfix struct {
	// Dir holds main.cf, master.cf, the queue and the log.
	Dir string
	// SMTPPort offers STARTTLS; SMTPSPort is implicit TLS (port 465 style).
	SMTPPort, SMTPSPort int
	// Cert is the server certificate; clients verify it with Cert.CAPool.
	Cert *Cert
	// Hostname is myhostname, as in the greeting and the DSNs it writes.
	Hostname string
}

// StartPostfix configures and starts a Postfix instance for t and stops it
// (only it, through its own configuration directory) when t ends. It
// installs nothing: when Postfix (or, for SASLUsers, saslpasswd2) is
// missing, the postfix user does not exist, the test does not run as root,
// or Postfix does not start, t is skipped with a message saying what is
// needed.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	if _, err := os.Stat(postfixBin); err != nil {
		t.Skipf("Postfix is not installed (%v); to run the Postfix tests: %s", err, postfixInstall)
	}
	saslpasswd := ""
	if len(opts.SASLUsers) > 0 {
		p, err := exec.LookPath("saslpasswd2")
		if err != nil {
			t.Skipf("saslpasswd2 is not installed; to run the Postfix tests: %s", postfixInstall)
		}
		saslpasswd = p
	}
	if os.Geteuid() != 0 {
		t.Skipf("Postfix tests need root (Postfix's master runs as root); running as uid %d", os.Geteuid())
	}
	pfUser, err := user.Lookup("postfix")
	if err != nil {
		t.Skipf("no postfix user (%v); to run the Postfix tests: %s", err, postfixInstall)
	}
	uid, _ := strconv.Atoi(pfUser.Uid)
	gid, _ := strconv.Atoi(pfUser.Gid)

	// Not t.TempDir: its directories are 0700, and Postfix's daemons, which
	// run as the postfix user, must reach the queue.
	dir, err := os.MkdirTemp("", "mailbus-postfix-")
	if err != nil {
		t.Fatalf("testkit: Postfix directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs after the stop below
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testkit: Postfix directory: %v", err)
	}
	pf := &Postfix{Dir: dir, Cert: NewCert(t), Hostname: opts.Hostname}
	if pf.Hostname == "" {
		pf.Hostname = "postfix.test"
	}
	for _, p := range []*int{&pf.SMTPPort, &pf.SMTPSPort} {
		if *p, err = freePort(); err != nil {
			t.Fatalf("testkit: %v", err)
		}
	}
	for _, d := range []string{"queue", "data", "sasl"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatalf("testkit: Postfix directory: %v", err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatalf("testkit: Postfix data directory: %v", err)
	}
	write := func(name string, data string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), mode); err != nil {
			t.Fatalf("testkit: write Postfix's %s: %v", name, err)
		}
	}
	write("cert.pem", string(pf.Cert.CertPEM), 0o644)
	write("key.pem", string(pf.Cert.KeyPEM), 0o600)
	write("main.cf", pf.mainCF(opts), 0o644)
	write("master.cf", pf.masterCF(), 0o644)
	write("transport", transportTable(opts.Transport), 0o644)
	write("sasl/smtpd.conf", fmt.Sprintf(
		"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: %s\n",
		filepath.Join(dir, "sasldb2")), 0o644)
	if saslpasswd != "" {
		pf.addSASLUsers(t, saslpasswd, opts.SASLUsers, uid, gid)
	}

	if out, err := pf.postfix("start"); err != nil {
		t.Skipf("Postfix did not start (%v): %s\n%s", err, out, pf.Log())
	}
	t.Cleanup(func() { pf.stop(t) })
	// What Postfix did explains most failures of a test that uses it.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Postfix's log:\n%s", pf.Log())
		}
	})
	for _, port := range []int{pf.SMTPPort, pf.SMTPSPort} {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		deadline := time.Now().Add(postfixWait)
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testkit: Postfix does not listen on %s: %v\n%s", addr, err, pf.Log())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return pf
}

// addSASLUsers writes the accounts into the sasldb that smtpd reads.
func (pf *Postfix) addSASLUsers(t testing.TB, saslpasswd string, users map[string]string, uid, gid int) {
	t.Helper()
	db := filepath.Join(pf.Dir, "sasldb2")
	for _, name := range slices.Sorted(maps.Keys(users)) {
		// The user name is given as user@realm, which is how the client
		// then logs in.
		local, realm, _ := strings.Cut(name, "@")
		cmd := exec.Command(saslpasswd, "-p", "-f", db, "-c", "-u", realm, local)
		cmd.Stdin = strings.NewReader(users[name])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("saslpasswd2 failed (%v): %s", err, out)
		}
	}
	// smtpd runs as the postfix user and reads the database itself.
	if err := os.Chown(db, uid, gid); err != nil {
		t.Fatalf("testkit: sasldb owner: %v", err)
	}
}

// stop stops this instance and waits for its master to exit: postfix stop
// returns before the master is gone, and removing the directory must not
// race its last writes.
func (pf *Postfix) stop(t testing.TB) {
	if out, err := pf.postfix("stop"); err != nil {
		t.Errorf("testkit: stopping Postfix: %v: %s", err, out)
	}
	pidFile := filepath.Join(pf.Dir, "queue", "pid", "master.pid")
	for deadline := time.Now().Add(postfixWait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid <= 0 {
			return
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
	}
}

// postfix runs the postfix command on this instance's configuration only.
func (pf *Postfix) postfix(action string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), postfixWait)
	defer cancel()
	return exec.CommandContext(ctx, postfixBin, "-c", pf.Dir, action).CombinedOutput()
}

// SMTPAddr is the STARTTLS listener's host:port.
func (pf *Postfix) SMTPAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(pf.SMTPPort))
}

// Log is Postfix's log so far.
func (pf *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(pf.Dir, "maillog"))
	return string(b)
}

// WaitLog waits until Postfix's log has a line containing every one of
// parts, and returns it; it fails t, showing the log, when none comes.
func (pf *Postfix) WaitLog(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(postfixWait)
	for {
		for l := range strings.SplitSeq(pf.Log(), "\n") {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(l, p)
			}
			if found {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postfix never logged a line with %q; its log:\n%s", parts, pf.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mainCF is the defaults with opts.MainCF applied: a Postfix for one test,
// loopback only, that discards what no transport entry sends elsewhere and
// retries deferred mail within seconds.
func (pf *Postfix) mainCF(opts PostfixOptions) string {
	params := [][2]string{
		{"compatibility_level", "3.6"},
		{"config_directory", pf.Dir},
		{"queue_directory", pf.Dir + "/queue"},
		{"data_directory", pf.Dir + "/data"},
		{"meta_directory", "/etc/postfix"},
		{"command_directory", "/usr/sbin"},
		{"daemon_directory", "/usr/lib/postfix/sbin"},
		{"shlib_directory", "/usr/lib/postfix"},
		{"mail_owner", "postfix"},
		{"setgid_group", "postdrop"},
		{"myhostname", pf.Hostname},
		{"mydomain", pf.Hostname},
		{"myorigin", pf.Hostname},
		{"mydestination", ""},
		{"mynetworks", "127.0.0.0/8"},
		{"inet_interfaces", "127.0.0.1"},
		{"inet_protocols", "ipv4"},
		{"alias_maps", ""},
		{"alias_database", ""},
		{"local_recipient_maps", ""},
		{"relayhost", ""},
		{"default_transport", "discard:mailbus test"},
		{"local_transport", "discard:mailbus test"},
		{"relay_transport", "discard:mailbus test"},
		// texthash needs no postmap run.
		{"transport_maps", "texthash:" + pf.Dir + "/transport"},
		{"maillog_file", pf.Dir + "/maillog"},
		// Postfix writes its log only under these prefixes (default /var,
		// /dev/stdout).
		{"maillog_file_prefixes", pf.Dir},
		// A test waits for deferred mail in seconds, not the default minutes.
		{"queue_run_delay", "1s"},
		{"minimal_backoff_time", "1s"},
		{"maximal_backoff_time", "2s"},
		{"smtpd_banner", "$myhostname ESMTP mailbus test Postfix"},
		{"smtpd_error_sleep_time", "0"},
		{"smtpd_tls_cert_file", pf.Dir + "/cert.pem"},
		{"smtpd_tls_key_file", pf.Dir + "/key.pem"},
		{"smtpd_tls_security_level", "may"},
		{"smtpd_tls_loglevel", "1"},
		{"smtpd_tls_received_header", "yes"},
		// The test servers Postfix delivers to have no certificate it
		// could verify.
		{"smtp_tls_security_level", "none"},
	}
	if len(opts.SASLUsers) > 0 {
		params = append(params, [][2]string{
			{"smtpd_tls_auth_only", "yes"},
			{"smtpd_sasl_auth_enable", "yes"},
			{"smtpd_sasl_type", "cyrus"},
			{"smtpd_sasl_path", "smtpd"},
			{"cyrus_sasl_config_path", pf.Dir + "/sasl"},
			{"smtpd_sasl_security_options", "noanonymous"},
			{"smtpd_relay_restrictions", "permit_sasl_authenticated, reject"},
		}...)
	} else {
		params = append(params, [2]string{"smtpd_relay_restrictions", "permit_mynetworks, reject"})
	}
	extra := maps.Clone(opts.MainCF)
	for i, p := range params {
		if v, ok := extra[p[0]]; ok {
			params[i][1] = v
			delete(extra, p[0])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		params = append(params, [2]string{k, extra[k]})
	}
	var b strings.Builder
	b.WriteString("# A private Postfix for one test (mailbus testkit).\n")
	for _, p := range params {
		fmt.Fprintf(&b, "%s = %s\n", p[0], p[1])
	}
	return b.String()
}

// masterCF runs every daemon without chroot: a chroot would need copies of
// the SASL database and libraries.
func (pf *Postfix) masterCF() string {
	return fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
127.0.0.1:%d inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`, pf.SMTPPort, pf.SMTPSPort)
}

// transportTable writes entries in transport(5) form, sorted so that the
// file is the same for the same options.
func transportTable(entries map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(entries)) {
		fmt.Fprintf(&b, "%s %s\n", k, entries[k])
	}
	return b.String()
}
