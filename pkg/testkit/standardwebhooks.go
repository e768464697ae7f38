package testkit

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

//go:embed standardwebhooks_verify.py
var standardWebhooksScript []byte

// ReceivedWebhook is a webhook as a receiver got it, with the secrets that
// must each verify it.
type ReceivedWebhook struct {
	ID        string   `json:"id"`
	Timestamp string   `json:"timestamp"`
	Signature string   `json:"signature"`
	Body      string   `json:"body"`
	Secrets   []string `json:"secrets"`
	// ReceivedAt is when the receiver got it (Unix seconds): the library
	// checks the timestamp against this rather than the time of checking.
	// Zero means now.
	ReceivedAt float64 `json:"received_at,omitempty"`
}

// WebhookVerdict is what the Standard Webhooks reference library made of a
// set of webhooks: how many (webhook, secret) pairs it checked and
// verified, and the first failures.
type WebhookVerdict struct {
	Checked  int      `json:"checked"`
	Verified int      `json:"verified"`
	Failures []string `json:"failures"`
}

// PythonPath is where .ci/run installs the Python packages the tests use
// (pip install --target), added to PYTHONPATH for them.
func PythonPath() string {
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "mailbus", "python")
}

// VerifyStandardWebhooks checks webhooks with the `standardwebhooks`
// package from PyPI (the specification's reference implementation, not
// the Go code that signed them), run by python3 with PythonPath on its
// PYTHONPATH. Install it once with
//
//	python3 -m pip install --target ~/.cache/mailbus/python standardwebhooks==1.1.0
//
// (.ci/run does). The library checks the timestamp too (5 minutes either
// way), as of ReceivedAt.
func VerifyStandardWebhooks(t testing.TB, hooks []ReceivedWebhook) WebhookVerdict {
	t.Helper()
	dir := t.TempDir()
	script, data := filepath.Join(dir, "verify.py"), filepath.Join(dir, "webhooks.jsonl")
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, h := range hooks {
		if err := enc.Encode(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(data, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, standardWebhooksScript, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", script, data)
	pp := PythonPath()
	if old := os.Getenv("PYTHONPATH"); old != "" {
		pp = old + string(filepath.ListSeparator) + pp
	}
	cmd.Env = append(os.Environ(), "PYTHONPATH="+pp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
			t.Fatalf("the standardwebhooks Python package is not installed: python3 -m pip install --target %s standardwebhooks==1.1.0 (.ci/run does): %s", PythonPath(), stderr.String())
		}
		t.Fatalf("standardwebhooks verifier: %v: %s", err, stderr.String())
	}
	var v WebhookVerdict
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("standardwebhooks verifier output %q: %v", out, err)
	}
	return v
}
