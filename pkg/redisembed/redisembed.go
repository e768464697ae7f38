// Package redisembed runs an in-process Redis-protocol server for
// `mailbus dev`, so that a newcomer can run the whole pipeline without
// installing Redis. It wraps github.com/alicebob/miniredis/v2 and listens on
// a real TCP port, so services connect to it exactly as they connect to a
// real Redis (REDIS_ADDR).
//
// # Persistence
//
// With WithDataDir the data survives a restart, and a crash (kill -9, power
// cut) loses no acknowledged write: the pipeline's memory of what it already
// did lives here (the sender's record of finished attempts, quota's
// decisions and counters, relay failures, suppression lists), and without
// it every restart of `mailbus dev` resent what was in flight and forgot
// idempotency ids.
//
// The file (AOFName) holds RESP commands as redis-server's append-only file
// does: a snapshot of every key, then one MULTI … EXEC group per write
// command. A group does not repeat the command; it holds the state of each
// key the command changed, read back after it ran: DEL, then SET, HSET,
// RPUSH, SADD or ZADD with the whole value, and PEXPIREAT with the absolute
// expiry. Logging states instead of commands makes replay exact whatever a
// script computed from TIME or from random numbers, keeps every key's
// expiry at the same moment across a restart, and needs no knowledge of
// what each command does beyond which keys it names (keys.go). The price is
// that a write to a big hash logs the whole hash; mailbus's keys are small.
//
// Every command runs under one gate, which orders the log as the commands
// ran. A reply leaves only after the groups appended before it are fsynced
// (group commit: concurrent clients share an fsync), so a client that got
// "OK" for the sender's record of a finished attempt, and committed its
// Kafka offset after that, finds the record after any crash. Loading
// replays the file, drops an unfinished last group (a crash in the middle
// of an append, never acknowledged), and rewrites the file as a snapshot;
// the file is rewritten again whenever it has doubled (64 MiB at least).
//
// Limits compared with redis-server, as they matter to mailbus:
//   - Blocking commands (BLPOP, XREAD BLOCK, …) and subscriptions are
//     refused: a command that waits would hold the gate. mailbus uses none.
//   - Streams, HyperLogLogs and per-field hash expiries are not persisted
//     (a warning says so when one is written); mailbus uses none.
//   - Lua runs on gopher-lua (Lua 5.1, like Redis). The quota scripts and the
//     GCRA rate limiter (which reads TIME) work unchanged, as the quota
//     tests prove by running against both servers; cjson is there, the
//     cmsgpack, struct and bit libraries are not.
//   - It is a single node: Redis Cluster redirections and CROSSSLOT checks
//     are never exercised.
//   - Every command takes one global lock, every EVAL builds a fresh Lua
//     state, and with a data directory every write waits for an fsync:
//     plenty for development traffic but not for load tests.
//   - Keys expire up to a second late: TTLs run down once per second (see
//     runDownTTLs); miniredis' default is not to expire keys at all.
package redisembed

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
)

// expiryTick is how often key TTLs run down; keys expire up to this late.
const expiryTick = time.Second

// Option configures Start.
type Option func(*options)

type options struct {
	dir string
	log *slog.Logger
}

// WithDataDir keeps the data in dir (created if missing) across restarts
// and crashes; without it nothing is kept.
func WithDataDir(dir string) Option { return func(o *options) { o.dir = dir } }

