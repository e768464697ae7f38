package bounce

import (
	"strconv"
	"strings"
)

// Reasons lists every reason name Classify and Parse can return (the
// sisimai taxonomy as of sisimai 5.6).
var Reasons = []string{
	"authfailure", "badreputation", "blocked", "contenterror", "delivered", "emailtoolarge", "expired",
	"failedstarttls", "feedback", "filtered", "hasmoved", "hostunknown", "mailboxfull", "mailererror",
	"networkerror", "norelaying", "notaccept", "notcompliantrfc", "onhold", "policyviolation", "ratelimited",
	"rejected", "requireptr", "securityerror", "spamdetected", "suppressed", "suspend", "syntaxerror",
	"systemerror", "systemfull", "undefined", "userunknown", "vacation", "virusdetected",
}

// Classify returns the reason for an SMTP failure and whether it is a hard
// bounce, from the reply code (0 when unknown), the RFC 3463 enhanced
// status ("" when unknown) and the server's text. The sender calls it for
// synchronous rejections so that a 5xx at send time and a later bounce for
// the same cause read the same.
//
// The SMTP step matters (an unknown-user text at RCPT is a bad address,
// after DATA it is a content filter), so the diagnostic may start with the
// step as mail.SMTPError writes it: "rcpt: 550 5.1.1 no such user".
func Classify(replyCode int, enhanced, diagnostic string) (reason string, hard bool) {
	stage, text := splitStage(diagnostic)
	f := finding{
		reply:    replyCode,
		status:   strings.TrimSpace(enhanced),
		diag:     oneLine(text),
		diagType: "SMTP",
		command:  stage,
	}
	if f.status == "" {
		f.status = findStatus(f.diag)
	}
	if f.reply == 0 {
		f.reply = findReply(f.diag, 0)
	}
	if f.command == "" {
		f.command = findCommand(strings.ToLower(f.diag))
	}
	return decide(&f)
}

// stageCommands maps mail.SMTPError stages to SMTP commands.
var stageCommands = map[string]string{
	"connect": "CONN", "greeting": "CONN", "ehlo": "EHLO", "helo": "HELO", "starttls": "STARTTLS",
	"auth": "AUTH", "mail": "MAIL", "rcpt": "RCPT", "data": "DATA", "dot": "DATA", "bdat": "DATA",
}

// splitStage removes a leading "rcpt: " style SMTP stage from s.
func splitStage(s string) (command, rest string) {
	t := strings.TrimSpace(s)
	if i := strings.IndexByte(t, ':'); i > 0 && i < 10 {
		if c, ok := stageCommands[strings.ToLower(t[:i])]; ok {
			return c, strings.TrimSpace(t[i+1:])
		}
	}
	return "", s
}

// retryable are reasons a reader may set tentatively; the classifier still
// looks for something more specific.
var retryable = map[string]bool{
	"undefined": true, "onhold": true, "systemerror": true, "securityerror": true,
	"expired": true, "networkerror": true, "hostunknown": true, "userunknown": true,
}

// explicit reports whether a reason is a real decision.
func explicit(r string) bool { return r != "" && r != "undefined" && r != "onhold" }

// exceptData are SMTP commands before DATA: content-based reasons
// (filtered, spam, virus) cannot come from them.
func beforeData(cmd string) bool {
	switch cmd {
	case "CONN", "EHLO", "HELO", "MAIL", "RCPT":
		return true
	}
	return false
}

// facts is the normalised input of the classifier.
type facts struct {
	reply    int
	status   string
	text     string // lower-cased diagnostic plus context
	diag     string // lower-cased diagnostic alone
	hasDiag  bool   // the finding has a diagnostic of its own
	command  string
	action   string
	diagType string
	domain   string // recipient domain
	rhost    string
	lhost    string
}

