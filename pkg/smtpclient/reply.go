package smtpclient

import (
	"bytes"
	"errors"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailbus/mailbus/pkg/mail"
)

// Reply is what a server said: the basic code, the RFC 3463 enhanced code
// when there was one, and the words, with "\n" between the lines of a
// multi-line reply.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// String is the reply as the server wrote it, e.g. "250 2.0.0 Ok: queued as
// ABC"; empty for the zero Reply.
func (r Reply) String() string {
	if r.Code == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(strconv.Itoa(r.Code))
	if r.Enhanced != "" {
		b.WriteByte(' ')
		b.WriteString(r.Enhanced)
	}
	if r.Text != "" {
		b.WriteByte(' ')
		b.WriteString(r.Text)
	}
	return b.String()
}

func (r Reply) smtpError(stage string) *mail.SMTPError {
	return &mail.SMTPError{Code: r.Code, Enhanced: r.Enhanced, Message: r.Text, Stage: stage}
}

// parseReply splits the text after the code ("2.0.0 Ok\nsecond line") into
// enhanced code and words; the enhanced code that RFC 2034 repeats on every
// line is removed from the later lines.
func parseReply(code int, text string) Reply {
	r := Reply{Code: code, Text: text}
	first, rest, _ := strings.Cut(text, " ")
	if isEnhanced(first, code) {
		r.Enhanced = first
		r.Text = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return r
}

// isEnhanced reports whether s is an enhanced status whose class agrees
// with the basic code ("5.1.1" for 550).
func isEnhanced(s string, code int) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || parts[0][0] != byte('0'+code/100) {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return false
		}
		if _, err := strconv.Atoi(p); err != nil {
			return false
		}
	}
	return true
}

// replyFromError turns go-smtp's *smtp.SMTPError into a Reply; ok is false
// for any other error (network, TLS, local).
func replyFromError(err error) (Reply, bool) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return Reply{}, false
	}
	r := Reply{Code: se.Code, Text: se.Message}
	if e := se.EnhancedCode; e[0] > 0 {
		r.Enhanced = strconv.Itoa(e[0]) + "." + strconv.Itoa(e[1]) + "." + strconv.Itoa(e[2])
	}
	return r, true
}

// recorder captures the server's replies from go-smtp's debug stream.
// go-smtp returns nothing for a successful command, but the sender logs the
// server's words for every recipient (a 250 often carries the relay's queue
// id), and a relay test shows them for every step. The stream mixes what
// the client wrote and what it read, in order; because go-smtp never
// pipelines (pipelined transactions bypass it), a command's reply is the last complete reply block in the
// stream when the command returns. Reply lines start with three digits and
// a space or hyphen, which no command, base64 AUTH line or dot terminator
// does; message lines that happen to look like replies come before the
// final dot and so before the real reply.
type recorder struct {
	partial []byte
	block   []string
	last    []string
}

// maxRecordedLine bounds the memory a very long message line can take.
const maxRecordedLine = 2048

func (r *recorder) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if room := maxRecordedLine - len(r.partial); room > 0 {
				r.partial = append(r.partial, p[:min(room, len(p))]...)
			}
			break
		}
		if room := maxRecordedLine - len(r.partial); room > 0 {
			r.partial = append(r.partial, p[:min(room, i)]...)
		}
		r.line(strings.TrimRight(string(r.partial), "\r"))
		r.partial = r.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (r *recorder) line(l string) {
	if len(l) < 3 || !isDigits(l[:3]) || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
		r.block = r.block[:0]
		return
	}
	r.block = append(r.block, l)
	if len(l) == 3 || l[3] == ' ' {
		r.last = append(r.last[:0], r.block...)
		r.block = r.block[:0]
	}
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// reset forgets the last reply; called before each command.
func (r *recorder) reset() {
	r.last = r.last[:0]
	r.block = r.block[:0]
}

// take returns the last complete reply since reset.
func (r *recorder) take() (Reply, bool) {
	if len(r.last) == 0 {
		return Reply{}, false
	}
	code, _ := strconv.Atoi(r.last[0][:3])
	texts := make([]string, len(r.last))
	for i, l := range r.last {
		if len(l) > 4 {
			texts[i] = l[4:]
		}
	}
	return parseReply(code, strings.Join(texts, "\n")), true
}
