// Package mtasts finds and keeps the MTA-STS policies (RFC 8461) of
// recipient domains, for direct MX delivery: the `_mta-sts.<domain>` TXT
// record names the policy's id, the policy itself comes over verified HTTPS
// from mta-sts.<domain>, and it is kept for its max_age, shared between
// replicas through Redis, and fetched again when the id changes.
//
// What a policy means for a delivery (enforce: only the listed MX hosts,
// only over STARTTLS with a certificate valid for the host; testing: report
// and deliver as before) is decided by the deliverer; this package answers
// "which policy" and counts the failures it is told about.
//
// No importable Go module was at hand (the MTA-STS code of maddy, mox and
// chasquid is internal or part of a large module), so the parsing follows
// RFC 8461 directly; its shape (first occurrence wins, a strict TXT
// grammar, whole-label wildcards) follows github.com/rest-mail/go-mtasts
// (MIT).
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The policy modes (RFC 8461 5).
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// maxMaxAge is the longest max_age RFC 8461 3.2 allows (about a year).
const maxMaxAge = 31557600

// Policy is one domain's parsed policy.
type Policy struct {
	Domain string `json:"domain"`
	// ID is the TXT record's id the policy was fetched under.
	ID     string        `json:"id"`
	Mode   string        `json:"mode"`
	MX     []string      `json:"mx"`
	MaxAge time.Duration `json:"max_age"`
}

// Parse reads a policy file (RFC 8461 3.2): "key: value" lines; version,
// mode and max_age are taken from their first line, mx may repeat, unknown
// keys are ignored.
func Parse(body []byte) (*Policy, error) {
	p := &Policy{}
	var version string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if key != "mx" && seen[key] {
			continue
		}
		seen[key] = true
		switch key {
		case "version":
			version = value
		case "mode":
			p.Mode = value
		case "max_age":
			n, err := strconv.ParseUint(value, 10, 64)
			if err != nil || n > maxMaxAge || len(value) > 10 {
				return nil, fmt.Errorf("max_age %q is not a number of seconds up to %d", value, maxMaxAge)
			}
			p.MaxAge = time.Duration(n) * time.Second
		case "mx":
			if value != "" {
				p.MX = append(p.MX, strings.TrimSuffix(strings.ToLower(value), "."))
			}
		}
	}
	switch {
	case version != "STSv1":
		return nil, fmt.Errorf("version %q is not STSv1", version)
	case p.Mode != ModeEnforce && p.Mode != ModeTesting && p.Mode != ModeNone:
		return nil, fmt.Errorf("mode %q is not enforce, testing or none", p.Mode)
	case !seen["max_age"]:
		return nil, errors.New("no max_age")
	case p.Mode != ModeNone && len(p.MX) == 0:
		return nil, fmt.Errorf("mode %s lists no mx", p.Mode)
	}
	return p, nil
}

// Allows reports whether host is one of the policy's MX patterns: the same
// name, or "*.example.com" for exactly one more label (RFC 8461 4.1).
func (p *Policy) Allows(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, pat := range p.MX {
		if pat == host {
			return true
		}
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
		}
	}
	return false
}

// recordID returns the id of the domain's one STSv1 TXT record (RFC 8461
// 3.1); "" when there is none, or more than one, which counts as none.
func recordID(txts []string) (string, error) {
	var ids []string
	for _, t := range txts {
		fields := strings.Split(t, ";")
		if strings.TrimSpace(fields[0]) != "v=STSv1" {
			continue
		}
		id := ""
		for _, f := range fields[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
			if k == "id" && id == "" {
				id = v
			}
		}
		if !validID(id) {
			return "", fmt.Errorf("record %q has no valid id", t)
		}
		ids = append(ids, id)
	}
	switch len(ids) {
	case 0:
		return "", nil
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("%d STSv1 records", len(ids))
}

// validID is sts-id: 1 to 32 letters and digits.
func validID(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
