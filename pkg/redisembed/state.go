package redisembed

import (
	"errors"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// chunk bounds the members of one rebuilding command, so that a big hash or
// set becomes several commands of reasonable size.
const chunk = 1000

// appendKeyState appends the commands that recreate key as it is now in
// db: DEL when it is gone; otherwise (after a DEL when the log already
// holds an older state, replace) a SET, HSET, RPUSH, SADD or ZADD, and a
// PEXPIREAT with the absolute expiry, so that the key expires at the same
// moment after a restart however long the restart took. The caller holds
// the gate, so neither a command nor the expiry ticker changes the key
// while it is read.
//
// Streams, HyperLogLogs and per-field hash expiries are not kept (miniredis
// has no way to read them back whole); warn is called once for each such
// key.
func appendKeyState(b []byte, db *miniredis.RedisDB, key string, replace bool, now time.Time, warn func(typ, key string)) []byte {
	typ := db.Type(key)
	if typ == "" {
		if replace {
			b = appendCommand(b, "DEL", key)
		}
		return b
	}
	if replace && typ != "string" {
		b = appendCommand(b, "DEL", key)
	}
	var err error
	switch typ {
	case "string":
		var v string
		if v, err = db.Get(key); err == nil {
			b = appendCommand(b, "SET", key, v)
		}
	case "hash":
		var fields []string
		if fields, err = db.HKeys(key); err == nil {
			b = appendChunked(b, "HSET", key, fields, func(f string) []string { return []string{f, db.HGet(key, f)} })
		}
	case "list":
		var items []string
		if items, err = db.List(key); err == nil {
			b = appendChunked(b, "RPUSH", key, items, func(v string) []string { return []string{v} })
		}
	case "set":
		var members []string
		if members, err = db.Members(key); err == nil {
			b = appendChunked(b, "SADD", key, members, func(v string) []string { return []string{v} })
		}
	case "zset":
		var scores map[string]float64
		if scores, err = db.SortedSet(key); err == nil {
			members := slices.Sorted(maps.Keys(scores))
			b = appendChunked(b, "ZADD", key, members, func(m string) []string {
				return []string{strconv.FormatFloat(scores[m], 'g', -1, 64), m}
			})
		}
	default:
		warn(typ, key)
		return b
	}
	if errors.Is(err, miniredis.ErrKeyNotFound) {
		// Not reachable under the gate; a key that is gone is deleted.
		return appendCommand(b, "DEL", key)
	}
	if err != nil {
		warn(typ, key)
		return b
	}
	if ttl := db.TTL(key); ttl > 0 {
		b = appendCommand(b, "PEXPIREAT", key, strconv.FormatInt(now.Add(ttl).UnixMilli(), 10))
	}
	return b
}

// appendChunked appends cmd key <args of items...>, at most chunk items per
// command.
func appendChunked(b []byte, cmd, key string, items []string, args func(string) []string) []byte {
	for len(items) > 0 {
		n := min(chunk, len(items))
		line := []string{cmd, key}
		for _, it := range items[:n] {
			line = append(line, args(it)...)
		}
		b = appendCommand(b, line...)
		items = items[n:]
	}
	return b
}
