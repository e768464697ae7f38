package health

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailbus/mailbus/pkg/mail"
)

// throttleText matches what providers say when they want fewer
// connections or messages. Greylisting ("451 4.7.1 greylisted, try again
// later") is deliberately not here: it is about one message, and pausing a
// whole destination for it would delay everything else going there.
var throttleText = regexp.MustCompile(`(?i)too many (\w+ ){0,2}(connections|sessions|messages|mails)|rate[ -]?limit|throttl|\bTSS0[1-9]\b|\(S843\)|\bS77714\b|unusual rate|temporarily deferred due to unexpected volume`)

// IsThrottle reports whether a temporary reply asks the sender to slow
// down, as opposed to refusing one message or failing: Gmail's 421 4.7.28
// (unusual rate of mail), Microsoft's 4.7.650 and S843 (rate limited on
// reputation), Yahoo's TSS04, and a generic 421/45x "too many
// connections". Permanent replies never are: they end the recipient.
func IsThrottle(e *mail.SMTPError) bool {
	if e == nil || e.Code < 400 || e.Code > 499 {
		return false
	}
	switch e.Enhanced {
	case "4.7.28", "4.7.650", "4.7.500":
		return true
	}
	return throttleText.MatchString(e.Message)
}

// State is what a destination may take now.
type State struct {
	// PausedUntil is when a throttling pause ends; zero when none was
	// ever recorded (or it has long expired).
	PausedUntil time.Time
	// Reply is the throttling reply that paused it, as the server said it.
	Reply string
	// Conns is how many connections the destination may have now: 0 while
	// paused, then 1, doubling every Rule.RampStep up to max.
	Conns int
}

// Paused reports whether the destination takes nothing until PausedUntil.
func (s State) Paused() bool { return s.Conns == 0 }

// Waiting is the reason shown in the message log for recipients held back
// by the pause: "waiting: gmail.com throttled us: 421 4.7.28 ...".
func (s State) Waiting(dest Destination) string {
	return fmt.Sprintf("waiting: %s throttled us: %s; paused until %s", dest.Name, s.Reply, s.PausedUntil.UTC().Format(time.RFC3339))
}

// maxRampDoublings caps the ramp: past 2^20 connections every limit is
// reached.
const maxRampDoublings = 20

// State returns the destination's state, with max its configured
// connection limit. A destination that Redis knows nothing about is
// healthy; when Redis cannot answer, the error says so and the caller
// decides (the sender goes on at the configured limit: a pause is a
// courtesy to the receiver, not a promise to a tenant).
func (h *Health) State(ctx context.Context, dest Destination, max int) (State, error) {
	p, err := h.pause(ctx, dest)
	if err != nil {
		return State{Conns: max}, err
	}
	if p.until.IsZero() {
		return State{Conns: max}, nil
	}
	st := State{PausedUntil: p.until, Reply: p.reply}
	since := h.now().Sub(st.PausedUntil)
	switch {
	case since < 0:
		st.Conns = 0
	default:
		k := min(int(since/dest.Rule.rampStep()), maxRampDoublings)
		st.Conns = min(max, 1<<k)
	}
	return st, nil
}

// throttleScript records a throttling reply.
//
//	KEYS[1] the destination's state
//	ARGV    now (ms), first pause (ms), longest pause (ms), ramp step (ms), reply
//
// A reply that arrives while the destination is already paused came from
// a transaction begun before the pause and changes nothing. One that
// arrives while it ramps back up (within twelve ramp steps of the pause's
// end) doubles the pause, up to the longest: the receiver has not forgiven
// us yet. Returns the pause's
// end (ms) and 1 when this call started it.
var throttleScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local untilMs = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
if now < untilMs then
  return {untilMs, 0}
end
local p = tonumber(ARGV[2])
if pause > 0 and now < untilMs + 12 * tonumber(ARGV[4]) then
  p = math.min(pause * 2, tonumber(ARGV[3]))
