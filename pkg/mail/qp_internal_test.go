package mail

import (
	"bytes"
	"io"
	"mime/quotedprintable"
	"strings"
	"testing"
)

func TestWriteQuotedPrintable_decodesToTheTextWithCRLF(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "hello", "hello=\r\n"},
		{"equals", "a=b", "a=3Db=\r\n"},
		{"utf-8", "é", "=C3=A9=\r\n"},
		{"LF to CRLF", "a\nb\n", "a\r\nb\r\n"},
		{"CRLF kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"lone CR encoded", "a\rb\n", "a=0Db\r\n"},
		{"trailing space before break", "a \nb", "a=20\r\nb=\r\n"},
		{"trailing tab at end", "a\t", "a=09=\r\n"},
		{"inner spaces kept", "a  b\n", "a  b\r\n"},
		{"soft break at 76", strings.Repeat("x", 80) + "\n", strings.Repeat("x", 75) + "=\r\n" + "xxxxx\r\n"},
		{"no split inside escape", strings.Repeat("x", 74) + "é\n", strings.Repeat("x", 74) + "=\r\n=C3=A9\r\n"},
		{"dot line", ".\n", ".\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeQuotedPrintable(&b, tt.in)
			if b.String() != tt.want {
				t.Fatalf("encoded = %q, want %q", b.String(), tt.want)
			}
			checkQP(t, tt.in, b.Bytes())
		})
	}
}

func checkQP(t *testing.T, in string, enc []byte) {
	t.Helper()
	for _, line := range bytes.Split(enc, []byte("\r\n")) {
		if len(line) > 76 {
			t.Fatalf("line of %d characters: %q", len(line), line)
		}
		if bytes.HasSuffix(line, []byte(" ")) || bytes.HasSuffix(line, []byte("\t")) {
			t.Fatalf("line ends with whitespace: %q", line)
		}
		for _, c := range line {
			if c >= 0x80 || (c < 0x20 && c != '\t') {
				t.Fatalf("unencoded octet %#x in %q", c, line)
			}
		}
	}
	dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(enc)))
	if err != nil {
		t.Fatalf("mime/quotedprintable cannot read %q: %v", enc, err)
	}
	want := strings.ReplaceAll(strings.ReplaceAll(in, "\r\n", "\n"), "\n", "\r\n")
	// A lone CR stays a CR: only "\n" and "\r\n" are line breaks.
	if string(dec) != want {
		t.Fatalf("decoded %q, want %q (encoded %q)", dec, want, enc)
	}
}

func FuzzWriteQuotedPrintable(f *testing.F) {
	for _, s := range []string{"hello", "a \nb", "é=\r\n\t", strings.Repeat("ab ", 60), "\r\r\n \n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b bytes.Buffer
		writeQuotedPrintable(&b, s)
		checkQP(t, s, b.Bytes())
	})
}
