package health

import (
	_ "embed"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"gopkg.in/yaml.v3"

	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

// Rule is the budget of one destination. Zero fields take the shaping's
// default rule's.
type Rule struct {
	// MaxConnections is how many connections every sender replica
	// together keeps open to the destination.
	MaxConnections int `yaml:"max_connections"`
	// MaxMessagesPerConnection closes a connection after that many
	// messages (receivers count them, and some refuse more).
	MaxMessagesPerConnection int `yaml:"max_messages_per_connection"`
	// MessagesPerMinute is the destination's rate over every replica; 0
	// means no limit.
	MessagesPerMinute int `yaml:"messages_per_minute"`
	// ThrottlePause is how long a throttling reply pauses the destination
	// the first time; each throttling reply during the ramp afterwards
	// doubles it, up to MaxThrottlePause.
	ThrottlePause    time.Duration `yaml:"throttle_pause"`
	MaxThrottlePause time.Duration `yaml:"max_throttle_pause"`
	// RampStep is how long each doubling of the connections takes after a
	// pause: 1, 2, 4, ... up to MaxConnections.
	RampStep time.Duration `yaml:"ramp_step"`
}

// The built-in values when neither the shaping file nor its default rule
// sets one. Postfix's default_destination_concurrency_limit is 20 and its
// smtp_connection_reuse_count_limit 100.
const (
	defaultConns            = 20
	defaultMsgsPerConn      = 100
	defaultThrottlePause    = 5 * time.Minute
	defaultMaxThrottlePause = time.Hour
	defaultRampStep         = time.Minute
)

func (r Rule) throttlePause() time.Duration { return orDefault(r.ThrottlePause, defaultThrottlePause) }
func (r Rule) maxThrottlePause() time.Duration {
	return orDefault(r.MaxThrottlePause, defaultMaxThrottlePause)
}
func (r Rule) rampStep() time.Duration { return orDefault(r.RampStep, defaultRampStep) }

func orDefault[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// over fills r's zero fields from d.
func (r Rule) over(d Rule) Rule {
	r.MaxConnections = orDefault(r.MaxConnections, d.MaxConnections)
	r.MaxMessagesPerConnection = orDefault(r.MaxMessagesPerConnection, d.MaxMessagesPerConnection)
	r.MessagesPerMinute = orDefault(r.MessagesPerMinute, d.MessagesPerMinute)
	r.ThrottlePause = orDefault(r.ThrottlePause, d.ThrottlePause)
	r.MaxThrottlePause = orDefault(r.MaxThrottlePause, d.MaxThrottlePause)
	r.RampStep = orDefault(r.RampStep, d.RampStep)
	return r
}

func (r Rule) validate(where string) error {
	switch {
	case r.MaxConnections < 0 || r.MaxConnections > 1000:
		return fmt.Errorf("%s: max_connections %d is outside 0..1000", where, r.MaxConnections)
	case r.MaxMessagesPerConnection < 0:
		return fmt.Errorf("%s: max_messages_per_connection %d is negative", where, r.MaxMessagesPerConnection)
	case r.MessagesPerMinute < 0:
		return fmt.Errorf("%s: messages_per_minute %d is negative", where, r.MessagesPerMinute)
	case r.ThrottlePause < 0 || r.MaxThrottlePause < 0 || r.RampStep < 0:
		return fmt.Errorf("%s: throttle_pause, max_throttle_pause and ramp_step must not be negative", where)
	case r.MaxThrottlePause != 0 && r.MaxThrottlePause < r.ThrottlePause:
		return fmt.Errorf("%s: max_throttle_pause %s is shorter than throttle_pause %s", where, r.MaxThrottlePause, r.ThrottlePause)
	}
	return nil
}

// Site is a mailbox provider: every domain whose MX hosts end in one of
// MX shares its budget, as Gmail counts connections and messages per
// sending IP whatever the recipient domain (gmail.com and every Google
// Workspace domain).
type Site struct {
	Name string `yaml:"name"`
	// MX are suffixes of MX host names (".google.com").
	MX   []string `yaml:"mx"`
	Rule `yaml:",inline"`
}

// Shaping is the traffic shaping of direct MX delivery, and the default
// rule that relays take their throttling pause and ramp from.
type Shaping struct {
	Default Rule   `yaml:"default"`
	Sites   []Site `yaml:"sites"`
}

//go:embed shaping.yaml
var defaultShapingYAML []byte

// DefaultShaping is the built-in shaping: sane budgets for the big
// providers (deploy/shaping.example.yaml is the same file, to copy and
// change).
func DefaultShaping() Shaping {
	s, err := ParseShaping(defaultShapingYAML)
	if err != nil {
		panic("health: the built-in shaping.yaml is invalid: " + err.Error())
	}
	return s
}

// LoadShaping reads a shaping file over the built-in shaping: its default
// rule's fields replace the built-in ones they set, and its sites replace
// the built-in sites of the same name or add to them. An empty path is the
// built-in shaping.
func LoadShaping(path string) (Shaping, error) {
	base := DefaultShaping()
	if path == "" {
		return base, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Shaping{}, fmt.Errorf("read the shaping file: %w", err)
	}
	over, err := ParseShaping(b)
	if err != nil {
		return Shaping{}, fmt.Errorf("shaping file %s: %w", path, err)
	}
	base.Default = over.Default.over(base.Default)
	for _, s := range over.Sites {
		if i := slices.IndexFunc(base.Sites, func(b Site) bool { return b.Name == s.Name }); i >= 0 {
			base.Sites[i] = s
		} else {
			base.Sites = append(base.Sites, s)
		}
	}
	return base, nil
}

// ParseShaping parses and checks a shaping document.
func ParseShaping(b []byte) (Shaping, error) {
	var s Shaping
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return Shaping{}, fmt.Errorf("parse shaping: %w", err)
	}
	if err := s.Default.validate("default"); err != nil {
		return Shaping{}, err
	}
	for i, site := range s.Sites {
		where := fmt.Sprintf("site %d (%s)", i+1, site.Name)
		if site.Name == "" || len(site.MX) == 0 {
			return Shaping{}, fmt.Errorf("%s: a site needs a name and at least one MX suffix", where)
		}
		if err := site.validate(where); err != nil {
			return Shaping{}, err
		}
		for j, mx := range site.MX {
			s.Sites[i].MX[j] = strings.ToLower(strings.TrimSuffix(mx, "."))
		}
	}
	return s, nil
}

// Destination is where a delivery goes, as the shaping and the throttling
// state know it.
type Destination struct {
	// Key identifies the destination's shared state: "relay:<tenant>/<id>",
	// "default-relay", "site:<name>" or "mx:<host>".
	Key string
	// Name is what people read: "relay O365", "gmail.com (google)".
	Name string
	Rule Rule
}

// defaultRule is the default rule with the built-in values filled in.
func (s Shaping) defaultRule() Rule {
	return s.Default.over(Rule{
		MaxConnections: defaultConns, MaxMessagesPerConnection: defaultMsgsPerConn,
		ThrottlePause: defaultThrottlePause, MaxThrottlePause: defaultMaxThrottlePause, RampStep: defaultRampStep,
	})
}

// ForRelay is a tenant relay as a destination: its connections and
// messages per minute are the relay's own settings (max_connections,
// rate_per_second, which quota applies), the throttling pause and ramp
// the default rule's.
func (s Shaping) ForRelay(tenantID string, r *mailbusv1.Relay) Destination {
	rule := s.defaultRule()
	rule.MaxConnections = int(r.GetMaxConnections())
	rule.MessagesPerMinute = 0
	name := r.GetName()
	if name == "" {
		name = r.GetId()
	}
	return Destination{Key: "relay:" + tenantID + "/" + r.GetId(), Name: "relay " + name, Rule: rule}
}

// ForDefaultRelay is the platform's default relay as a destination.
func (s Shaping) ForDefaultRelay(addr string, maxConns int) Destination {
	rule := s.defaultRule()
	rule.MaxConnections = maxConns
	rule.MessagesPerMinute = 0
	return Destination{Key: "default-relay", Name: "the default relay " + addr, Rule: rule}
}

// ForMX is the destination of mail to domain, whose MX hosts are hosts in
// preference order: the first site that one of the hosts belongs to, else
// the most preferred host itself under the default rule.
func (s Shaping) ForMX(domain string, hosts []string) Destination {
	def := s.defaultRule()
	for _, site := range s.Sites {
		for _, h := range hosts {
			h = strings.ToLower(strings.TrimSuffix(h, "."))
			for _, suffix := range site.MX {
				if h == strings.TrimPrefix(suffix, ".") || strings.HasSuffix(h, "."+strings.TrimPrefix(suffix, ".")) {
					return Destination{Key: "site:" + site.Name, Name: domain + " (" + site.Name + ")", Rule: site.Rule.over(def)}
				}
			}
		}
	}
	key := domain
	if len(hosts) > 0 {
		key = strings.ToLower(strings.TrimSuffix(hosts[0], "."))
	}
	return Destination{Key: "mx:" + key, Name: domain, Rule: def}
}

func redisRatePerMinute(n int) redis_rate.Limit {
	return redis_rate.Limit{Rate: n, Period: time.Minute, Burst: max(1, n/60)}
}