// decide classifies a finding and sets the hard-bounce verdict.
func decide(f *finding) (string, bool) {
	fx := facts{
		reply:    f.reply,
		status:   f.status,
		text:     strings.ToLower(strings.TrimSpace(f.diag + " " + f.ctx)),
		diag:     strings.ToLower(f.diag),
		hasDiag:  strings.TrimSpace(f.diag) != "",
		command:  f.command,
		action:   f.action,
		diagType: strings.ToUpper(f.diagType),
		rhost:    strings.ToLower(f.rhost),
		lhost:    strings.ToLower(f.lhost),
	}
	if at := strings.LastIndex(f.recipient, "@"); at >= 0 {
		fx.domain = strings.ToLower(f.recipient[at+1:])
	}
	if fx.reply == 0 {
		fx.reply = findReply(fx.text, 0)
	}
	reason := f.reason
	if reason == "" || retryable[reason] {
		if r := classify(&fx, reason); explicit(r) || reason == "" {
			reason = r
		}
	}
	if reason == "" {
		reason = "undefined"
	}
	return reason, isHard(reason, fx, f.soft)
}

// classify decides the reason from the facts. tentative is a reason a
// reader suggested (possibly "").
func classify(fx *facts, tentative string) string {
	if strings.HasPrefix(fx.status, "2.") {
		return "delivered"
	}
	if r := localAgent(fx); r != "" {
		return r
	}
	if r := remoteHost(fx); explicit(r) {
		return r
	}
	r := generic(fx, tentative)
	if r == "userunknown" {
		if p := contradicted(fx.diag); p != "" {
			return p
		}
	}
	return r
}

// contradicted returns the soft reason a diagnostic also gives when it
// reads as an unknown user but speaks of spam, a block list or a policy
// ("Invalid recipient, blocked by policy", "mailbox unavailable, your IP
// is listed in RBL"): the server refused us, and whether the mailbox
// exists is not what it said. "" when the words agree.
func contradicted(diag string) string {
	switch {
	case pContraBlock.match(diag):
		return "blocked"
	case pContraSpam.match(diag):
		return "spamdetected"
	case pContraPolicy.match(diag):
		return "policyviolation"
	}
	return ""
}

var (
	pContraSpam   = phrases{any: []string{"spam"}}
	pContraBlock  = phrases{any: []string{"blocked using", "blacklist", "blocklist", " rbl", "dnsbl", "spamhaus", "your ip"}}
	pContraPolicy = phrases{any: []string{"policy", "not permitted to send"}}
)

// generic is classify without the local-agent and provider readers.
func generic(fx *facts, tentative string) string {
	r := ""
	if fx.diagType == "SMTP" || fx.diagType == "" {
		r = firstPass(fx, tentative)
	}
	if r == "" && explicit(tentative) {
		r = tentative
	}
	if r == "" {
		r = secondPass(fx)
		if r == "" && fx.action == "delayed" {
			r = "expired"
		}
		if r == "" && tentative != "" {
			r = tentative
		}
		if r == "" {
			switch {
			case pVacation.match(fx.text):
				r = "vacation"
			case fx.hasDiag:
				// Something was said but nothing recognisable.
				r = "onhold"
			default:
				r = "undefined"
			}
		}
	}
	return r
}

// firstPass checks the reasons whose evidence is strong enough to trust
// over the status code, in precedence order.
// A reason a reader suggested (tr) counts as evidence for that reason at
// its place in the order: an earlier, more specific reason still wins.
func firstPass(fx *facts, tr string) string {
	sn := statusName(fx.status)
	t := fx.text
	switch {
	case tr == "mailboxfull" || sn == "mailboxfull" || pMailboxFull.match(t):
		return "mailboxfull"
	case tr == "emailtoolarge" || sn == "emailtoolarge" || pEmailTooLarge.match(t):
		return "emailtoolarge"
	case tr == "suspend" || fx.reply == 525 || pSuspend.match(t):
		return "suspend"
	case tr == "hasmoved" || pHasMoved.match(t):
		return "hasmoved"
	case tr == "norelaying" || fx.command != "CONN" && fx.command != "EHLO" && fx.command != "HELO" && pNoRelaying.match(t):
		return "norelaying"
	case tr == "authfailure" || sn == "authfailure" || pAuthFailure.match(t):
		return "authfailure"
	case tr == "userunknown" || probeUserUnknown(fx, sn):
		return "userunknown"
	case tr == "filtered" || probeFiltered(fx, sn):
		return "filtered"
	case tr == "requireptr" || sn == "requireptr" || pRequirePTR.match(t):
		return "requireptr"
	case tr == "notcompliantrfc" || pNotCompliantRFC.match(t):
		return "notcompliantrfc"
	case tr == "badreputation" || pBadReputation.match(t):
		return "badreputation"
	case tr == "contenterror" || !probeSpam(fx, sn) && (sn == "contenterror" || pContentError.match(t)):
		return "contenterror"
	case tr == "rejected" || probeRejected(fx, sn):
		return "rejected"
	case tr == "hostunknown" || probeHostUnknown(fx, sn):
		return "hostunknown"
	case tr == "spamdetected" || probeSpam(fx, sn):
		return "spamdetected"
	case tr == "ratelimited" || sn == "ratelimited" || pRateLimited.match(t):
		return "ratelimited"
	case tr == "blocked" || sn == "blocked" || pBlocked.match(t):
		return "blocked"
	}
	return ""
}