// WithLogger receives warnings (a damaged last record dropped at load, a
// key type that is not persisted) and persistence errors.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Start starts an in-process Redis-protocol server listening on addr
// ("127.0.0.1:6379", or "127.0.0.1:0" for any free port; empty means
// "127.0.0.1:0") and returns the address it listens on and a function that
// stops it. With WithDataDir it first loads what the directory holds.
func Start(addr string, opts ...Option) (string, func(), error) {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s, err := newServer(o)
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.shutdown()
		return "", nil, fmt.Errorf("start embedded redis on %s: %w", addr, err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.accept()
	var once sync.Once
	return ln.Addr().String(), func() { once.Do(s.shutdown) }, nil
}

type srv struct {
	m   *miniredis.Miniredis
	rs  *server.Server
	log *slog.Logger
	aof *appendLog // nil keeps nothing
	ln  net.Listener

	// gate runs one command (or one expiry tick) at a time, so that the log
	// holds states in the order they came about. The fields below it are
	// the gate holder's.
	gate   sync.Mutex
	cur    *server.Peer // the connection whose command runs
	curDB  int
	nested []command    // write commands that scripts of the running command made
	dbs    map[int]bool // databases ever used, for snapshots
	failed error        // the log cannot be written: refuse everything
	warned map[string]bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	done   chan struct{}
	ticker chan struct{}
}

type command struct {
	db   int
	name string // upper case
	args []string
}

func newServer(o options) (*srv, error) {
	m := miniredis.NewMiniRedis()
	// Dial sets up the command table without a listener of miniredis' own;
	// connections are ours (serve), so that we decide when a reply leaves.
	c, err := m.Dial()
	if err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	_ = c.Close()
	s := &srv{
		m: m, rs: m.Server(), log: o.log,
		dbs: map[int]bool{0: true}, warned: map[string]bool{},
		conns: map[net.Conn]struct{}{}, done: make(chan struct{}), ticker: make(chan struct{}),
	}
	s.rs.SetPreHook(s.hook)
	if o.dir != "" {
		if err := s.open(o.dir); err != nil {
			m.Close()
			return nil, err
		}
	}
	go s.runDownTTLs()
	return s, nil
}

// open loads the data directory and rewrites its file as a snapshot.
func (s *srv) open(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create embedded redis data directory: %w", err)
	}
	path := filepath.Join(dir, AOFName)
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	p := server.NewPeer(w)
	db := 0
	applied, torn, err := loadAOF(path, func(args []string) error {
		out.Reset()
		s.rs.Dispatch(p, args)
		_ = w.Flush()
		if bytes.HasPrefix(out.Bytes(), []byte("-")) {
			return fmt.Errorf("%s: %s", args[0], strings.TrimSpace(out.String()[1:]))
		}
		if strings.EqualFold(args[0], "SELECT") && len(args) == 2 {
			db, _ = strconv.Atoi(args[1])
			s.dbs[db] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load embedded redis data: %w", err)
	}
	if torn > 0 {
		s.log.Warn("embedded redis: dropped an unfinished last record of its append-only file, left by a crash in the middle of a write that was never acknowledged",
			"file", path, "kept_bytes", applied, "dropped_bytes", torn)
	}
	s.aof = &appendLog{path: path}
	s.gate.Lock()
	defer s.gate.Unlock()
	return s.rewrite()
}

// hook runs before every command miniredis dispatches: a connection's, and
// each redis.call of a script, which runs in the goroutine that holds the
// gate. It notes the scripts' calls; the connection's own command is known
// already.
func (s *srv) hook(p *server.Peer, cmd string, args ...string) bool {
	if s.cur != nil && p != s.cur {
		s.nested = append(s.nested, command{db: s.curDB, name: cmd, args: args})
	}
	return false
}

func (s *srv) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(conn)
	}
}

// client is one connection's state.
type client struct {
	peer    *server.Peer
	w       *bufio.Writer // the peer's, into out
	out     bytes.Buffer  // replies not sent yet
	db      int
	inMulti bool
	queued  []command
}

// serve reads commands and answers them. Replies to pipelined commands
// are sent together, once the groups appended before them are durable.
func (s *srv) serve(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	r := bufio.NewReader(conn)
	c := &client{}
	c.w = bufio.NewWriter(&c.out)
	c.peer = server.NewPeer(c.w)
	var seq uint64
	for {
		args, err := readCommand(r)
		if err != nil {
			if errors.Is(err, errProtocol) && (s.aof == nil || s.aof.waitDurable(seq) == nil) {
				_, _ = conn.Write(appendError(c.out.Bytes(), "ERR "+err.Error()))
			}
			return
		}
		if len(args) == 0 {
			continue
		}
		n, err := s.exec(c, args)
		if err != nil {
			return
		}
		seq = max(seq, n)
		if r.Buffered() > 0 && c.out.Len() < 1<<16 {
			continue
		}
		if s.aof != nil {
			if err := s.aof.waitDurable(seq); err != nil {
				s.fail(err)
				return
			}
		}
		if _, err := conn.Write(c.out.Bytes()); err != nil {
			return
		}
		c.out.Reset()
		if c.peer.Closed() {
			return
		}
	}
}

