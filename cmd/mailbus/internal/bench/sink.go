package bench

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is an SMTP server that accepts and discards everything, recording
// when each message was accepted and how long it took since its producer
// published it (the X-Bench-Published header). Messages published before
// the current phase began (a previous run's leftovers on a reused Kafka)
// are accepted but not counted.
type sink struct {
	srv       *smtp.Server
	ln        net.Listener
	latency   time.Duration
	dataDelay time.Duration

	mu        sync.Mutex
	count     int
	first     time.Time
	last      time.Time
	latencies []time.Duration
	conns     int
	done      chan struct{}
	want      int
	since     time.Time
	// inFlight counts the transactions between MAIL FROM and their end;
	// peakInFlight is its maximum since the last reset.
	inFlight     int
	peakInFlight int
}

func startSink(latency, dataDelay time.Duration, want int) (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{ln: ln, latency: latency, dataDelay: dataDelay, want: want, done: make(chan struct{}), since: time.Now()}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "sink.bench"
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.MaxRecipients = 1000
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *sink) Addr() string { return s.ln.Addr().String() }
func (s *sink) Close()       { _ = s.srv.Close() }

func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()
	return &sinkSession{s: s}, nil
}

type sinkSession struct {
	s     *sink
	inTxn bool
}

// begin and end count the session's transaction in flight.
func (ss *sinkSession) begin() {
	if ss.inTxn {
		return
	}
	ss.inTxn = true
	s := ss.s
	s.mu.Lock()
	s.inFlight++
	s.peakInFlight = max(s.peakInFlight, s.inFlight)
	s.mu.Unlock()
}

func (ss *sinkSession) end() {
	if !ss.inTxn {
		return
	}
	ss.inTxn = false
	s := ss.s
	s.mu.Lock()
	s.inFlight--
	s.mu.Unlock()
}

func (ss *sinkSession) pause() {
	if ss.s.latency > 0 {
		time.Sleep(ss.s.latency)
	}
}
func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { ss.begin(); ss.pause(); return nil }
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { ss.pause(); return nil }
func (ss *sinkSession) Reset()                               { ss.end() }
func (ss *sinkSession) Logout() error                        { ss.end(); return nil }

var publishedHeader = []byte("X-Bench-Published: ")

func (ss *sinkSession) Data(r io.Reader) error {
	br := bufio.NewReaderSize(r, 16<<10)
	var published int64
	for {
		line, err := br.ReadSlice('\n')
		if bytes.HasPrefix(line, publishedHeader) {
			published, _ = strconv.ParseInt(string(bytes.TrimSpace(line[len(publishedHeader):])), 10, 64)
		}
		if err != nil || len(bytes.TrimSpace(line)) == 0 {
			break
		}
	}
	_, _ = io.Copy(io.Discard, br)
	ss.pause()
	if ss.s.dataDelay > 0 {
		time.Sleep(ss.s.dataDelay)
	}
	defer ss.end()
	now := time.Now()
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if published > 0 && published < s.since.UnixNano() {
		return nil
	}
	if s.count == 0 {
		s.first = now
	}
	s.count++
	s.last = now
	if published > 0 {
		s.latencies = append(s.latencies, now.Sub(time.Unix(0, published)))
	}
	if s.count == s.want {
		close(s.done)
	}
	return nil
}

func (s *sink) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}
