package bounce

import "testing"

func TestClassify_readsSMTPReplies(t *testing.T) {
	tests := []struct {
		name     string
		reply    int
		enhanced string
		diag     string
		reason   string
		hard     bool
	}{
		{"unknown user is a hard bounce", 550, "5.1.1", "5.1.1 <kijitora@example.jp>... User Unknown", "userunknown", true},
		{"mailbox full text beats a 5.1.1 code", 550, "5.1.1", "<kijitora@example.jp>... Mailbox Full", "mailboxfull", false},
		{"mailbox full from the status code alone", 452, "4.2.2", "Requested action not taken", "mailboxfull", false},
		{"host unknown from 5.1.2", 550, "5.1.2", "Host unknown", "hostunknown", true},
		{"unroutable address", 550, "", "Unrouteable address", "hostunknown", true},
		{"null MX is notaccept, hard when permanent", 556, "5.1.10", "Recipient address has null MX", "notaccept", true},
		{"notaccept with a 4xx code is soft", 0, "4.3.2", "System not accepting network messages", "notaccept", false},
		{"mailbox moved", 550, "5.1.6", "recipient no longer on server", "hasmoved", true},
		{"spam rejection after DATA", 550, "5.7.1", "Message rejected as spam by Content Filtering", "spamdetected", false},
		{"policy words with 5.7.1", 550, "5.7.1", "Email not accepted for policy reasons", "policyviolation", false},
		{"bare 5.7.1 is a security error", 550, "5.7.1", "Delivery not authorized", "securityerror", false},
		{"DMARC rejection", 550, "5.7.26", "Unauthenticated email from example.jp is not accepted due to domain's DMARC policy", "authfailure", false},
		{"relay denied", 554, "5.7.1", "<kijitora@example.org>: Relay access denied", "norelaying", false},
		{"DNSBL listing", 554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "blocked", false},
		{"missing PTR", 550, "", "Client host rejected: cannot find your hostname", "requireptr", false},
		{"message too large", 552, "5.3.4", "Message size exceeds fixed maximum message size", "emailtoolarge", false},
		{"greylisting style rate limit", 421, "4.7.0", "Too many connections from your IP, please try again slower", "ratelimited", false},
		{"virus", 554, "5.7.0", "Virus detected in message", "virusdetected", false},
		{"suspended account", 550, "5.2.1", "The email account that you tried to reach is disabled", "suspend", false},
		{"sender rejected at MAIL", 553, "5.1.8", "<sender@example.org>... Domain of sender address does not exist", "rejected", false},
		{"syntax error reply", 503, "", "Bad sequence of commands", "syntaxerror", false},
		{"mailer error", 0, "", "X-Unix; procmail: Couldn't create /var/mail/neko", "mailererror", false},
		{"expired in queue", 0, "4.4.7", "retry timeout exceeded", "expired", false},
		{"delivered", 250, "2.1.5", "OK", "delivered", false},
		{"unknown words are onhold", 550, "", "The server said something unusual", "onhold", false},
		{"nothing at all is undefined", 0, "", "", "undefined", false},
		{"STARTTLS required", 530, "5.7.0", "Must issue a STARTTLS command first", "failedstarttls", false},
		{"content error from 5.6.x", 554, "5.6.0", "Message contains invalid header", "contenterror", false},
		{"no such user at RCPT is a bad address", 550, "", "rcpt: 550 No such user here", "userunknown", true},
		{"no such user after DATA is a filter", 550, "", "data: 550 No such user here", "filtered", false},
		{"an unknown sender is not an unknown recipient", 550, "5.1.0", "rcpt: <sender@example.org>: Sender address rejected: User unknown in virtual mailbox table", "rejected", false},
		{"Postfix access map REJECT is a policy, not an unknown user", 554, "5.7.1", "rcpt: <kijitora@example.jp>: Recipient address rejected: Access denied", "securityerror", false},
		{"Exchange Online's unknown recipient keeps its words", 550, "5.4.1", "rcpt: Recipient address rejected: Access denied. AS(201806281)", "userunknown", true},
		{"a DNS server failure is not an unknown host", 550, "", "Host or domain name not found. Name service error for name=example.jp type=MX: Host not found, try again", "networkerror", false},
		{"an unknown host is still one", 550, "", "Host or domain name not found. Name service error for name=example.jp type=MX: Host not found", "hostunknown", true},
		{"greylisting words make a temporary unknown user soft", 450, "4.2.0", "rcpt: <kijitora@example.jp>: Recipient address rejected: User unknown; greylisted, try again later", "userunknown", false},
		{"a bare 450 unknown user stays hard", 450, "4.1.1", "rcpt: <kijitora@example.jp>: Recipient address rejected: User unknown in local recipient table", "userunknown", true},
		{"a disabled mailbox under 5.1.1 is suspended", 550, "5.1.1", "rcpt: <kijitora@example.jp>: Recipient address rejected: mailbox is disabled", "suspend", false},
		{"an inactive user under 5.1.1 is suspended", 550, "5.1.1", "rcpt: User inactive", "suspend", false},
		{"exceeded their quota under 5.1.1 is a full mailbox", 550, "5.1.1", "rcpt: <kijitora@example.jp>: user has exceeded their quota", "mailboxfull", false},
		{"a full mailbox in German", 550, "", "rcpt: Postfach voll", "mailboxfull", false},
		{"a full mailbox in French", 552, "", "rcpt: Boite aux lettres pleine", "mailboxfull", false},
		{"refusing mail from us is not a null MX", 550, "5.7.1", "rcpt: Recipient address rejected: user does not accept mail from this sender", "securityerror", false},
		{"Domino's permanent-error wrapper is not a null MX", 0, "", "Error transferring to mx.example.jp; SMTP Protocol Returned a Permanent Error 550 5.7.1 Unable to relay", "securityerror", false},
		{"the reply inside Domino's wrapper decides", 0, "", "Error transferring to mx.example.jp; SMTP Protocol Returned a Permanent Error 550 5.1.1 Unknown Recipient", "userunknown", true},
		{"mail receiving disabled is one mailbox switched off", 550, "", "Mail receiving disabled", "suspend", false},
		{"an unknown user that speaks of spam is a spam refusal", 550, "", "rcpt: Invalid mailbox: spam detected", "spamdetected", false},
		{"an unknown user that names a block list is a block", 550, "5.7.1", "rcpt: <kijitora@example.jp>: Recipient address rejected: User unknown; blocked using zen.spamhaus.org", "blocked", false},
		{"an unknown user refused by policy is a policy", 550, "5.1.1", "rcpt: <kijitora@example.jp>: Recipient address rejected: Invalid recipient, blocked by policy", "policyviolation", false},
		{"mailbox unavailable because of our IP is a block", 550, "", "rcpt: Requested action not taken: mailbox unavailable, your IP is listed in RBL", "blocked", false},
		{"rejected at the greeting is blocked", 554, "", "greeting: 554 mx.example.jp ESMTP not accepting messages", "blocked", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reason, hard := Classify(tt.reply, tt.enhanced, tt.diag)
			if reason != tt.reason || hard != tt.hard {
				t.Errorf("Classify(%d, %q, %q) = %s/%v, want %s/%v", tt.reply, tt.enhanced, tt.diag, reason, hard, tt.reason, tt.hard)
			}
		})
	}
}

