package obs

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// Trace context is propagated as a W3C traceparent string in record
// metadata. mailbus does not export spans itself yet; carrying the context
// lets an OpenTelemetry collector stitch producer and pipeline together.

// NewTraceparent starts a new sampled trace.
func NewTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// ChildTraceparent keeps the trace id of parent and gives a new span id; an
// invalid parent starts a new trace.
func ChildTraceparent(parent string) string {
	parts := strings.Split(parent, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return NewTraceparent()
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return parts[0] + "-" + parts[1] + "-" + hex.EncodeToString(b[:]) + "-" + parts[3]
}

// TraceID returns the trace id of a traceparent, or "".
func TraceID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[1]
}
