package bench

import (
	"bytes"
	"sort"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
)

// A sample goes to the stage its goroutine's label names (see
// stack.ProfileLabel). An unlabelled one (a goroutine a service started
// before its Run, the runtime's) falls back to its stack: the outermost
// frame in a service package wins (a handler and everything it calls), and
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
	// Kafka is the part of CPU spent in the stage's Kafka client: sarama,
	// watermill, LZ4 and pkg/bus (the leaf-most of those or of the
	// stage's own work decides, so a handler's proto decoding inside
	// bus.Decode counts as Kafka and its signing as work).
	Kafka time.Duration
}

// Stage labels of the bench's own components (the stack's services label
// theirs with their names, see stack.ProfileLabel).
const (
	stageRedis = "redis server (embedded)"
	stageLoad  = "smtp sink + load generator"
)

// kafkaPrefixes are the Kafka client's packages; workPrefixes what a stage
// does besides, which takes a sample back from Kafka when it is nearer the
// leaf (a handler runs inside watermill's router).
var (
	kafkaPrefixes = []string{"github.com/IBM/sarama", "github.com/ThreeDotsLabs", "github.com/pierrec/lz4", "github.com/mailbus/mailbus/pkg/bus."}
	workPrefixes  = []string{"github.com/mailbus/mailbus/services/", "github.com/mailbus/mailbus/pkg/", "github.com/emersion/", "crypto/", "github.com/redis/go-redis", "modernc.org/sqlite"}
)

// inKafka reports whether a sample's leaf-most frame of interest is the
// Kafka client's.
func inKafka(s *profile.Sample) bool {
	for _, loc := range s.Location {
		for _, ln := range loc.Line {
			fn := ln.Function.Name
			for _, p := range kafkaPrefixes {
				if strings.HasPrefix(fn, p) {
					return true
				}
			}
			for _, p := range workPrefixes {
				if strings.HasPrefix(fn, p) {
					return false
				}
			}
		}
	}
	return false
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
	by := map[string]*stageCPU{}
	var total time.Duration
	for _, s := range p.Sample {
		d := time.Duration(s.Value[idx])
		total += d
		var stage string
		if l := s.Label[stack.ProfileLabel]; len(l) > 0 {
			stage = l[0]
		} else {
			stage = classify(s)
		}
		sc := by[stage]
		if sc == nil {
			sc = &stageCPU{Stage: stage}
			by[stage] = sc
		}
		sc.CPU += d
		if stage != stack.StageBroker && inKafka(s) {
			sc.Kafka += d
		}
	}
	out := make([]stageCPU, 0, len(by))
	for _, v := range by {
		out = append(out, *v)
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
