package mtasts

import (
	"strings"
	"testing"
	"time"
)

func TestParse_readsRFC8461PoliciesAndRefusesBrokenOnes(t *testing.T) {
	p, err := Parse([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net.\r\nmax_age: 604800\r\nmode: none\r\nextension: ignored\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || p.MaxAge != 7*24*time.Hour || strings.Join(p.MX, ",") != "mail.example.com,*.example.net" {
		t.Errorf("parsed %+v; want enforce (the first mode line), two mx, a week", p)
	}
	if p, err := Parse([]byte("version: STSv1\nmode: none\nmax_age: 0\n")); err != nil || p.Mode != ModeNone {
		t.Errorf("a none policy without mx: %+v, %v", p, err)
	}
	for name, body := range map[string]string{
		"no version":       "mode: enforce\nmx: a.example\nmax_age: 1\n",
		"other version":    "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"unknown mode":     "version: STSv1\nmode: report\nmx: a.example\nmax_age: 1\n",
		"no max_age":       "version: STSv1\nmode: enforce\nmx: a.example\n",
		"max_age too long": "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
		"max_age negative": "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
		"enforce, no mx":   "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"an HTML page":     "<html><body>Not found</body></html>",
	} {
		if p, err := Parse([]byte(body)); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, p)
		}
	}
}

func TestAllows_wildcardCoversExactlyOneLabel(t *testing.T) {
	p := &Policy{MX: []string{"mail.example.com", "*.mx.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com":      true,
		"MAIL.example.com.":     true,
		"other.example.com":     false,
		"a.mx.example.net":      true,
		"mx.example.net":        false,
		"a.b.mx.example.net":    false,
		".mx.example.net":       false,
		"a.mx.example.net.evil": false,
	} {
		if got := p.Allows(host); got != want {
			t.Errorf("Allows(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestRecordID_takesTheOneSTSv1Record(t *testing.T) {
	for _, tt := range []struct {
		txts    []string
		id      string
		invalid bool
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", false},
		{[]string{"v=spf1 -all", "v=STSv1;id=abc"}, "abc", false},
		{nil, "", false},
		{[]string{"v=spf1 -all"}, "", false},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, "", true},
		{[]string{"v=STSv1;"}, "", true},
		{[]string{"v=STSv1; id=not-alnum"}, "", true},
		{[]string{"v=STSv1; id=" + strings.Repeat("a", 33)}, "", true},
	} {
		id, err := recordID(tt.txts)
		if id != tt.id || (err != nil) != tt.invalid {
			t.Errorf("recordID(%q) = %q, %v; want %q, invalid %v", tt.txts, id, err, tt.id, tt.invalid)
		}
	}
}
