package bounce

import (
	"net"
	"sync"
	"time"
)

// Why a connection was refused: the label of the refused-connections
// metric.
const (
	refusedTotal      = "total"       // the listener is full
	refusedPerAddress = "per_address" // the address has its share open
	refusedRate       = "rate"        // the address opened too many this minute
)

// refusalWriteTimeout bounds the writing of the 421 to a refused
// connection. The reply fits in a fresh socket's send buffer, so the
// write does not wait for the client; the bound is for the pathological
// case, because the accept loop waits for it.
const refusalWriteTimeout = time.Second

// limitListener applies the connection limits where a connection is
// accepted, before the greeting: go-smtp asks the backend for a session
// only at EHLO, so a limit there would let any number of idle connections
// in. A refused connection is told 421 and closed; an admitted one gives
// its slot back when it is closed.
type limitListener struct {
	net.Listener
	lim *connLimiter
	// refuse answers and closes a connection over a limit; first is
	// true for the first refusal of its address in the current minute.
	refuse func(c net.Conn, addr, reason string, first bool)
}

// Accept returns the next connection within the limits.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := addrKey(c.RemoteAddr())
		release, reason, first := l.lim.admit(key)
		if reason == "" {
			return &limitedConn{Conn: c, release: release}, nil
		}
		l.refuse(c, key, reason, first)
	}
}

// limitedConn gives its slot back on the first Close (go-smtp closes a
// connection both when the session ends and when the server stops).
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// addrKey is what the per-address limits count by: the IPv4 address, or
// the /64 of an IPv6 address, since one host usually has a whole /64 to
// pick addresses from.
func addrKey(a net.Addr) string {
	ip := net.ParseIP(remoteIP(a))
	if ip == nil {
		return a.String()
	}
	if ip4 := ip.To4(); ip4 != nil {
		return ip4.String()
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}

// connLimiter bounds connections: how many at once in all, how many at
// once from one address, and how many new ones per minute from one
// address. It is written here because it is a few lines over a map; a
// token-bucket library would still need the map, its locking and its
// eviction.
type connLimiter struct {
	maxTotal  int
	maxConc   int
	perMinute int
	now       func() time.Time

	mu      sync.Mutex
	total   int
	active  map[string]int
	window  time.Time
	started map[string]int
	refused map[string]bool
}

func newConnLimiter(maxTotal, maxConc, perMinute int, now func() time.Time) *connLimiter {
	return &connLimiter{
		maxTotal: maxTotal, maxConc: maxConc, perMinute: perMinute, now: now,
		active: map[string]int{}, started: map[string]int{}, refused: map[string]bool{},
	}
}

// admit counts a new connection from addr. Admitted, it returns release,
// to be called once when the connection ends; refused, the reason, and
// whether this is the address's first refusal this minute (so that a
// flood is logged once, and counted by the metric).
func (l *connLimiter) admit(addr string) (release func(), reason string, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A fixed one-minute window: the maps are dropped at each new window,
	// so they never grow beyond one minute's addresses.
	if w := l.now().Truncate(time.Minute); !w.Equal(l.window) {
		l.window, l.started, l.refused = w, map[string]int{}, map[string]bool{}
	}
	switch {
	case l.total >= l.maxTotal:
		reason = refusedTotal
	case l.active[addr] >= l.maxConc:
		reason = refusedPerAddress
	case l.started[addr] >= l.perMinute:
		reason = refusedRate
	}
	if reason != "" {
		first = !l.refused[addr]
		l.refused[addr] = true
		return nil, reason, first
	}
	l.total++
	l.active[addr]++
	l.started[addr]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.total--
		if l.active[addr]--; l.active[addr] <= 0 {
			delete(l.active, addr)
		}
	}, "", false
}

// open returns how many connections are open.
func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