end
untilMs = now + p
redis.call('HSET', KEYS[1], 'until', untilMs, 'pause', p, 'reply', ARGV[5])
redis.call('PEXPIRE', KEYS[1], p + 24 * tonumber(ARGV[4]))
return {untilMs, 1}
`)

// pauseCacheTTL is how long a replica trusts the pause it last read for a
// destination. Every delivery asks for its destination's state, and a
// Redis round trip per message for a pause that lasts minutes is waste;
// another replica's new pause reaches this one at most this late (its own
// is seen at once, Throttled records it here too).
const pauseCacheTTL = time.Second

// pauseState is a destination's pause as stored: until (zero for none)
// and the reply that started it.
type pauseState struct {
	until   time.Time
	reply   string
	expires time.Time // of the cache entry
}

// pause reads dest's pause, from the cache when fresh.
func (h *Health) pause(ctx context.Context, dest Destination) (pauseState, error) {
	now := h.now()
	h.mu.Lock()
	p, ok := h.pauses[dest.Key]
	h.mu.Unlock()
	if ok && now.Before(p.expires) {
		return p, nil
	}
	vals, err := h.rdb.HMGet(ctx, h.throttleKey(dest), "until", "reply").Result()
	if err != nil {
		return pauseState{}, fmt.Errorf("read the throttling state of %s: %w", dest.Name, err)
	}
	p = pauseState{expires: now.Add(pauseCacheTTL)}
	s, _ := vals[0].(string)
	if ms, _ := strconv.ParseInt(s, 10, 64); ms != 0 {
		p.until = time.UnixMilli(ms)
		p.reply, _ = vals[1].(string)
	}
	h.remember(dest, p)
	return p, nil
}

func (h *Health) remember(dest Destination, p pauseState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.pauses) > 10000 {
		// Destinations come and go (every MX host of direct delivery);
		// dropping the whole cache now and then keeps it bounded.
		clear(h.pauses)
	}
	h.pauses[dest.Key] = p
}

// Throttled pauses dest after it sent the throttling reply and returns
// its state: paused until the pause's end. started is true for the one
// call, among every replica, that started this pause.
func (h *Health) Throttled(ctx context.Context, dest Destination, reply *mail.SMTPError) (st State, started bool, err error) {
	r := dest.Rule
	text := ReplyText(reply)
	res, err := throttleScript.Run(ctx, h.rdb, []string{h.throttleKey(dest)},
		h.now().UnixMilli(), r.throttlePause().Milliseconds(), r.maxThrottlePause().Milliseconds(), r.rampStep().Milliseconds(), text).Int64Slice()
	if err != nil {
		return State{}, false, fmt.Errorf("pause %s after its throttling reply: %w", dest.Name, err)
	}
	st = State{PausedUntil: time.UnixMilli(res[0]), Reply: text}
	if res[1] == 0 {
		// The pause another call started: read its reply afresh.
		h.mu.Lock()
		delete(h.pauses, dest.Key)
		h.mu.Unlock()
	} else {
		h.remember(dest, pauseState{until: st.PausedUntil, reply: text, expires: h.now().Add(pauseCacheTTL)})
	}
	if res[1] == 1 {
		h.log.Warn("destination throttled us: pausing it", "destination", dest.Name, "reply", text, "until", st.PausedUntil)
	}
	return st, res[1] == 1, nil
}

// ReplyText is a reply as the server said it: "421 4.7.28 text".
func ReplyText(e *mail.SMTPError) string {
	parts := make([]string, 0, 3)
	if e.Code != 0 {
		parts = append(parts, strconv.Itoa(e.Code))
	}
	if e.Enhanced != "" {
		parts = append(parts, e.Enhanced)
	}
	if e.Message != "" {
		parts = append(parts, strings.Join(strings.Fields(e.Message), " "))
	}
	return strings.Join(parts, " ")
}

// destKey is one of the destination's keys (suffix "throttle", "rate").
// The destination's key is hashed into the hash tag because relay ids and
// MX names are not ours to keep free of braces.
func (h *Health) destKey(dest Destination, suffix string) string {
	sum := sha256.Sum256([]byte(dest.Key))
	return h.prefix + "{dest:" + hex.EncodeToString(sum[:8]) + "}:" + suffix
}

func (h *Health) throttleKey(dest Destination) string { return h.destKey(dest, "throttle") }

// AllowMessage counts one message against dest's messages per minute,
// shared by every replica, and returns how long to wait when the minute's
// budget is spent (nothing was counted then). A destination without a
// rate is never held.
func (h *Health) AllowMessage(ctx context.Context, dest Destination) (time.Duration, error) {
	n := dest.Rule.MessagesPerMinute
	if n <= 0 {
		return 0, nil
	}
	lim := redisRatePerMinute(n)
	res, err := h.rate.Allow(ctx, h.destKey(dest, "rate"), lim)
	if err != nil {
		return 0, fmt.Errorf("count a message against the rate of %s: %w", dest.Name, err)
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	return max(res.RetryAfter, time.Millisecond), nil
}
