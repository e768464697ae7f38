package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/mailbus/mailbus/pkg/auth"
)

// The test binary is also mailbus: run with MAILBUS_TEST_MAIN=1 it runs
// main, so the tests start the real command without building it apart.
func TestMain(m *testing.M) {
	if os.Getenv("MAILBUS_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mailbus returns the command `mailbus args...` run in dir with the user's
// configuration directory set to xdg.
func mailbus(dir, xdg string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MAILBUS_TEST_MAIN=1", "XDG_CONFIG_HOME="+xdg,
		"MAILBUS_DATA=", "MAILBUS_API=", "MAILBUS_TOKEN=", "KAFKA_BROKERS=", "REDIS_ADDR=")
	return cmd
}

// What a newcomer does with `make run`: start mailbus dev, get the DKIM
// records to publish with the CLI from another directory, call the API
// through reflection, and stop it with Ctrl-C: the exit status is 0 and
// the stop logs no warning about the configuration stream.
func TestDev_aNewcomersSessionFromReadyToCtrlC(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work, elsewhere, xdg := t.TempDir(), t.TempDir(), t.TempDir()
	dev := mailbus(work, xdg, "dev", "--data", "./.mailbus", "--config", filepath.Join(repo, "deploy/mailbus.example.yaml"),
		"--kafka-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--smtp-addr", "127.0.0.1:0", "--web-addr", "127.0.0.1:0",
		"--bounce-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--partitions", "2")
	var stderr bytes.Buffer
	dev.Stderr = &stderr
	stdout, err := dev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- dev.Wait()
	}()
	t.Cleanup(func() {
		if dev.ProcessState == nil {
			_ = dev.Process.Kill()
		}
	})
	var ready string
	deadline := time.After(3 * time.Minute)
	for ready == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("mailbus dev ended before ready:\n%s", stderr.String())
			}
			if strings.HasPrefix(l, "mailbus dev ready ") {
				ready = l
			}
		case <-deadline:
			t.Fatalf("mailbus dev not ready after 3 minutes:\n%s", stderr.String())
		}
	}
	grpcAddr := regexp.MustCompile(` grpc=(\S+)`).FindStringSubmatch(ready)[1]

	// The CLI, run elsewhere with no flags, finds the API and the token.
	out, err := mailbus(elsewhere, xdg, "domains").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `mb2026r._domainkey.acme.example. IN TXT "v=DKIM1; k=rsa; p=`) ||
		!strings.Contains(string(out), `mb2026e._domainkey.acme.example. IN TXT "v=DKIM1; k=ed25519; p=`) {
		t.Errorf("mailbus domains from another directory: %v\n%s", err, out)
	}

	// Reflection lists the services.
	tok, err := os.ReadFile(filepath.Join(work, ".mailbus", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.StaticToken{Token: strings.TrimSpace(string(tok)), AllowInsecure: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "mailbus.v1.ConfigService") {
		t.Errorf("reflection lists %v, want mailbus.v1.ConfigService among them", names)
	}
	_ = rs.CloseSend()

	// Ctrl-C.
	if err := dev.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines {
		}
	}()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Errorf("mailbus dev after SIGINT: %v, want exit status 0\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("mailbus dev still running 2 minutes after SIGINT")
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "config") || strings.Contains(l, "level=ERROR") {
			t.Errorf("stopping logged: %s", l)
		}
	}
}
