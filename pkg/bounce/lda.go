package bounce

import "strings"

// Errors written by local delivery agents (after the MTA accepted the
// message). Their wording is specific enough to decide the reason before
// any generic phrase does. Source: sisimai's LDA table.

type ldaRule struct {
	markers []string            // the agent's signature in the text
	reasons map[string][]string // reason -> phrases
}

var ldaRules = []ldaRule{
	{ // dovecot deliver.c: "Your message to <%t> was automatically rejected:%n%r"
		markers: []string{"was automatically rejected:"},
		reasons: map[string][]string{
			"mailboxfull": {"not enough disk space", "quota exceeded"},
			"userunknown": {"mailbox doesn't exist: "},
		},
	},
	{
		markers: []string{"mail.local: "},
		reasons: map[string][]string{
			"mailboxfull": {"disc quota exceeded", "mailbox full or quota exceeded"},
			"systemerror": {"temporary file write error"},
			"userunknown": {": invalid mailbox path", ": unknown user:", ": user missing home directory", ": user unknown"},
		},
	},
	{
		markers: []string{"procmail: ", "/procmail "},
		reasons: map[string][]string{
			"mailboxfull": {"quota exceeded while writing", "user over quota"},
			"systemerror": {"service unavailable"},
			"systemfull":  {"no space left to finish writing"},
		},
	},
	{
		markers: []string{"maildrop: "},
		reasons: map[string][]string{
			"mailboxfull": {"maildir over quota."},
			"userunknown": {"cannot find system user", "invalid user specified."},
		},
	},
	{
		markers: []string{"vdelivermail: "},
		reasons: map[string][]string{
			"filtered":    {"user does not exist, but will deliver to "},
			"mailboxfull": {"domain is over quota", "user is over quota"},
			"suspend":     {"account is locked email bounced"},
			"userunknown": {"sorry, no mailbox here by that name."},
		},
	},
	{
		markers: []string{"vdeliver: "},
		reasons: map[string][]string{
			"mailboxfull": {"delivery failed due to system quota violation"},
			"userunknown": {"invalid or unknown base user or domain", "invalid or unknown virtual user",
				"user name does not refer to a virtual user"},
		},
	},
}

// ldaOrder fixes the order reasons are tried in, for determinism.
var ldaOrder = []string{"mailboxfull", "userunknown", "suspend", "filtered", "systemfull", "systemerror"}

// localAgent returns the reason when the text is a local delivery agent's
// error; "" otherwise.
func localAgent(fx *facts) string {
	if fx.command != "" && fx.command != "DATA" {
		return ""
	}
	for _, rule := range ldaRules {
		found := false
		for _, mk := range rule.markers {
			if strings.Contains(fx.text, mk) {
				found = true
				break
			}
		}
		if !found {
			continue
		}
		for _, r := range ldaOrder {
			for _, p := range rule.reasons[r] {
				if strings.Contains(fx.text, p) {
					return r
				}
			}
		}
		return "mailererror"
	}
	return ""
}