func probeUserUnknown(fx *facts, sn string) bool {
	if sn == "userunknown" {
		// 5.1.1 with words of another reason is that other reason.
		for _, p := range []*phrases{&pNoRelaying, &pBlocked, &pMailboxFull, &pHasMoved, &pRejected, &pNotAccept} {
			if p.match(fx.text) {
				return false
			}
		}
		return true
	}
	if strings.HasPrefix(fx.status, "5.7.") && strings.Contains(fx.text, "recipient address rejected: access denied") {
		// Postfix's check_recipient_access REJECT: a local policy
		// about this recipient, not proof that it does not exist
		// (Exchange Online's unknown recipient says the same words
		// with 5.4.1, and stays an unknown user).
		return false
	}
	return fx.command == "RCPT" && pUserUnknown.match(fx.text)
}

func probeFiltered(fx *facts, sn string) bool {
	if sn == "rejected" {
		// 5.1.7/5.1.8 are about the sender's address: words like "does
		// not exist" then describe the sender, not the recipient.
		return false
	}
	if sn == "filtered" {
		return pUserUnknown.match(fx.text) || pFiltered.match(fx.text)
	}
	if beforeData(fx.command) {
		return false
	}
	return pFiltered.match(fx.text) || pUserUnknown.match(fx.text)
}

func probeRejected(fx *facts, sn string) bool {
	if sn == "rejected" {
		return true
	}
	if strings.Contains(fx.text, "sender address rejected") {
		// Postfix's reject_unlisted_sender says "Sender address
		// rejected: User unknown in ... table" with 5.1.0 or 5.1.1: the
		// unknown user is our sender, and the recipient is fine.
		return true
	}
	switch {
	case fx.command == "MAIL":
		return pRejected.match(fx.text)
	case fx.command == "DATA" && sn != "userunknown":
		return pRejected.match(fx.text)
	case !explicit(sn) || sn == "securityerror" || sn == "systemerror":
		return pRejected.match(fx.text)
	}
	return false
}

func probeHostUnknown(fx *facts, sn string) bool {
	if sn == "hostunknown" {
		return !pNetworkError.match(fx.text)
	}
	// "Host not found, try again" is a DNS server failure, not a
	// domain that does not exist.
	return pHostUnknown.match(fx.text) && !pNetworkError.match(fx.text)
}

func probeSpam(fx *facts, sn string) bool {
	if fx.status == "" {
		return false
	}
	if sn == "spamdetected" {
		return true
	}
	if beforeData(fx.command) {
		return false
	}
	return pSpamDetected.match(fx.text)
}