func TestClassify_returnsOnlyKnownReasons(t *testing.T) {
	known := map[string]bool{}
	for _, r := range Reasons {
		known[r] = true
	}
	for _, d := range []string{"", "550 5.1.1 user unknown", "452 4.2.2 over quota", "554 spam", "421 try later"} {
		if r, _ := Classify(0, "", d); !known[r] {
			t.Errorf("Classify(%q) returned %q, not in Reasons", d, r)
		}
	}
}

func TestFindStatus_prefersSpecificCodes(t *testing.T) {
	tests := []struct{ in, want string }{
		{"550 5.1.1 <a@b.example>... User unknown", "5.1.1"},
		{"550 5.0.0 then 5.7.1 access denied", "5.7.1"},
		{"connect to 192.0.2.1 failed", ""},
		{"Mailer v5.2.1 crashed", ""},
		{"451 4.7.650 rate limited", "4.7.650"},
		{"550 5.1.0 5.1.0 - Unknown address error '5.7.1 <x@y.example>... Access denied'", "5.7.1"},
	}
	for _, tt := range tests {
		if got := findStatus(tt.in); got != tt.want {
			t.Errorf("findStatus(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFindReply_skipsNumbersThatAreNotReplies(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"host mx.example.jp[192.0.2.153] said: 550 5.1.1 <a@example.jp>", 550},
		{"Deferred: 421 4.4.2 timeout", 421},
		{"id 550123 queued", 0},
		{"5.5.0 only", 0},
	}
	for _, tt := range tests {
		if got := findReply(tt.in, 0); got != tt.want {
			t.Errorf("findReply(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
