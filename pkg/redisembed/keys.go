package redisembed

import (
	"strconv"
	"strings"
)

// keyRef names a key in one of the numbered databases.
type keyRef struct {
	db  int
	key string
}

// effects is what a write command may have changed: keys whose state is
// written to the log, or (FLUSHALL, FLUSHDB, SWAPDB) the whole data set,
// which is then rewritten in full.
type effects struct {
	keys []keyRef
	all  bool
	// dbs are databases the command names besides the connection's own.
	dbs []int
}

// noKeys are the commands miniredis does not mark read-only that change no
// key: connection, server and pub/sub commands. Transactions and SELECT
// are handled by the connection.
var noKeys = set("AUTH", "CLIENT", "CLUSTER", "COMMAND", "DISCARD", "ECHO", "EXEC", "HELLO", "INFO",
	"MEMORY", "MULTI", "OBJECT", "PING", "PUBLISH", "PUBSUB", "PSUBSCRIBE", "PUNSUBSCRIBE", "QUIT",
	"SCRIPT", "SELECT", "SUBSCRIBE", "TIME", "UNSUBSCRIBE", "UNWATCH", "WAIT", "WATCH", "XINFO",
	// Scripts change keys through redis.call, which the server's pre-hook
	// sees one call at a time.
	"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO")

// refused are commands that wait for other clients (blocking pops) or keep
// pushing to the client (subscriptions). Every command runs under the one
// gate that orders the log, so a waiting command would stop the server.
// mailbus uses none of them.
var refused = set("BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
	"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "WAIT")

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// refuses says why the server does not run cmd, or "".
func refuses(cmd string, args []string) string {
	block := refused[cmd]
	if cmd == "XREAD" || cmd == "XREADGROUP" {
		for _, a := range args {
			if strings.EqualFold(a, "BLOCK") {
				block = true
			}
		}
	}
	if !block {
		return ""
	}
	return "ERR " + cmd + " waits for other clients or pushes to this one, which the embedded Redis of mailbus does not support; use redis-server (REDIS_ADDR)"
}

// changes returns the keys a write command (cmd upper case, args without
// the command name) may have changed in database db. It errs on the side of
// more keys: logging the state of a key that did not change costs only
// space, while missing one loses it.
func changes(db int, cmd string, args []string, readOnly func(string) bool) effects {
	if noKeys[cmd] || readOnly(cmd) {
		return effects{}
	}
	if cmd == "FLUSHALL" || cmd == "FLUSHDB" {
		return effects{all: true}
	}
	if len(args) == 0 {
		return effects{}
	}
	refs := func(keys ...string) effects {
		e := effects{keys: make([]keyRef, len(keys))}
		for i, k := range keys {
			e.keys[i] = keyRef{db, k}
		}
		return e
	}
	switch cmd {
	case "SWAPDB":
		e := effects{all: true}
		for _, a := range args {
			if n, err := strconv.Atoi(a); err == nil && n >= 0 {
				e.dbs = append(e.dbs, n)
			}
		}
		return e
	case "DEL", "UNLINK":
		return refs(args...)
	case "MSET", "MSETNX":
		var keys []string
		for i := 0; i < len(args); i += 2 {
			keys = append(keys, args[i])
		}
		return refs(keys...)
	case "RENAME", "RENAMENX", "SMOVE", "RPOPLPUSH", "LMOVE":
		return refs(args[:min(2, len(args))]...)
	case "COPY":
		e := refs(args[0])
		if len(args) > 1 {
			dst := db
			for i := 2; i+1 < len(args); i++ {
				if strings.EqualFold(args[i], "DB") {
					if n, err := strconv.Atoi(args[i+1]); err == nil && n >= 0 {
						dst = n
					}
				}
			}
			e.keys = append(e.keys, keyRef{dst, args[1]})
			e.dbs = append(e.dbs, dst)
		}
		return e
	case "MOVE":
		e := refs(args[0])
		if len(args) > 1 {
			if n, err := strconv.Atoi(args[1]); err == nil && n >= 0 {
				e.keys = append(e.keys, keyRef{n, args[0]})
				e.dbs = append(e.dbs, n)
			}
		}
		return e
	case "BITOP":
		return refs(args[1:]...)
	case "LMPOP", "ZMPOP":
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 || n >= len(args) {
			return effects{}
		}
		return refs(args[1 : 1+n]...)
	case "GEORADIUS", "GEORADIUSBYMEMBER":
		keys := []string{args[0]}
		for i := 1; i+1 < len(args); i++ {
			if strings.EqualFold(args[i], "STORE") || strings.EqualFold(args[i], "STOREDIST") {
				keys = append(keys, args[i+1])
			}
		}
		return refs(keys...)
	case "XGROUP":
		return refs(args[1:min(2, len(args))]...)
	case "XREADGROUP":
		for i, a := range args {
			if strings.EqualFold(a, "STREAMS") {
				rest := args[i+1:]
				return refs(rest[:len(rest)/2]...)
			}
		}
		return effects{}
	}
	return refs(args[0])
}