// secondPass is the fallback: broad phrases, then the status code's own
// meaning, then the shape of the failure.
func secondPass(fx *facts) string {
	sn := statusName(fx.status)
	t := fx.text
	if sn == "" || retryable[sn] || fx.diagType != "SMTP" {
		for _, r := range []struct {
			name string
			p    *phrases
		}{
			{"mailboxfull", &pMailboxFull}, {"authfailure", &pAuthFailure}, {"badreputation", &pBadReputation},
			{"ratelimited", &pRateLimited}, {"spamdetected", &pSpamDetected}, {"virusdetected", &pVirusDetected},
			{"policyviolation", &pPolicyViolation}, {"norelaying", &pNoRelaying}, {"systemerror", &pSystemError},
			{"networkerror", &pNetworkError}, {"suspend", &pSuspend}, {"contenterror", &pContentError},
			{"systemfull", &pSystemFull}, {"notaccept", &pNotAccept}, {"expired", &pExpired},
			{"failedstarttls", &pFailedSTARTTLS}, {"securityerror", &pSecurityError}, {"mailererror", &pMailerError},
		} {
			if r.p.match(t) {
				return r.name
			}
		}
		if fx.reply == 521 || fx.reply == 556 {
			return "notaccept"
		}
		if fx.reply == 523 || fx.reply == 524 || fx.reply == 538 || fx.command == "STARTTLS" {
			return "failedstarttls"
		}
		if sn != "" {
			return sn
		}
		if len(fx.status) > 3 {
			switch fx.status[:3] {
			case "5.6", "4.6":
				return "contenterror"
			case "5.7", "4.7":
				return "securityerror"
			}
		}
		if strings.HasPrefix(fx.diagType, "X-UNIX") {
			return "mailererror"
		}
		if (fx.reply > 400 && fx.reply < 408) || (fx.reply > 500 && fx.reply < 508) {
			return "syntaxerror"
		}
		if fx.action == "delayed" || fx.action == "expired" {
			return "expired"
		}
		if fx.command == "EHLO" || fx.command == "HELO" || fx.command == "CONN" {
			// Refused at the greeting: the client was not welcome.
			return "blocked"
		}
		return ""
	}
	return sn
}

// statusName maps an RFC 3463 code (or a sisimai pseudo-code 5.0.9xx) to
// the reason it implies on its own; "" when the code is too vague.
func statusName(code string) string {
	if code == "" {
		return ""
	}
	if r, ok := statusReasons[code]; ok {
		return r
	}
	// Pseudo-codes X.0.9NN used by sisimai-style readers.
	if len(code) == 7 && code[1:5] == ".0.9" {
		return pseudoReasons[code[4:]]
	}
	return ""
}

var statusReasons = map[string]string{
	"2.1.5": "delivered",
	"4.1.6": "hasmoved", "4.1.7": "rejected", "4.1.8": "rejected", "4.1.9": "systemerror",
	"4.2.1": "blocked", "4.2.2": "mailboxfull", "4.2.3": "emailtoolarge", "4.2.4": "filtered",
	"4.3.1": "systemfull", "4.3.2": "notaccept", "4.3.3": "systemerror", "4.3.5": "systemerror",
	"4.4.1": "expired", "4.4.2": "networkerror", "4.4.3": "systemerror", "4.4.4": "networkerror",
	"4.4.5": "systemfull", "4.4.6": "networkerror", "4.4.7": "expired", "4.4.8": "networkerror",
	"4.5.3": "systemerror", "4.5.5": "systemerror",
	"4.6.0": "contenterror", "4.6.2": "contenterror", "4.6.5": "contenterror",
	"4.7.1": "blocked", "4.7.2": "blocked", "4.7.5": "securityerror", "4.7.6": "securityerror", "4.7.7": "securityerror",
	"4.7.12": "securityerror", "4.7.15": "securityerror", "4.7.16": "emailtoolarge", "4.7.24": "authfailure",
	"4.7.25": "requireptr", "4.7.26": "authfailure",
	"5.1.0": "userunknown", "5.1.1": "userunknown", "5.1.2": "hostunknown", "5.1.3": "userunknown",
	"5.1.4": "filtered", "5.1.6": "hasmoved", "5.1.7": "rejected", "5.1.8": "rejected", "5.1.9": "systemerror",
	"5.1.10": "notaccept",
	"5.2.0":  "filtered", "5.2.1": "filtered", "5.2.2": "mailboxfull", "5.2.3": "emailtoolarge", "5.2.4": "filtered",
	"5.3.0": "systemerror", "5.3.1": "systemfull", "5.3.2": "notaccept", "5.3.3": "systemerror",
	"5.3.4": "emailtoolarge", "5.3.5": "systemerror",
	"5.4.0": "networkerror", "5.4.3": "systemerror", "5.4.4": "hostunknown",
	"5.5.2": "syntaxerror", "5.5.3": "ratelimited", "5.5.4": "systemerror", "5.5.5": "systemerror", "5.5.6": "syntaxerror",
	"5.6.0": "contenterror", "5.6.1": "contenterror", "5.6.2": "contenterror", "5.6.3": "contenterror",
	"5.6.5": "contenterror", "5.6.6": "contenterror", "5.6.7": "contenterror", "5.6.8": "contenterror",
	"5.6.9": "contenterror",
	"5.7.0": "securityerror", "5.7.1": "securityerror", "5.7.2": "securityerror", "5.7.3": "securityerror",
	"5.7.4": "securityerror", "5.7.5": "securityerror", "5.7.6": "securityerror", "5.7.7": "securityerror",
	"5.7.8": "securityerror", "5.7.9": "securityerror", "5.7.10": "securityerror", "5.7.11": "securityerror",
	"5.7.13": "suspend", "5.7.14": "securityerror", "5.7.15": "securityerror", "5.7.16": "emailtoolarge",
	"5.7.17": "hasmoved", "5.7.18": "hasmoved", "5.7.19": "securityerror", "5.7.20": "authfailure",
	"5.7.21": "authfailure", "5.7.22": "authfailure", "5.7.23": "authfailure", "5.7.24": "authfailure",
	"5.7.25": "requireptr", "5.7.26": "authfailure", "5.7.27": "notaccept", "5.7.28": "spamdetected",
	"5.7.29": "authfailure", "5.7.30": "failedstarttls",
}

