package testkit

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// KcatProduce publishes JSON records with kcat, a Kafka client independent
// of mailbus (librdkafka), so a test proves that any producer can feed
// mailbus. Each record gets the header content-type: application/json.
func KcatProduce(t testing.TB, brokers []string, topic, key string, records ...string) {
	t.Helper()
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is not installed: apt-get install kcat (CI installs it)")
	}
	for _, rec := range records {
		// kcat takes one record per line.
		var compact bytes.Buffer
		if json.Compact(&compact, []byte(rec)) == nil {
			rec = compact.String()
		}
		cmd := exec.Command(kcat, "-P", "-b", strings.Join(brokers, ","), "-t", topic, "-k", key,
			"-H", "content-type=application/json")
		cmd.Stdin = strings.NewReader(rec)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcat produce: %v: %s", err, out)
		}
	}
}

//go:embed dkimpy_verify.py
var dkimpyScript []byte

// DKIMResult is dkimpy's verdict on one DKIM-Signature.
type DKIMResult struct {
	Domain    string `json:"d"`
	Selector  string `json:"s"`
	Algorithm string `json:"a"`
	Headers   string `json:"h"`
	OK        bool   `json:"ok"`
	Error     string `json:"error"`
}

// VerifyDKIMWithDkimpy checks every DKIM-Signature of msg with dkimpy
// (Debian python3-dkim), a DKIM implementation independent of the
// go-msgauth that mailbus signs with. records maps DNS names
// ("sel._domainkey.example.com") to TXT values, as the config service
// publishes them; no DNS is used.
func VerifyDKIMWithDkimpy(t testing.TB, msg []byte, records map[string]string) []DKIMResult {
	t.Helper()
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import dkim").CombinedOutput(); err != nil {
		t.Fatalf("dkimpy is not installed (%v: %s): apt-get install python3-dkim (CI installs it)", err, out)
	}
	dir := t.TempDir()
	script, recFile := filepath.Join(dir, "dkimpy_verify.py"), filepath.Join(dir, "records.json")
	b, _ := json.Marshal(records)
	if err := os.WriteFile(recFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, dkimpyScript, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, script, recFile)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy: %v: %s", err, stderr.String())
	}
	var res []DKIMResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("dkimpy output %q: %v", out, err)
	}
	return res
}
