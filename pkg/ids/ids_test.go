package ids

import "testing"

func TestMessageID_isStableAndTenantScoped(t *testing.T) {
	a := MessageID("acme", "order-42")
	if a != MessageID("acme", "order-42") {
		t.Fatal("same tenant and idempotency id must give the same message id")
	}
	if a == MessageID("globex", "order-42") {
		t.Fatal("tenants must not share message ids")
	}
	if len(a) != 25 {
		t.Fatalf("message id %q has length %d", a, len(a))
	}
}

func TestDeliveryID_marksReroutes(t *testing.T) {
	if got := DeliveryID("mabc", 2, 0); got != "mabc.2" {
		t.Fatalf("got %q", got)
	}
	if got := DeliveryID("mabc", 2, 1); got != "mabc.2.r1" {
		t.Fatalf("got %q", got)
	}
}

func TestEventID_differsByOutcome(t *testing.T) {
	if EventID("d", "sender", "sent", 1) == EventID("d", "sender", "deferred", 1) {
		t.Fatal("different outcomes must have different event ids")
	}
	if EventID("d", "sender", "sent", 1, "a@x") != EventID("d", "sender", "sent", 1, "a@x") {
		t.Fatal("event ids must be stable")
	}
}
