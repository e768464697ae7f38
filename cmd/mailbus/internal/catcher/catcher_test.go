package catcher

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/smtp"
	"strings"
	"testing"
)

func TestCatcher_showsReceivedMessageWithHeadersOnItsPage(t *testing.T) {
	c, err := New(Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	msg := "From: a@acme.example\r\nTo: b@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nDKIM-Signature: v=1; d=acme.example\r\n\r\nhello\r\n"
	if err := smtp.SendMail(c.SMTPAddr(), nil, "a@acme.example", []string{"b@example.net"}, []byte(msg)); err != nil {
		t.Fatalf("send to catcher: %v", err)
	}
	resp, err := http.Get("http://" + c.HTTPAddr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"Grüße", "DKIM-Signature: v=1; d=acme.example", "b@example.net"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("page lacks %q", want)
		}
	}
	resp, err = http.Get("http://" + c.HTTPAddr() + "/messages/1.eml")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), "hello") {
		t.Errorf("raw message lacks body: %q", raw)
	}
}
