package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mailbus/mailbus/pkg/bus"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func newMsg(contentType string, payload []byte) *message.Message {
	msg := message.NewMessage("test", payload)
	if contentType != "" {
		msg.Metadata.Set(bus.MetaContentType, contentType)
	}
	return msg
}

func TestDecode_picksFormatByContentTypeOrSniffs(t *testing.T) {
	want := &mailbusv1.Submission{
		TenantId: "t1",
		Kind:     mailbusv1.EmailKind_EMAIL_KIND_TRANSACTIONAL,
		From:     &mailbusv1.Address{Email: "a@acme.example"},
		Subject:  "hello",
	}
	pb, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		contentType string
		payload     []byte
	}{
		{"x-protobuf", "application/x-protobuf", pb},
		{"protobuf synonym", "application/protobuf", pb},
		{"json", "application/json", js},
		{"json with charset parameter", "application/json; charset=utf-8", js},
		{"sniffed json after whitespace", "", append([]byte(" \n\t"), js...)},
		{"sniffed protobuf", "", pb},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := &mailbusv1.Submission{}
			if err := bus.Decode(newMsg(tt.contentType, tt.payload), got); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("Decode = %v, want %v", got, want)
			}
		})
	}
}

func TestDecode_failsPermanentlySayingWhatWasWrong(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		payload     string
		wantErr     []string
	}{
		{
			name:        "unknown json field",
			contentType: "application/json",
			payload:     `{"tenantId":"t1","foo":1}`,
			wantErr:     []string{"decode mailbus.v1.Submission from application/json", `unknown field "foo"`},
		},
		{
			name:        "malformed json",
			contentType: "application/json",
			payload:     `{"tenantId": "t1",`,
			wantErr:     []string{"decode mailbus.v1.Submission from application/json"},
		},
		{
			name:    "sniffed json with unknown field",
			payload: `{"bar":true}`,
			wantErr: []string{"from application/json (sniffed", `unknown field "bar"`},
		},
		{
			name:        "garbage protobuf",
			contentType: "application/x-protobuf",
			payload:     "\xff\xff\xff\xff",
			wantErr:     []string{"decode mailbus.v1.Submission from application/x-protobuf"},
		},
		{
			name:        "unsupported content type",
			contentType: "text/plain",
			payload:     "hi",
			wantErr:     []string{`unsupported content-type "text/plain"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := bus.Decode(newMsg(tt.contentType, []byte(tt.payload)), &mailbusv1.Submission{})
			if err == nil {
				t.Fatal("Decode succeeded, want an error")
			}
			if !bus.IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = false, want true", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestEncode_writesProtobufWithRecordIDsAndFreshTraceContext(t *testing.T) {
	d := &mailbusv1.Delivery{TenantId: "t1", MessageId: "m1", DeliveryId: "d1", IdempotencyId: "i1"}
	msg, err := bus.Encode(d, message.Metadata{
		bus.MetaTenantID:   "stale",
		bus.MetaTracestate: "vendor=1", // without a traceparent it is dropped
		"x-custom":         "kept",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		bus.MetaContentType:   bus.ContentTypeProtobuf,
		bus.MetaTenantID:      "t1",
		bus.MetaMessageID:     "m1",
		bus.MetaDeliveryID:    "d1",
		bus.MetaIdempotencyID: "i1",
		"x-custom":            "kept",
	}
	for k, v := range want {
		if got := msg.Metadata.Get(k); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
	if msg.Metadata.Get(bus.MetaCorrelationID) == "" {
		t.Error("no correlation_id")
	}
	if tp := msg.Metadata.Get(bus.MetaTraceparent); !bus.ValidTraceparent(tp) {
		t.Errorf("traceparent %q is not valid", tp)
	}
	if ts := msg.Metadata.Get(bus.MetaTracestate); ts != "" {
		t.Errorf("tracestate %q kept without its traceparent", ts)
	}
	got := &mailbusv1.Delivery{}
	if err := proto.Unmarshal(msg.Payload, got); err != nil || !proto.Equal(got, d) {
		t.Errorf("payload = %v, %v; want %v", got, err, d)
	}
}

func TestEncode_keepsIncomingCorrelationAndTraceContext(t *testing.T) {
	in := newMsg(bus.ContentTypeProtobuf, nil)
	in.Metadata.Set(bus.MetaCorrelationID, "corr-1")
	in.Metadata.Set(bus.MetaTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	in.Metadata.Set(bus.MetaTracestate, "vendor=1")
	in.Metadata.Set(bus.MetaTenantID, "t1")
	in.Metadata.Set(bus.MetaMessageID, "m1")
	in.Metadata.Set(bus.MetaPoisonReason, "not propagated")

	out, err := bus.Encode(&mailbusv1.DeliveryEvent{EventId: "e1", DeliveryId: "d2"}, bus.MetaFrom(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		bus.MetaCorrelationID: "corr-1",
		bus.MetaTraceparent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		bus.MetaTracestate:    "vendor=1",
		bus.MetaTenantID:      "t1", // inherited: the event leaves it empty
		bus.MetaMessageID:     "m1",
		bus.MetaDeliveryID:    "d2", // from the record
		bus.MetaPoisonReason:  "",
	}
	for k, v := range want {
		if got := out.Metadata.Get(k); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
}

func TestValidTraceparent(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{bus.NewTraceparent(), true},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := bus.ValidTraceparent(tt.in); got != tt.want {
			t.Errorf("ValidTraceparent(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestPermanent_marksWrappedErrorsAndLeavesNil(t *testing.T) {
	base := errors.New("boom")
	p := bus.Permanent(base)
	if !bus.IsPermanent(p) || !bus.IsPermanent(bus.Permanent(p)) {
		t.Error("Permanent error is not permanent")
	}
	if !bus.IsPermanent(errors.Join(errors.New("other"), p)) {
		t.Error("wrapped permanent error is not permanent")
	}
	if !errors.Is(p, base) || p.Error() != "boom" {
		t.Errorf("Permanent(%v) = %v, lost its cause", base, p)
	}
	if bus.IsPermanent(base) {
		t.Error("plain error counts as permanent")
	}
	if bus.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
}

func TestHandle_rejectsRecordWithoutTenantAndFillsMetadata(t *testing.T) {
	var got *mailbusv1.Delivery
	h := bus.Handle(func(_ context.Context, _ *message.Message, d *mailbusv1.Delivery) error {
		got = d
		return nil
	})

	noTenant, _ := proto.Marshal(&mailbusv1.Delivery{DeliveryId: "d1"})
	err := h(newMsg(bus.ContentTypeProtobuf, noTenant))
	if !bus.IsPermanent(err) || !errors.Is(err, bus.ErrNoTenant) || !strings.Contains(err.Error(), "record has no tenant_id") {
		t.Errorf("handler error = %v, want permanent %q", err, bus.ErrNoTenant)
	}
	if got != nil {
		t.Error("handler ran for a record without tenant")
	}

	ok, _ := proto.Marshal(&mailbusv1.Delivery{TenantId: "t1", MessageId: "m1", DeliveryId: "d1"})
	msg := newMsg(bus.ContentTypeProtobuf, ok)
	if err := h(msg); err != nil {
		t.Fatalf("handler: %v", err)
	}
	if got.GetDeliveryId() != "d1" || msg.Metadata.Get(bus.MetaDeliveryID) != "d1" || msg.Metadata.Get(bus.MetaTenantID) != "t1" {
		t.Errorf("got %v with metadata %v", got, msg.Metadata)
	}

	allow := bus.Handle(func(context.Context, *message.Message, *mailbusv1.ConfigChange) error { return nil }, bus.AllowNoTenant())
	platformWide, _ := proto.Marshal(&mailbusv1.ConfigChange{Id: "default"})
	if err := allow(newMsg("", platformWide)); err != nil {
		t.Errorf("AllowNoTenant handler: %v", err)
	}
}

func TestTopics(t *testing.T) {
	if got := bus.Group("router", "route"); got != "router.route" {
		t.Errorf("Group = %q", got)
	}
	for _, tt := range []struct {
		retry int
		want  string
	}{{0, bus.TopicRetry1m}, {1, bus.TopicRetry1m}, {2, bus.TopicRetry5m}, {5, bus.TopicRetry6h}, {9, bus.TopicRetry6h}} {
		if got := bus.RetryTopicFor(tt.retry).Topic; got != tt.want {
			t.Errorf("RetryTopicFor(%d) = %s, want %s", tt.retry, got, tt.want)
		}
	}
	seen := map[string]bool{}
	for _, topic := range bus.AllTopics() {
		if seen[topic] || strings.Contains(topic, "_") {
			t.Errorf("topic %q duplicated or contains '_'", topic)
		}
		seen[topic] = true
	}
	// 8 stage topics, mail.resubmit, 5 retry topics.
	if len(seen) != 14 {
		t.Errorf("AllTopics has %d topics, want 14", len(seen))
	}
}
