package bench

import (
	"bytes"
	"sort"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// stageOf attributes a CPU sample to a pipeline stage: the outermost frame
// in a service package wins (a handler and everything it calls), and
// samples outside any handler go to the infrastructure that ran them.
var stagePrefixes = []struct{ prefix, stage string }{
	{"github.com/mailbus/mailbus/services/router", "router"},
	{"github.com/mailbus/mailbus/services/quota", "quota"},
	{"github.com/mailbus/mailbus/services/signer", "signer"},
	{"github.com/mailbus/mailbus/services/sender", "sender"},
	{"github.com/mailbus/mailbus/services/tracker", "tracker"},
	{"github.com/mailbus/mailbus/services/webhook", "webhook"},
	{"github.com/mailbus/mailbus/services/config", "config"},
	{"github.com/mailbus/mailbus/pkg/delay", "sender"},
}

var infraPrefixes = []struct{ prefix, stage string }{
	// DKIM signs on goroutines of its own, outside the handler's stack.
	{"github.com/emersion/go-msgauth", "signer"},
	{"crypto/", "signer"},
	{"github.com/twmb/franz-go", "kafka broker (embedded)"},
	{"github.com/IBM/sarama", "kafka client"},
	{"github.com/ThreeDotsLabs", "kafka client"},
	{"github.com/pierrec/lz4", "kafka client"},
	{"github.com/alicebob/miniredis", "redis server (embedded)"},
	{"github.com/redis/go-redis", "redis client"},
	{"github.com/mailbus/mailbus/cmd/mailbus/internal/bench", "smtp sink + load generator"},
	{"github.com/emersion/go-smtp", "smtp sink + load generator"},
	{"modernc.org/sqlite", "tracker"},
	{"google.golang.org/grpc", "config (grpc)"},
}

type stageCPU struct {
	Stage string
	CPU   time.Duration
}

// attribute splits a CPU profile by stage.
func attribute(raw []byte) ([]stageCPU, time.Duration, error) {
	p, err := profile.Parse(bytes.NewReader(raw))
	if err != nil {
		return nil, 0, err
	}
	idx := 0
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			idx = i
		}
	}
	by := map[string]time.Duration{}
	var total time.Duration
	for _, s := range p.Sample {
		d := time.Duration(s.Value[idx])
		total += d
		by[classify(s)] += d
	}
	out := make([]stageCPU, 0, len(by))
	for k, v := range by {
		out = append(out, stageCPU{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CPU > out[j].CPU })
	return out, total, nil
}

func classify(s *profile.Sample) string {
	// Locations run leaf first; walk root first for the outermost handler.
	for i := len(s.Location) - 1; i >= 0; i-- {
		for j := len(s.Location[i].Line) - 1; j >= 0; j-- {
			fn := s.Location[i].Line[j].Function.Name
			for _, sp := range stagePrefixes {
				if strings.HasPrefix(fn, sp.prefix) {
					return sp.stage
				}
			}
		}
	}
	for i := len(s.Location) - 1; i >= 0; i-- {
		for _, ln := range s.Location[i].Line {
			fn := ln.Function.Name
			for _, ip := range infraPrefixes {
				if strings.HasPrefix(fn, ip.prefix) {
					return ip.stage
				}
			}
		}
	}
	for _, loc := range s.Location {
		for _, ln := range loc.Line {
			if strings.HasPrefix(ln.Function.Name, "runtime.") {
				return "go runtime (gc, scheduler)"
			}
		}
	}
	return "other"
}