// pseudoReasons are sisimai's internal X.0.9NN codes.
var pseudoReasons = map[string]string{
	"900": "undefined", "901": "onhold", "902": "syntaxerror", "903": "suppressed", "909": "norelaying",
	"910": "filtered", "911": "userunknown", "912": "hostunknown", "916": "hasmoved", "918": "rejected",
	"921": "suspend", "922": "mailboxfull", "923": "emailtoolarge", "924": "filtered", "926": "authfailure",
	"930": "systemerror", "931": "systemfull", "932": "notaccept", "934": "emailtoolarge", "939": "mailererror",
	"944": "networkerror", "945": "ratelimited", "946": "ratelimited", "947": "expired", "960": "contenterror",
	"970": "securityerror", "971": "blocked", "972": "policyviolation", "973": "requireptr", "974": "notcompliantrfc",
	"975": "badreputation", "976": "failedstarttls", "980": "spamdetected", "981": "virusdetected",
}

// isHard reports whether a reason is a hard bounce: the address itself is
// bad (userunknown, hostunknown, hasmoved), or the domain accepts no mail
// at all (notaccept) and the failure is permanent.
func isHard(reason string, fx facts, soft bool) bool {
	switch reason {
	case "userunknown", "hostunknown", "hasmoved":
		// A temporary failure that says so ("greylisted", "try again
		// later", Postfix's "address verification in progress") has not
		// judged the address yet. A bare 450 "user unknown" stays hard:
		// some servers give every refusal a 4xx code.
		return !(temporary(fx) && pTemporary.match(fx.text))
	case "notaccept":
		if soft {
			return false
		}
		if strings.HasPrefix(fx.status, "5") || fx.reply >= 500 {
			return true
		}
		if strings.HasPrefix(fx.status, "4") || (fx.reply >= 400 && fx.reply < 500) {
			return false
		}
		return !strings.Contains(fx.text, " temporar") && !strings.Contains(fx.text, " persistent")
	}
	return false
}

// temporary reports whether the failure carries a 4xx code: the status
// when there is one, else the reply.
func temporary(fx facts) bool {
	if fx.status != "" {
		return strings.HasPrefix(fx.status, "4")
	}
	return fx.reply >= 400 && fx.reply < 500
}

// pTemporary are words by which a server says it has not decided yet.
var pTemporary = phrases{
	any: []string{
		"greylist", "graylist", "try again later", "please try later", "try later", "come back later",
		"verification in progress", "temporarily unable to verify", "temporary lookup failure",
	},
}

// replyString renders a reply code; "" for 0.
func replyString(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}
