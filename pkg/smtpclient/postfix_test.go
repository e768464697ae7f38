package smtpclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailbus/mailbus/pkg/testkit"
)

// The tests in this file check the client against Postfix, a production
// MTA, rather than only against the project's own test server: TLS, SASL
// through Cyrus and Postfix's own replies. They need
//
//	apt-get install postfix sasl2-bin libsasl2-modules
//
// and root (Postfix's master runs as root and drops to the postfix user);
// without either they skip, saying so.

const (
	postfixBin      = "/usr/sbin/postfix"
	postfixInstall  = "apt-get install postfix sasl2-bin libsasl2-modules"
	postfixDomain   = "postfix.test"
	postfixUser     = "mailer@" + postfixDomain
	postfixPassword = "pf-s3cret-7d41"
)

// postfixServer is a private Postfix instance on loopback ports, with its
// own configuration, queue and data directories, that discards all mail.
type postfixServer struct {
	dir string
	// smtpPort offers STARTTLS; smtpsPort is implicit TLS (port 465 style).
	smtpPort, smtpsPort int
	cert                *testkit.Cert
}

// startPostfix configures and starts a Postfix instance for this test and
// stops it (only it) when the test ends. It installs nothing: when Postfix
// or saslpasswd2 is missing, or Postfix cannot start (not root), the test
// is skipped with a message saying what is needed.
func startPostfix(t *testing.T) *postfixServer {
	t.Helper()
	if _, err := os.Stat(postfixBin); err != nil {
		t.Skipf("Postfix is not installed (%v); to run the Postfix tests: %s", err, postfixInstall)
	}
	saslpasswd, err := exec.LookPath("saslpasswd2")
	if err != nil {
		t.Skipf("saslpasswd2 is not installed; to run the Postfix tests: %s", postfixInstall)
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
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs after the stop below
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pf := &postfixServer{dir: dir, cert: testkit.NewCert(t), smtpPort: freePort(t), smtpsPort: freePort(t)}
	for _, d := range []string{"queue", "data", "sasl"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("cert.pem", pf.cert.CertPEM, 0o644)
	write("key.pem", pf.cert.KeyPEM, 0o600)
	write("main.cf", []byte(pf.mainCF()), 0o644)
	write("master.cf", []byte(pf.masterCF()), 0o644)
	write("sasl/smtpd.conf", []byte(fmt.Sprintf(
		"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: %s\n",
		filepath.Join(dir, "sasldb2"))), 0o644)

	// The user name is given as user@realm, which is how the client then
	// logs in.
	local, realm, _ := strings.Cut(postfixUser, "@")
	cmd := exec.Command(saslpasswd, "-p", "-f", filepath.Join(dir, "sasldb2"), "-c", "-u", realm, local)
	cmd.Stdin = strings.NewReader(postfixPassword)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("saslpasswd2 failed (%v): %s", err, out)
	}
	// smtpd runs as the postfix user and reads the database itself.
	if err := os.Chown(filepath.Join(dir, "sasldb2"), uid, gid); err != nil {
		t.Fatal(err)
	}

	if out, err := pf.postfix("start"); err != nil {
		t.Skipf("Postfix did not start (%v): %s\n%s", err, out, pf.maillog())
	}
	t.Cleanup(func() {
		if out, err := pf.postfix("stop"); err != nil {
			t.Errorf("stopping Postfix: %v: %s", err, out)
		}
		// postfix stop returns before the master is gone; wait for it so
		// that removing the directory does not race its last writes.
		pidFile := filepath.Join(dir, "queue", "pid", "master.pid")
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			b, err := os.ReadFile(pidFile)
			if err != nil {
				break
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if pid <= 0 || !processAlive(pid) {
				break
			}
		}
	})
	for _, port := range []int{pf.smtpPort, pf.smtpsPort} {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		deadline := time.Now().Add(15 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Postfix does not listen on %s: %v\n%s", addr, err, pf.maillog())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return pf
}

func (pf *postfixServer) postfix(action string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, postfixBin, "-c", pf.dir, action).CombinedOutput()
}

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (pf *postfixServer) mainCF() string {
	return fmt.Sprintf(`# A private Postfix for one test: loopback only, mail discarded.
compatibility_level = 3.6
config_directory = %[1]s
queue_directory = %[1]s/queue
data_directory = %[1]s/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = %[2]s
mydomain = %[2]s
myorigin = %[2]s
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
default_transport = discard:mailbus test
local_transport = discard:mailbus test
relay_transport = discard:mailbus test
maillog_file = %[1]s/maillog
# Postfix writes its log only under these prefixes (default /var, /dev/stdout).
maillog_file_prefixes = %[1]s
smtpd_banner = $myhostname ESMTP mailbus test Postfix
smtpd_error_sleep_time = 0
smtpd_tls_cert_file = %[1]s/cert.pem
smtpd_tls_key_file = %[1]s/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = %[1]s/sasl
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_sasl_authenticated, reject
`, pf.dir, postfixDomain)
}

func (pf *postfixServer) masterCF() string {
	// No chroot anywhere: the chroot would need copies of the SASL
	// database and libraries.
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
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`, pf.smtpPort, pf.smtpsPort)
}

func (pf *postfixServer) maillog() string {
	b, _ := os.ReadFile(filepath.Join(pf.dir, "maillog"))
	return string(b)
}

// waitLog waits until Postfix's log has a line containing every one of
// parts, and returns it.
func (pf *postfixServer) waitLog(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range strings.Split(pf.maillog(), "\n") {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(l, p)
			}
			if found {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Postfix never logged a line with %q; its log:\n%s", parts, pf.maillog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (pf *postfixServer) relay(sec Security, mech Mechanism, password string) Relay {
	port := pf.smtpPort
	if sec == SecurityTLS {
		port = pf.smtpsPort
	}
	return Relay{Host: "127.0.0.1", Port: port, Security: sec,
		Auth: Auth{Mechanism: mech, Username: postfixUser, Password: password}}
}

func TestPool_deliversThroughPostfixWithTLSAndSASL(t *testing.T) {
	pf := startPostfix(t)
	p := newTestPool(t, PoolConfig{RootCAs: pf.cert.CAPool})
	tests := []struct {
		name string
		sec  Security
		mech Mechanism
	}{
		{"STARTTLS with AUTH PLAIN", SecurityStartTLS, MechanismPlain},
		{"STARTTLS with AUTH LOGIN", SecurityStartTLS, MechanismLogin},
		{"implicit TLS with AUTH PLAIN", SecurityTLS, MechanismPlain},
		{"implicit TLS with AUTH LOGIN", SecurityTLS, MechanismLogin},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			to := fmt.Sprintf("rcpt%d@example.org", i)
			res, err := p.Send(context.Background(), pf.relay(tt.sec, tt.mech, postfixPassword), testMsg(to))
			if err != nil {
				t.Fatalf("Send: %v\nPostfix log:\n%s", err, pf.maillog())
			}
			if !res.TLS || res.Recipients[0].Err != nil || res.Data.Code != 250 || !strings.Contains(res.Data.Text, "queued as") {
				t.Fatalf("result = %+v", res)
			}
			// Postfix's own log confirms what the client did: the TLS
			// handshake, the mechanism and the user, then our recipient.
			queueID := strings.TrimSpace(res.Data.Text[strings.LastIndex(res.Data.Text, " ")+1:])
			line := pf.waitLog(t, queueID+": client=localhost[127.0.0.1]")
			if want := "sasl_method=" + string(tt.mech) + ", sasl_username=" + postfixUser; !strings.Contains(line, want) {
				t.Errorf("Postfix logged %q, want it to contain %q", line, want)
			}
			// The same smtpd process established TLS.
			smtpd, _, _ := strings.Cut(line[strings.Index(line, "postfix/smtpd["):], " ")
			pf.waitLog(t, smtpd, "TLS connection established from localhost[127.0.0.1]: TLSv1.")
			pf.waitLog(t, queueID+": to=<"+to+">", "status=sent")
		})
	}
}

func TestPool_reportsPostfixsWordsForAWrongPassword(t *testing.T) {
	pf := startPostfix(t)
	p := newTestPool(t, PoolConfig{RootCAs: pf.cert.CAPool})
	for _, mech := range []Mechanism{MechanismPlain, MechanismLogin} {
		t.Run(string(mech), func(t *testing.T) {
			_, err := p.Send(context.Background(), pf.relay(SecurityStartTLS, mech, "wrong"), testMsg("x@example.org"))
			var re *RelayError
			if !errors.As(err, &re) {
				t.Fatalf("Send = %v, want a RelayError", err)
			}
			if re.Err.Code != 535 || re.Err.Enhanced != "5.7.8" || re.Err.Stage != "auth" ||
				re.Err.Message != "Error: authentication failed: authentication failure" {
				t.Errorf("error = %+v, want Postfix's 535 5.7.8 at auth", re.Err)
			}
			pf.waitLog(t, "SASL "+string(mech)+" authentication failed")
		})
	}
}

func TestTestRelay_showsPostfixsWords(t *testing.T) {
	pf := startPostfix(t)
	steps := TestRelay(context.Background(), pf.relay(SecurityStartTLS, MechanismPlain, postfixPassword), "someone@example.org",
		TestOptions{RootCAs: pf.cert.CAPool, HeloName: "client.test"})
	var b bytes.Buffer
	for _, s := range steps {
		fmt.Fprintf(&b, "%s ok=%v %s\n", s.Name, s.OK, s.Detail)
		if !s.OK {
			t.Errorf("step %s failed", s.Name)
		}
	}
	for _, want := range []string{"greeting ok=true 220 postfix.test ESMTP mailbus test Postfix", "auth ok=true 235 2.7.0 Authentication successful", "quit ok=true 221 2.0.0 Bye"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("steps lack %q:\n%s", want, b.String())
		}
	}
}