// exec runs one command and logs what it changed. It returns the sequence
// number of the last group in the log, which the reply waits for: a read
// must not show a client a write that a crash could still undo. An error
// means the log could not be written; the connection is then dropped
// without the reply.
func (s *srv) exec(c *client, args []string) (uint64, error) {
	cmd := strings.ToUpper(args[0])
	if why := refuses(cmd, args[1:]); why != "" {
		c.out.Write(appendError(nil, why))
		return 0, nil
	}
	s.gate.Lock()
	defer s.gate.Unlock()
	if s.failed != nil {
		c.out.Write(appendError(nil, "ERR embedded redis cannot write its data: "+s.failed.Error()))
		return 0, nil
	}
	mark := c.out.Len()
	s.cur, s.curDB = c.peer, c.db
	s.rs.Dispatch(c.peer, args)
	s.cur = nil
	c.peer.Flush()
	reply := c.out.Bytes()[mark:]
	ok := bytes.HasPrefix(reply, []byte("+OK"))

	var todo []command
	switch {
	case cmd == "MULTI":
		c.inMulti = c.inMulti || ok
	case cmd == "DISCARD":
		c.inMulti, c.queued = false, nil
	case cmd == "EXEC":
		todo = c.queued
		c.inMulti, c.queued = false, nil
	case c.inMulti && cmd != "WATCH" && cmd != "UNWATCH":
		// Queued: it runs at EXEC.
		if bytes.HasPrefix(reply, []byte("+QUEUED")) {
			c.queued = append(c.queued, command{db: c.db, name: cmd, args: args[1:]})
		}
	case cmd == "SELECT":
		if ok && len(args) == 2 {
			c.db, _ = strconv.Atoi(args[1])
			s.dbs[c.db] = true
		}
	default:
		todo = []command{{db: c.db, name: cmd, args: args[1:]}}
	}
	todo = append(todo, s.nested...)
	s.nested = s.nested[:0]
	if s.aof == nil {
		return 0, nil
	}
	var eff effects
	for _, t := range todo {
		if t.name == "SELECT" {
			// A SELECT inside a transaction or a script moves the
			// commands after it to another database; rather than follow
			// it, snapshot everything.
			eff.all = true
			continue
		}
		e := changes(t.db, t.name, t.args, s.rs.IsReadOnlyCommand)
		eff.keys = append(eff.keys, e.keys...)
		eff.dbs = append(eff.dbs, e.dbs...)
		eff.all = eff.all || e.all
	}
	if err := s.persist(eff); err != nil {
		s.failed = err
		s.log.Error("embedded redis cannot write its data; refusing every command from now on", "err", err)
		return 0, err
	}
	return s.aof.written.Load(), nil
}

// persist appends the new state of the keys in eff, or rewrites the whole
// file. The caller holds the gate.
func (s *srv) persist(eff effects) error {
	for _, d := range eff.dbs {
		s.dbs[d] = true
	}
	if eff.all {
		return s.rewrite()
	}
	if len(eff.keys) == 0 {
		return nil
	}
	now := time.Now()
	b := appendCommand(nil, "MULTI")
	seen := make(map[keyRef]bool, len(eff.keys))
	for _, k := range eff.keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		s.dbs[k.db] = true
		if k.db != s.aof.db {
			b = appendCommand(b, "SELECT", strconv.Itoa(k.db))
			s.aof.db = k.db
		}
		b = appendKeyState(b, s.m.DB(k.db), k.key, true, now, s.warn)
	}
	b = appendCommand(b, "EXEC")
	if _, err := s.aof.append(b); err != nil {
		return err
	}
	if s.aof.wantsRewrite() {
		return s.rewrite()
	}
	return nil
}

// rewrite replaces the file with a snapshot of every key. The caller holds
// the gate.
func (s *srv) rewrite() error {
	now := time.Now()
	return s.aof.rewrite(func(w *bufio.Writer) error {
		selected := 0
		var b []byte
		for _, n := range slices.Sorted(maps.Keys(s.dbs)) {
			db := s.m.DB(n)
			keys := db.Keys()
			if len(keys) == 0 {
				continue
			}
			if n != selected {
				if _, err := w.Write(appendCommand(nil, "SELECT", strconv.Itoa(n))); err != nil {
					return err
				}
				selected = n
			}
			for _, k := range keys {
				b = appendKeyState(b[:0], db, k, false, now, s.warn)
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
		}
		if selected != 0 {
			_, err := w.Write(appendCommand(nil, "SELECT", "0"))
			return err
		}
		return nil
	})
}

// warn says once per type that keys of a type are not persisted. The
// caller holds the gate.
func (s *srv) warn(typ, key string) {
	if s.warned[typ] {
		return
	}
	s.warned[typ] = true
	s.log.Warn("embedded redis does not keep keys of this type across restarts", "type", typ, "key", key)
}

func (s *srv) fail(err error) {
	s.gate.Lock()
	defer s.gate.Unlock()
	if s.failed == nil {
		s.failed = err
		s.log.Error("embedded redis cannot write its data; refusing every command from now on", "err", err)
	}
}

// runDownTTLs makes TTLs follow the wall clock. miniredis only counts TTLs
// down when told to; its ClockTTL mode does so on every command, at a cost
// proportional to the number of keys with a TTL (10 ms per command at 8000
// keys), so we fast-forward once per tick instead. Expiring needs no log
// record: the log holds each key's absolute expiry.
func (s *srv) runDownTTLs() {
	defer close(s.ticker)
	t := time.NewTicker(expiryTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.gate.Lock()
			s.m.FastForward(now.Sub(last))
			s.gate.Unlock()
			last = now
		}
	}
}

// shutdown stops accepting, drops the connections, waits for them, and
// closes the file.
func (s *srv) shutdown() {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	close(s.done)
	<-s.ticker
	if s.aof != nil {
		if err := s.aof.close(); err != nil {
			s.log.Error("embedded redis: close append-only file", "err", err)
		}
	}
	s.m.Close()
}
