package bench

import (
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// peakRSS is the process's peak resident set size (VmHWM), or 0 where
// /proc does not say.
func peakRSS() int64 { return procStatusKB("VmHWM:") }

// procStatusKB reads a size field of /proc/self/status in bytes.
func procStatusKB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// memSampler follows, while a phase runs, the most memory the Go runtime
// held (heap, stacks and its own structures) and the resident set, so a
// report can tell memory the Go code holds from memory outside it (the
// SQLite library's own allocator, for one) and from heap the runtime kept
// but no longer uses.
type memSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak memSample
}

type memSample struct {
	GoTotal  uint64 // /memory/classes/total:bytes minus released
	HeapLive uint64 // /gc/heap/live:bytes, the heap marked live by the last GC
	RSS      int64
}

func startMemSampler(every time.Duration) *memSampler {
	m := &memSampler{stop: make(chan struct{}), done: make(chan struct{})}
	samples := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}, {Name: "/gc/heap/live:bytes"}}
	go func() {
		defer close(m.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			metrics.Read(samples)
			s := memSample{
				GoTotal:  samples[0].Value.Uint64() - samples[1].Value.Uint64(),
				HeapLive: samples[2].Value.Uint64(),
				RSS:      currentRSS(),
			}
			m.mu.Lock()
			m.peak.GoTotal = max(m.peak.GoTotal, s.GoTotal)
			m.peak.HeapLive = max(m.peak.HeapLive, s.HeapLive)
			m.peak.RSS = max(m.peak.RSS, s.RSS)
			m.mu.Unlock()
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// Stop ends the sampling and returns the peaks.
func (m *memSampler) Stop() memSample {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak
}

func currentRSS() int64 { return procStatusKB("VmRSS:") }
