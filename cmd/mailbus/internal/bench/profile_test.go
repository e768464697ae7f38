package bench

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/mailbus/mailbus/cmd/mailbus/internal/stack"
)

// cpuProfile builds a CPU profile whose samples each take d and run the
// functions of stacks (root first), with the stage label of labels[i]
// when not empty.
func cpuProfile(t *testing.T, d time.Duration, stacks [][]string, labels []string) []byte {
	t.Helper()
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:     int64(d),
	}
	fns := map[string]*profile.Function{}
	for i, st := range stacks {
		var locs []*profile.Location
		for j := len(st) - 1; j >= 0; j-- { // leaf first, as pprof stores them
			fn := fns[st[j]]
			if fn == nil {
				fn = &profile.Function{ID: uint64(len(fns) + 1), Name: st[j]}
				fns[st[j]] = fn
				p.Function = append(p.Function, fn)
			}
			loc := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: fn}}}
			p.Location = append(p.Location, loc)
			locs = append(locs, loc)
		}
		s := &profile.Sample{Location: locs, Value: []int64{1, int64(d)}}
		if labels[i] != "" {
			s.Label = map[string][]string{stack.ProfileLabel: {labels[i]}}
		}
		p.Sample = append(p.Sample, s)
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAttribute_chargesASampleToItsGoroutinesStageAndSplitsOutTheKafkaClient(t *testing.T) {
	const ms = time.Millisecond
	raw := cpuProfile(t, ms, [][]string{
		// The signer's handler signing: the signer's work.
		{"github.com/ThreeDotsLabs/watermill/message.(*handler).handleMessage", "github.com/mailbus/mailbus/services/signer.(*Service).handle", "crypto/rsa.SignPKCS1v15"},
		// The same handler decoding its record: the signer's Kafka client.
		{"github.com/ThreeDotsLabs/watermill/message.(*handler).handleMessage", "github.com/mailbus/mailbus/pkg/bus.Decode", "google.golang.org/protobuf/proto.Unmarshal"},
		// sarama's fetcher, started by the signer: no signer frame on the
		// stack, the label says whose it is.
		{"github.com/IBM/sarama.(*brokerConsumer).fetchNewMessages", "runtime.memmove"},
		// The embedded broker.
		{"github.com/twmb/franz-go/pkg/kfake.(*Cluster).handleFetch"},
		// An unlabelled goroutine falls back to its stack.
		{"runtime.gcBgMarkWorker"},
	}, []string{"signer", "signer", "signer", stack.StageBroker, ""})

	stages, total, err := attribute(raw)
	if err != nil {
		t.Fatal(err)
	}
	if total != 5*ms {
		t.Errorf("total %v, want 5ms", total)
	}
	got := map[string]stageCPU{}
	for _, s := range stages {
		got[s.Stage] = s
	}
	if s := got["signer"]; s.CPU != 3*ms || s.Kafka != 2*ms {
		t.Errorf("signer %v (kafka client %v), want 3ms of which 2ms in its Kafka client", s.CPU, s.Kafka)
	}
	if s := got[stack.StageBroker]; s.CPU != ms || s.Kafka != 0 {
		t.Errorf("broker %+v, want 1ms and no client time", s)
	}
	if s := got["go runtime (gc, scheduler)"]; s.CPU != ms {
		t.Errorf("runtime %+v, want 1ms", s)
	}
}
