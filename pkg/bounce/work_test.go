package bounce

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/mailbus/mailbus/pkg/testkit/allocs"
)

// Parse reads mail from the internet on the bounce listener's path, so its
// work must be linear in the input: a crafted bounce must not stall the
// listener. The measure of work here is the bytes Parse allocates, which
// is deterministic where time is not (the tests run on busy machines), and
// which every super-linear path found so far showed: they copied text
// that grew with the input once per line or per recipient.

// maxWork is the most Parse may allocate for an input of n bytes: a fixed
// part for the tables and maps every message needs, and a part linear in n
// several times what any sample of the corpus or adversarial input below
// needs (at most about 130 bytes per input byte).
func maxWork(n int) uint64 { return 8<<20 + 512*uint64(n) }

// allocated is allocs.Bytes under the name these tests use.
func allocated(fn func()) uint64 { return allocs.Bytes(fn) }

// adversarial builds an input of about n bytes that drove one of the
// parser's paths to the square of its size before that path was bounded.
func adversarial(kind string, n int) []byte {
	var b strings.Builder
	switch kind {
	case "folded header":
		// splitHeader appended every continuation line to the field.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: Undelivered\nX-Long: a\n")
		for b.Len() < n {
			b.WriteString(" bb\n")
		}
		b.WriteString("\nbody\n")
	case "recipients without text":
		// readText gave each recipient the error lines of the whole
		// report, and the classifier read them once per recipient.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\n\n")
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, "<u%d@d%d.example>\n", i, i)
		}
		b.WriteString("550 5.1.1 user unknown\n")
	case "one recipient repeated":
		// textSections merged every repeated section into a growing text.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n")
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, "<u@example.org>:\nSorry, error %d here. (#5.1.1)\n\n", i)
		}
	case "received fields and recipients":
		// finish collected every Received field once per recipient.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\n")
		for b.Len() < n/2 {
			b.WriteString("Received: from a.example by b.example\n")
		}
		b.WriteString("\n")
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, "<u%d@example.org>:\n550 no\n\n", i)
		}
	case "unclosed script tags":
		// The tag-stripping regular expression scanned to the end of the
		// text at every <script> without a closing tag.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nContent-Type: text/html\n\n")
		for b.Len() < n {
			b.WriteString("<p><script>a@b.example")
		}
	case "report and status for many recipients":
		// enrichFromText looked for each recipient's section among all.
		b.WriteString("From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\n")
		k := n / 200
		for i := range k {
			fmt.Fprintf(&b, "<u%d@example.org>: host x said: 550 no such user\n\n", i)
		}
		b.WriteString("--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.example\n\n")
		for i := range k {
			fmt.Fprintf(&b, "Final-Recipient: rfc822; u%d@example.org\nAction: failed\nStatus: 5.1.1\n\n", i)
		}
		b.WriteString("--B--\n")
	case "transcript for many recipients":
		// A Sendmail reader scanned the whole transcript once per recipient.
		b.WriteString("From: Mail Delivery Subsystem <MAILER-DAEMON@x.example>\nSubject: Warning: could not send message for past 4 hours\n\n")
		for i := 0; b.Len() < n/2; i++ {
			fmt.Fprintf(&b, "<u%d@example.org>... Deferred\n", i)
		}
		b.WriteString("   ----- Transcript of session follows -----\n")
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, ">>> RCPT To:<u%d@example.org>\n<<< 451 4.3.0 busy %d\n", i, i)
		}
	case "deep nesting":
		for d := range 20 {
			fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\n\n--b%d\n", d, d)
		}
		for b.Len() < n {
			b.WriteString("x\n")
		}
	default:
		panic("unknown kind " + kind)
	}
	return []byte(b.String())
}

var adversarialKinds = []string{"folded header", "recipients without text", "one recipient repeated",
	"received fields and recipients", "unclosed script tags", "report and status for many recipients",
	"transcript for many recipients", "deep nesting"}

func TestParse_workIsLinearInTheInput(t *testing.T) {
	for _, kind := range adversarialKinds {
		t.Run(kind, func(t *testing.T) {
			raw := adversarial(kind, 128<<10)
			var err error
			work := allocated(func() { _, err = Parse(raw) })
			if err != nil {
				t.Fatal(err)
			}
			if max := maxWork(len(raw)); work > max {
				t.Errorf("Parse of %d bytes allocated %d bytes (%d per input byte), over the linear bound %d",
					len(raw), work, work/uint64(len(raw)), max)
			}
		})
	}
}

// The regular expression stripTags replaces, kept as its specification.
var reTags = regexp.MustCompile(`(?s)<(script|style)[^>]*>.*?</(script|style)>|<[^>]*>`)

func TestStripTags_isTheRegularExpression(t *testing.T) {
	tests := []string{
		"", "plain", "<p>a</p>", "a<b", "a>b", "<<<>", "<script>x</script>y", "<style a=1>x</script>y</style>z",
		"<script>no close", "<scripts>x</style>", "<p><script>a<p>", "<br/>x<div>y", "<script>\n</script>", "<>",
		"x<script>a</script>b<script>c</script>d", "<script>a</scrip></script>", "< script>a</script>",
	}
	// And random strings over the characters that matter.
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "<>/scriptyle x\n"
	for range 20000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		tests = append(tests, string(b))
	}
	for _, s := range tests {
		if got, want := stripTags(s), reTags.ReplaceAllString(s, " "); got != want {
			t.Fatalf("stripTags(%q) = %q, want %q", s, got, want)
		}
	}
}
