package bounce

import (
	"strconv"
	"strings"
)

// Provider-specific readings of error texts. Large mailbox providers
// document their own codes and phrases (Gmail's, Microsoft's 5.7.5xx,
// La Poste's LPN/OFR numbers, Cox's AUP#, ...); where a bounce comes from
// one of them, its documentation beats the generic phrase tables. The
// provider list and the code tables follow sisimai's Rhost modules.

// rule is one phrase (lower-case) and the reason it means.
type rule struct{ reason, phrase string }

// firstRule returns the reason of the first rule whose phrase is in t.
func firstRule(t string, rules []rule) string {
	for _, r := range rules {
		if strings.Contains(t, r.phrase) {
			return r.reason
		}
	}
	return ""
}

// provider is a mailbox provider recognised by its host names.
type provider struct {
	name  string
	hosts []string // suffixes of the recipient domain, remote or local MTA
	read  func(fx *facts) string
}

var providers = []provider{
	{"Aol", []string{".mail.aol.com", ".mx.aol.com"}, readAol},
	{"Apple", []string{".mail.icloud.com", ".apple.com", ".me.com"}, readApple},
	{"Cloudflare", []string{".mx.cloudflare.net"}, readCloudflare},
	{"Cox", []string{"cox.net"}, readCox},
	{"Facebook", []string{".facebook.com"}, readFacebook},
	{"FrancePTT", []string{".laposte.net", ".orange.fr", ".wanadoo.fr"}, readFrancePTT},
	{"GoDaddy", []string{"smtp.secureserver.net", "mailstore1.secureserver.net"}, readGoDaddy},
	{"Google", []string{"aspmx.l.google.com", "gmail-smtp-in.l.google.com"}, readGoogle},
	{"GSuite", []string{"googlemail.com"}, readGSuite},
	{"IUA", []string{".email.ua"}, readIUA},
	{"KDDI", []string{".ezweb.ne.jp", "msmx.au.com"}, readKDDI},
	{"MessageLabs", []string{".messagelabs.com"}, readMessageLabs},
	{"Microsoft", []string{".prod.outlook.com", ".protection.outlook.com", ".onmicrosoft.com", ".exchangelabs.com"}, readMicrosoft},
	{"Mimecast", []string{".mimecast.com"}, readMimecast},
	{"NTTDOCOMO", []string{"mfsmax.docomo.ne.jp"}, readDocomo},
	{"Outlook", []string{".hotmail.com"}, readOutlook},
	{"Spectrum", []string{"charter.net"}, readSpectrum},
	{"Tencent", []string{".qq.com"}, readTencent},
	{"YahooInc", []string{".yahoodns.net"}, readYahooInc},
	{"Zoho", []string{".zoho.com", ".zohomail.com"}, readZoho},
}

// providerFor picks the provider by recipient domain, then remote MTA,
// then the reporting MTA.
func providerFor(fx *facts) *provider {
	if d := fx.domain; d != "" {
		for i := range providers {
			for _, h := range providers[i].hosts {
				if h == d || h == "."+d || strings.HasSuffix(h, "."+d) {
					return &providers[i]
				}
			}
		}
	}
	for _, host := range []string{fx.rhost, fx.lhost} {
		if host == "" {
			continue
		}
		for i := range providers {
			for _, h := range providers[i].hosts {
				if strings.HasSuffix(host, h) {
					return &providers[i]
				}
			}
		}
	}
	return nil
}

// remoteHost applies the provider's rules; "" when none applies.
func remoteHost(fx *facts) string {
	if fx.text == "" {
		return ""
	}
	p := providerFor(fx)
	if p == nil {
		return ""
	}
	return p.read(fx)
}

// statusParts splits "5.7.606" into class, subject and detail numbers.
func statusParts(s string) (class, subject, detail int, ok bool) {
	p := strings.Split(s, ".")
	if len(p) != 3 {
		return 0, 0, 0, false
	}
	var err error
	if class, err = strconv.Atoi(p[0]); err != nil {
		return 0, 0, 0, false
	}
	if subject, err = strconv.Atoi(p[1]); err != nil {
		return 0, 0, 0, false
	}
	if detail, err = strconv.Atoi(p[2]); err != nil {
		return 0, 0, 0, false
	}
	return class, subject, detail, true
}

func readAol(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"hostunknown", "host or domain name not found"},
		{"notaccept", "type=mx: malformed or unexpected name server reply"},
	})
}

func readApple(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"authfailure", "s dmarc policy"},
		{"authfailure", "blocked for failing both spf and dkim autentication checks"},
		{"authfailure", "blocked for failing both spf and dkim authentication checks"},
		{"blocked", "rejected due to having a domain present in the spamhaus"},
		{"blocked", "rejected due to listing in spamhaus"},
		{"blocked", "blocked - see https://support.proofpoint.com/dnsbl-lookup"},
		{"blocked", "not accepting connections"},
		{"hasmoved", "recipient no longer on server"},
		{"mailboxfull", "user is over quota"},
		{"norelaying", "relay access denied"},
		{"notaccept", "host/domain does not accept mail"},
		{"policyviolation", "due to local policy"},
		{"rejected", "sender address rejected"},
		{"ratelimited", "due to excessive volume"},
		{"userunknown", "inactive email address"},
		{"userunknown", "user does not exist"},
		{"userunknown", "unknown or illegal alias"},
	})
}

func readCloudflare(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"blocked", "found on one or more dnsbls"},
		{"systemerror", "upstream error"},
	})
}

// coxCodes are Cox's AUP# error codes.
var coxCodes = map[string]string{
	"cxbl": "blocked", "cxdns": "requireptr", "cxsndr": "authfailure", "cxsmtp": "rejected",
	"cxcnct": "ratelimited", "cxmxrt": "ratelimited", "cdrbl": "blocked", "cxthrt": "securityerror",
	"cxmj": "securityerror", "ipbl0001": "blocked", "ipbl0010": "blocked", "ipbl0100": "blocked",
	"ipbl0011": "blocked", "ipbl0101": "blocked", "ipbl0110": "blocked", "ipbl0111": "blocked",
	"ipbl1000": "blocked", "ipbl1001": "blocked", "ipbl1010": "blocked", "ipbl1011": "blocked",
	"ipbl1100": "blocked", "ipbl1101": "blocked", "ipbl1110": "blocked", "ipbl1111": "blocked",
	"ipbl00001": "blocked", "urlbl011": "spamdetected", "urlbl101": "spamdetected",
	"urlbl110": "spamdetected", "urlbl1001": "spamdetected",
}

func readCox(fx *facts) string {
	if i := strings.Index(fx.text, "aup#"); i >= 0 {
		code := fx.text[i+4:]
		if j := strings.IndexAny(code, " \t,;:)"); j >= 0 {
			code = code[:j]
		}
		if r := coxCodes[code]; r != "" {
			return r
		}
	}
	return firstRule(fx.text, []rule{
		{"blocked", "cox too many bad commands from"},
		{"blocked", "too many invalid recipients"},
		{"requireptr", "dns check failure - try again later"},
		{"requireptr", "rejected - no rdns"},
		{"policyviolation", "esmtp no data before greeting"},
		{"policyviolation", "attachment extension is forbidden"},
		{"rejected", "sender rejected"},
		{"systemerror", "esmtp server temporarily not available"},
		{"ratelimited", "too many sessions from"},
		{"ratelimited", "requested action aborted: try again later"},
		{"ratelimited", "message threshold exceeded"},
		{"userunknown", "recipient rejected"},
	})
}

// facebookCodes are Facebook's postmaster response codes.
var facebookCodes = map[string]string{
	"pol-p7": "authfailure", "pol-p1": "blocked", "pol-p2": "blocked", "pol-p3": "blocked",
	"pol-p4": "blocked", "pol-t1": "blocked", "pol-t2": "blocked", "pol-t3": "blocked",
	"msg-p2": "contenterror", "rcp-p2": "filtered", "rcp-p3": "filtered", "msg-p1": "emailtoolarge",
	"int-p2": "emailtoolarge", "msg-p3": "notcompliantrfc", "dns-p1": "rejected", "dns-p2": "rejected",
	"dns-t1": "rejected", "dns-p3": "requireptr", "dns-t2": "requireptr", "pol-p6": "spamdetected",
	"rcp-t4": "suspend", "rcp-t1": "systemerror", "con-t1": "ratelimited", "con-t2": "ratelimited",
	"con-t3": "ratelimited", "con-t4": "ratelimited", "msg-t1": "ratelimited", "rcp-p1": "userunknown",
	"int-p1": "userunknown", "int-p3": "userunknown", "int-p4": "userunknown", "pol-p5": "virusdetected",
}

func readFacebook(fx *facts) string {
	t := fx.text
	for i := 3; i+3 <= len(t); i++ {
		if t[i] != '-' {
			continue
		}
		if r := facebookCodes[t[i-3:i+3]]; r != "" {
			return r
		}
	}
	return ""
}

// francePTTCodes are the numbers after La Poste's LPN and Orange's OFR
// labels.
var francePTTCodes = map[string]string{
	"101": "blocked", "102": "blocked", "103": "blocked", "104": "ratelimited", "305": "securityerror",
	"401": "authfailure", "402": "securityerror", "403": "rejected", "405": "rejected", "415": "rejected",
	"416": "userunknown", "417": "mailboxfull", "420": "suspend", "421": "rejected", "426": "suspend",
	"505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "emailtoolarge",
	"517": "authfailure", "630": "policyviolation", "999": "blocked",
}

func readFrancePTT(fx *facts) string {
	t := strings.ReplaceAll(fx.text, "_", "-")
	for _, label := range []string{"lpn", "lpnaaa", "ofr", "ouk"} {
		i := strings.LastIndex(t, label)
		if i < 0 {
			continue
		}
		tok := t[i:]
		if j := strings.IndexAny(tok, " \t)]"); j >= 0 {
			tok = tok[:j]
		}
		tok = strings.TrimRight(tok, ".,;")
		for code, r := range francePTTCodes {
			if strings.HasSuffix(tok, code) {
				return r
			}
		}
		break
	}
	if strings.Contains(t, "spf/dns de votre nom de domaine") {
		return "authfailure"
	}
	return ""
}

// goDaddyCodes are GoDaddy's IBnnn codes.
var goDaddyCodes = map[string]string{
	"ib401": "securityerror", "ib501": "notcompliantrfc", "ib502": "notcompliantrfc", "ib506": "rejected",
	"ib508": "authfailure", "ib108": "requireptr", "ib212": "spamdetected", "ib705": "virusdetected",
	"ib605": "ratelimited", "ib007": "ratelimited", "ib101": "ratelimited", "ib110": "blocked",
	"ib111": "blocked", "ib112": "blocked", "ib113": "blocked", "ib504": "ratelimited", "ib510": "ratelimited",
	"ib607": "ratelimited", "ib103": "badreputation", "ib104": "blocked", "ib105": "blocked", "ib106": "blocked",
}

func readGoDaddy(fx *facts) string {
	if i := strings.Index(fx.text, " ib"); i >= 0 {
		code := fx.text[i+1:]
		if j := strings.IndexAny(code, " \t.,;)"); j >= 0 {
			code = code[:j]
		}
		if r := goDaddyCodes[code]; r != "" {
			return r
		}
	}
	return firstRule(fx.text, []rule{
		{"blocked", "rbl reject"},
		{"blocked", "www.spamhaus.org/query/bl?ip="},
		{"expired", "has been in the queue too long"},
		{"expired", "delivery timeout"},
		{"mailboxfull", "account storage limit"},
		{"spamdetected", "message rejected for spam or virus content"},
		{"suspend", "account disabled"},
		{"systemerror", "message is looping"},
		{"userunknown", "recipient not found"},
		{"userunknown", "account does not exist"},
	})
}

// googleRule is one documented Gmail reply: the reply code and status
// (their class digit is ignored: Gmail mixes 4xx and 5.x.x) and a phrase.
type googleRule struct {
	reason, reply, status, phrase string
}

var googleRules = []googleRule{
	{"authfailure", "451", "4.7.24", "the spf record of the sending domain"},
	{"authfailure", "550", "5.7.24", "the spf record of the sending domain"},
	{"authfailure", "421", "4.7.26", "senders to authenticate with either spf or dkim"},
	{"authfailure", "550", "5.7.26", "senders to authenticate with either spf or dkim"},
	{"authfailure", "550", "5.7.26", "fails to pass spf checks for an spf record with a hard fail"},
	{"authfailure", "550", "5.7.26", "has an spf record with a hard fail policy"},
	{"authfailure", "451", "4.7.26", "is not accepted due to domain's dmarc policy"},
	{"authfailure", "550", "5.7.26", "is not accepted due to domain's dmarc policy"},
	{"authfailure", "550", "5.7.1", "fails to pass authentication checks"},
	{"authfailure", "550", "5.7.26", "fails to pass authentication checks"},
	{"authfailure", "421", "4.7.27", "senders to authenticate with spf"},
	{"authfailure", "421", "4.7.27", "senders to authenticate their email with spf"},
	{"authfailure", "550", "5.7.27", "senders to authenticate with spf"},
	{"authfailure", "421", "4.7.30", "senders to authenticate their email with dkim"},
	{"authfailure", "550", "5.7.30", "senders to authenticate with dkim"},
	{"authfailure", "421", "4.7.32", "aligned with either the authenticated spf or dkim"},
	{"authfailure", "421", "4.7.40", "to add a dmarc record to "},
	{"badreputation", "421", "4.7.0", "very low reputation of the sending ip address"},
	{"badreputation", "421", "4.7.0", "very low reputation of the sending domain"},
	{"badreputation", "550", "5.7.1", "due to the very low reputation of the sending ip address"},
	{"badreputation", "550", "5.7.1", "due to the very low reputation of the sending domain"},
	{"blocked", "421", "4.7.0", "ip not in whitelist for rcpt domain"},
	{"blocked", "421", "4.7.0", "try again later, closing connection."},
	{"blocked", "501", "5.5.4", "empty helo/ehlo argument not allowed"},
	{"blocked", "501", "5.5.4", "helo/ehlo argument is invalid"},
	{"blocked", "421", "4.7.0", "an unusual rate of unsolicited mail"},
	{"blocked", "421", "4.7.28", "an unusual rate of mail"},
	{"blocked", "550", "5.7.1", "an unusual rate of unsolicited mail"},
	{"blocked", "550", "5.7.28", "an unusual rate of unsolicited mail"},
	{"emailtoolarge", "552", "5.2.3", "exceeded google's message size limits"},
	{"emailtoolarge", "552", "5.3.4", "exceeds google's limit of limit attachments."},
	{"emailtoolarge", "552", "5.3.4", "your message exceeded google's message header size limits"},
	{"emailtoolarge", "552", "5.3.4", "bytes per individual header size"},
	{"emailtoolarge", "552", "5.3.4", "exceeds google's header name limit of"},
	{"emailtoolarge", "552", "5.3.4", "exceeds google's message header size limit"},
	{"emailtoolarge", "552", "5.3.4", "exceeded google's message size limits"},
	{"emailtoolarge", "552", "5.3.4", "exceeds google's message size limit of"},
	{"expired", "421", "4.7.0", "connection expired"},
	{"expired", "451", "4.4.2", "timeout - closing connection"},
	{"failedstarttls", "530", "5.7.0", "must issue a starttls command first"},
	{"failedstarttls", "454", "5.5.1", "starttls may not be repeated"},
	{"failedstarttls", "421", "4.7.0", "tls required for rcpt domain"},
	{"failedstarttls", "421", "4.7.29", "senders to use tls/ssl for smtp"},
	{"failedstarttls", "550", "5.7.29", "senders to use tls/ssl for smtp"},
	{"mailboxfull", "452", "4.2.2", "inbox is out of storage space"},
	{"mailboxfull", "552", "5.2.2", "inbox is out of storage space and inactive"},
	{"mailboxfull", "452", "4.2.2", "is over quota"},
	{"mailboxfull", "552", "5.2.2", "is over quota"},
	{"mailboxfull", "550", "5.7.1", "email quota exceeded"},
	{"networkerror", "554", "5.4.6", "message exceeded 50 hops"},
	{"networkerror", "554", "5.6.0", "message exceeded 50 hops"},
	{"norelaying", "550", "5.7.0", "mail relay denied"},
	{"norelaying", "550", "5.7.1", "invalid credentials for relay"},
	{"norelaying", "550", "5.7.1", "is not authorized to send email directly to our servers"},
	{"notcompliantrfc", "550", "5.7.1", "missing a valid address in the from: header"},
	{"notcompliantrfc", "550", "5.7.1", "multiple addresses in from: header are not accepted"},
	{"notcompliantrfc", "550", "5.7.1", "is not rfc 5322 compliant"},
	{"notcompliantrfc", "550", "5.7.1", "missing a valid message-id: header"},
	{"notcompliantrfc", "550", "5.7.1", "contains a unicode character in a disallowed header"},
	{"notcompliantrfc", "550", "5.7.1", "encoded-word syntax is not permitted"},
	{"notcompliantrfc", "553", "5.1.7", "is not a valid rfc 5321 address"},
	{"notcompliantrfc", "554", "5.6.0", "mail message is malformed"},
	{"policyviolation", "552", "5.7.0", "illegal attachment on your message"},
	{"policyviolation", "552", "5.7.0", "blocked because its content presents a potential security issue"},
	{"policyviolation", "550", "5.7.1", "you are sending to (or from) has a policy that prohibited"},
	{"policyviolation", "421", "4.7.28", "sending messages with the same message-id:"},
	{"rejected", "550", "5.7.0", "mail sending denied"},
	{"rejected", "550", "5.7.1", "unauthenticated email is not accepted"},
	{"requireptr", "421", "4.7.0", "does not have a ptr record"},
	{"requireptr", "421", "4.7.23", " have a ptr record, or the ptr record"},
	{"requireptr", "550", "5.7.1", "does not meet ipv6 sending guidelines regarding ptr records and authentication"},
	{"requireptr", "550", "5.7.25", "does not have a ptr record"},
	{"requireptr", "550", "5.7.25", "does not match the ip address of the hostname"},
	{"securityerror", "454", "4.7.0", "too many login attempts"},
	{"securityerror", "501", "5.5.2", "cannot decode response"},
	{"securityerror", "503", "5.7.0", "no identity changes permitted"},
	{"securityerror", "530", "5.5.1", "authentication required."},
	{"securityerror", "530", "5.7.0", "authentication required."},
	{"securityerror", "535", "5.7.1", "application-specific password required"},
	{"securityerror", "535", "5.7.9", "application-specific password required"},
	{"securityerror", "535", "5.7.1", "please log in with your web browser"},
	{"securityerror", "534", "5.7.9", "please log in with your web browser"},
	{"securityerror", "534", "5.7.14", "please log in through your web browser"},
	{"securityerror", "535", "5.7.1", "username and password not accepted"},
	{"securityerror", "535", "5.7.8", "username and password not accepted"},
	{"spamdetected", "421", "4.7.0", "due to the nature of the content or the links within"},
	{"spamdetected", "550", "5.7.1", "likely unsolicited mail"},
	{"ratelimited", "450", "4.2.1", "is receiving mail too quickly"},
	{"ratelimited", "450", "4.2.1", "peak smtp relay limit exceeded for customer"},
	{"ratelimited", "450", "4.2.1", "rate that prevents additional messages from being delivered"},
	{"ratelimited", "550", "5.2.1", "rate that prevents additional messages from being delivered"},
	{"ratelimited", "550", "5.4.5", "daily sending quota exceeded"},
	{"ratelimited", "550", "5.4.5", "daily user sending limit exceeded"},
	{"ratelimited", "550", "5.4.5", "daily smtp relay limit exceeded for"},
	{"ratelimited", "550", "5.7.1", "daily smtp relay limit exceeded for"},
	{"ratelimited", "550", "5.7.1", "daily smtp relay sending limit exceeded for"},
	{"ratelimited", "550", "5.7.1", "this mail has been rate limited"},
	{"ratelimited", "452", "4.5.3", "your message has too many recipients"},
	{"ratelimited", "550", "5.5.3", "too many recipients for this sender"},
	{"suspend", "550", "5.2.1", "account that you tried to reach is disabled"},
	{"suspend", "550", "5.2.1", "account that you tried to reach is inactive"},
	{"syntaxerror", "451", "4.5.0", "smtp protocol violation"},
	{"syntaxerror", "454", "4.5.0", "smtp protocol violation"},
	{"syntaxerror", "525", "5.7.10", "smtp protocol violation"},
	{"syntaxerror", "535", "5.5.4", "optional argument not permitted"},
	{"syntaxerror", "501", "5.7.11", "syntax error"},
	{"syntaxerror", "501", "5.5.2", "syntax error"},
	{"syntaxerror", "555", "5.5.2", "syntax error"},
	{"syntaxerror", "502", "5.5.1", "too many unrecognized commands, goodbye"},
	{"syntaxerror", "502", "5.5.1", "unimplemented command"},
	{"syntaxerror", "502", "5.5.1", "unrecognized command"},
	{"syntaxerror", "503", "5.5.1", "bad sequence of commands"},
	{"syntaxerror", "503", "5.5.1", "ehlo/helo first"},
	{"syntaxerror", "503", "5.5.1", "mail first"},
	{"syntaxerror", "503", "5.5.1", "rcpt first"},
	{"syntaxerror", "503", "5.5.1", "no data after bdat"},
	{"syntaxerror", "504", "5.7.4", "unrecognized authentication type"},
	{"syntaxerror", "504", "5.7.4", "xoauth is no longer supported"},
	{"syntaxerror", "554", "5.7.0", "too many unauthenticated commands"},
	{"systemerror", "421", "4.3.0", "temporary system problem"},
	{"systemerror", "421", "4.7.0", "temporary system problem"},
	{"systemerror", "421", "4.4.5", "server busy"},
	{"systemerror", "451", "4.3.0", "multiple destination domains per transaction is unsupported"},
	{"systemerror", "451", "4.3.0", "mail server has temporarily rejected this message"},
	{"systemerror", "451", "4.3.0", "mail server temporarily rejected message"},
	{"systemerror", "452", "4.5.3", "domain policy size per transaction exceeded"},
	{"systemerror", "454", "4.7.0", "cannot authenticate due to temporary system problem"},
	{"userunknown", "550", "5.1.1", "the email account that you tried to reach does not exist"},
	{"userunknown", "553", "5.1.2", "we weren't able to find the recipient domain"},
	{"userunknown", "553", "5.1.3", "is not a valid rfc 5321 address"},
}

func readGoogle(fx *facts) string {
	if fx.reply == 0 || fx.status == "" || len(fx.status) < 5 {
		return ""
	}
	reply := strconv.Itoa(fx.reply)[1:]
	status := fx.status[2:]
	for _, r := range googleRules {
		if strings.Contains(fx.text, r.phrase) && r.reply[1:] == reply && r.status[2:] == status {
			return r.reason
		}
	}
	return ""
}

func readGSuite(fx *facts) string {
	sc, rc := byte(0), byte(0)
	if fx.status != "" {
		sc = fx.status[0]
	}
	if fx.reply != 0 {
		rc = strconv.Itoa(fx.reply)[0]
	}
	t := fx.text
	has := func(ps ...string) bool {
		for _, p := range ps {
			if strings.Contains(t, p) {
				return true
			}
		}
		return false
	}
	switch {
	case has(" responded with code nxdomain", "domain name not found") && sc == '5' && rc == '5':
		return "hostunknown"
	case has(" had no relevant answers.", "responded with code nxdomain", "domain name not found") && sc != '5' && rc != '5':
		return "networkerror"
	case has("null mx"):
		return "notaccept"
	case has("because the address couldn't be found. check for typos or unnecessary spaces and try again."):
		return "userunknown"
	}
	return ""
}

// iuaCodes are i.ua's https://mail.i.ua/err/N/ codes.
var iuaCodes = map[string]string{
	"1": "norelaying", "2": "userunknown", "3": "suspend", "4": "mailboxfull", "5": "ratelimited",
	"6": "norelaying", "7": "blocked", "8": "rejected", "9": "blocked", "10": "filtered",
}

func readIUA(fx *facts) string {
	i := strings.Index(fx.text, ".i.ua/err/")
	if i < 0 {
		return ""
	}
	code := fx.text[i+len(".i.ua/err/"):]
	if j := strings.IndexByte(code, '/'); j >= 0 {
		return iuaCodes[code[:j]]
	}
	return ""
}

func readKDDI(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"filtered", "550 : user unknown"},
		{"userunknown", ">: user unknown"},
	})
}

func readMessageLabs(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"authfailure", "domain authentication fail"},
		{"badreputation", "connection rejected by policy"},
		{"blocked", "mail rejected because your ip is in the pbl"},
		{"blocked", "your ip address has been "},
		{"blocked", "your email address (addr) has been blocked"},
		{"contenterror", "stray linefeeds in message"},
		{"failedstarttls", "tls/sslv3 connection required"},
		{"norelaying", " as a relay, "},
		{"notcompliantrfc", "550 requested action aborted [4]"},
		{"notcompliantrfc", "has detected that this message is not rfc 5322"},
		{"rejected", "sender envelope domain not allowed for sender ip address"},
		{"rejected", "your domain has been blocked"},
		{"rejected", "your email address has been blocked"},
		{"rejected", "your envelope sender is in my badmailfrom list"},
		{"rejected", "your email address has been blacklisted"},
		{"rejected", "your domain has been blacklisted"},
		{"securityerror", "please turn on smtp authentication in your mail client"},
		{"spamdetected", "message filtered"},
		{"spamdetected", "filtered by outbound scanning"},
		{"ratelimited", "too many recipients received this hour"},
		{"ratelimited", "too many messages"},
		{"userunknown", "no such user"},
		{"userunknown", "invalid recipient"},
		{"userunknown", "mailbox is not allowed"},
	})
}

// msRule is a Microsoft status code (or a range of detail numbers) with
// the phrase that goes with it.
type msRule struct {
	reason string
	status string // exact code, or "5.7." prefix when lo/hi are set
	lo, hi int
	phrase string
}

var microsoftRules = []msRule{
	{"authfailure", "4.7.26", 0, 0, "must pass either spf or dkim validation, this message is not signed"},
	{"authfailure", "5.7.23", 0, 0, "the message was rejected because of sender policy framework violation"},
	{"authfailure", "5.7.509", 0, 0, "does not pass dmarc verification"},
	{"authfailure", "5.7.515", 0, 0, "doesn't meet the required authentication level"},
	{"badreputation", "4.7.650", 0, 0, "has been temporarily rate limited due to ip reputation"},
	{"blocked", "4.4.2", 0, 0, "connection dropped"},
	{"blocked", "4.7.", 850, 899, "access denied, please try again later"},
	{"blocked", "5.7.25", 0, 0, "must have a reverse dns record"},
	{"blocked", "5.7.506", 0, 0, "access denied, bad helo"},
	{"blocked", "5.7.507", 0, 0, "access denied, rejected by recipient"},
	{"blocked", "5.7.510", 0, 0, "does not accept email over ipv6"},
	{"blocked", "5.7.511", 0, 0, "access denied, banned sender"},
	{"blocked", "5.7.513", 0, 0, "using customer block list"},
	{"blocked", "5.7.", 606, 649, "access denied, banned sending ip "},
	{"blocked", "4.7.", 500, 699, "access denied, please try again later"},
	{"blocked", "5.5.4", 0, 0, "invalid domain name"},
	{"blocked", "5.7.1", 0, 0, "part of their network is on our block list (s3150)"},
	{"contenterror", "5.3.0", 0, 0, "too many related errors"},
	{"contenterror", "5.6.11", 0, 0, "invalid characters"},
	{"contenterror", "5.4.11", 0, 0, "agent generated message depth exceeded"},
	{"contenterror", "5.5.6", 0, 0, "invalid message content"},
	{"emailtoolarge", "5.2.3", 0, 0, "resolver.rst.recipsizelimit; message too large for this recipient"},
	{"emailtoolarge", "5.3.4", 0, 0, "message size exceeds fixed maximum message size"},
	{"emailtoolarge", "5.3.4", 0, 0, "message too big for system"},
	{"expired", "4.4.1", 0, 0, "connection timed out"},
	{"expired", "4.4.7", 0, 0, "message delayed"},
	{"expired", "4.4.7", 0, 0, "queue expired; message expired"},
	{"expired", "4.4.7", 0, 0, "message expired"},
	{"expired", "5.4.300", 0, 0, "message expired"},
	{"expired", "5.4.316", 0, 0, "message expired"},
	{"failedstarttls", "4.4.8", 0, 0, " failed mta-sts validation"},
	{"failedstarttls", "5.4.8", 0, 0, " failed mta-sts validation"},
	{"failedstarttls", "4.4.317", 0, 0, "starttls is required to send mail"},
	{"failedstarttls", "5.4.317", 0, 0, "starttls is required to send mail"},
	{"failedstarttls", "4.7.5", 0, 0, "remote certificate failed mta-sts validation"},
	{"failedstarttls", "5.7.5", 0, 0, "remote certificate failed mta-sts validation"},
	{"failedstarttls", "5.7.51", 0, 0, "restrictdomainstoipaddresses or restrictdomainstocertificate"},
	{"failedstarttls", "4.7.321", 0, 0, "starttls-not-supported:"},
	{"failedstarttls", "5.7.321", 0, 0, "starttls-not-supported:"},
	{"failedstarttls", "5.7.322", 0, 0, "certificate-expired:"},
	{"failedstarttls", "4.7.323", 0, 0, "tlsa-invalid:"},
	{"failedstarttls", "5.7.323", 0, 0, "tlsa-invalid:"},
	{"failedstarttls", "4.7.324", 0, 0, "dnssec-invalid:"},
	{"failedstarttls", "5.7.324", 0, 0, "dnssec-invalid:"},
	{"failedstarttls", "4.7.325", 0, 0, "certificate-host-mismatch:"},
	{"failedstarttls", "5.7.325", 0, 0, "certificate-host-mismatch:"},
	{"mailboxfull", "5.2.2", 0, 0, "mailbox full"},
	{"networkerror", "5.4.4", 0, 0, "smtpsend.dns.nonexistentdomain; nonexistent domain"},
	{"networkerror", "5.4.6", 0, 0, "hop count exceeded - possible mail loop"},
	{"networkerror", "4.4.312", 0, 0, "dns query failed"},
	{"networkerror", "5.4.312", 0, 0, "dns query failed"},
	{"networkerror", "4.4.316", 0, 0, "connection refused"},
	{"networkerror", "5.4.316", 0, 0, "connection refused"},
	{"networkerror", "5.4.4", 0, 0, "invalid arguments"},
	{"networkerror", "5.4.6", 0, 0, "routing loop detected"},
	{"networkerror", "5.4.14", 0, 0, "routing loop detected"},
	{"norelaying", "5.7.1", 0, 0, "unable to relay"},
	{"norelaying", "5.7.1", 0, 0, "client was not authenticated"},
	{"norelaying", "5.4.1", 0, 0, "relay access denied"},
	{"norelaying", "5.7.64", 0, 0, "tenantattribution; relay access denied"},
	{"norelaying", "5.4.310", 0, 0, "does not exist"},
	{"notaccept", "4.3.2", 0, 0, "system not accepting network messages"},
	{"notaccept", "4.4.4", 0, 0, "hosted tenant which has no mail-enabled subscriptions"},
	{"notaccept", "5.3.2", 0, 0, "storedrv.deliver: missing or bad storedriver mdb properties"},
	{"policyviolation", "5.0.350", 0, 0, "x-dg-ref header is too long"},
	{"policyviolation", "5.0.350", 0, 0, "requested action not taken: policy violation detected (as345)"},
	{"policyviolation", "5.7.", 900, 999, "delivery not authorized, message refused"},
	{"rejected", "5.1.7", 0, 0, "invalid address"},
	{"rejected", "5.1.7", 0, 0, "unknown sender address"},
	{"rejected", "5.1.0", 0, 0, "sender denied"},
	{"rejected", "5.1.8", 0, 0, "access denied, bad outbound sender"},
	{"rejected", "5.7.1", 0, 0, "delivery not authorized"},
	{"rejected", "5.7.12", 0, 0, "sender was not authenticated by organization"},
	{"rejected", "5.7.124", 0, 0, "sender not in allowed-senders list"},
	{"rejected", "5.7.133", 0, 0, "sender not authenticated for group"},
	{"rejected", "5.7.134", 0, 0, "sender was not authenticated for mailbox"},
	{"rejected", "5.7.13", 0, 0, "sender was not authenticated for public folder"},
	{"rejected", "5.7.135", 0, 0, "sender was not authenticated for public folder"},
	{"rejected", "5.7.136", 0, 0, "sender was not authenticated"},
	{"rejected", "5.7.", 501, 503, "access denied, spam abuse detected"},
	{"rejected", "5.7.512", 0, 0, "access denied, message must be rfc 5322 section 3.6.2 compliant"},
	{"rejected", "5.7.750", 0, 0, "service unavailable. client blocked from sending from unregistered domains"},
	{"rejected", "5.7.", 501, 503, "access denied, banned sender"},
	{"securityerror", "5.7.3", 0, 0, "cannot achieve exchange server authentication"},
	{"securityerror", "5.7.3", 0, 0, "not authorized"},
	{"securityerror", "5.7.57", 0, 0, "client was not authenticated to send anonymous mail during mail from"},
	{"spamdetected", "5.2.1", 0, 0, "content filter agent quarantined this message"},
	{"ratelimited", "5.5.3", 0, 0, "too many recipients"},
	{"ratelimited", "4.3.2", 0, 0, "storedrv.deliver; recipient thread limit exceeded"},
	{"ratelimited", "4.5.3", 0, 0, "too many recipients"},
	{"ratelimited", "4.7.652", 0, 0, "has exceeded the maximum number of connections"},
	{"ratelimited", "5.1.90", 0, 0, "reached your daily limit for message recipients"},
	{"ratelimited", "5.2.2", 0, 0, "submission quota exceeded"},
	{"ratelimited", "5.2.121", 0, 0, "recipient's per hour message receive limit"},
	{"ratelimited", "5.2.122", 0, 0, "recipient's per hour message receive limit"},
	{"ratelimited", "5.2.122", 0, 0, "the recipient has exceeded their limit for"},
	{"ratelimited", "5.7.508", 0, 0, "has exceeded permitted limits within"},
	{"ratelimited", "5.7.", 700, 749, "tenant has exceeded threshold"},
	{"ratelimited", "5.7.", 700, 749, "traffic not accepted from this ip"},
	{"suspend", "5.7.504", 0, 0, "recipient address rejected: access denied"},
	{"suspend", "5.7.505", 0, 0, "access denied, banned recipient"},
	{"suspend", "5.2.1", 0, 0, "mailbox cannot be accessed"},
	{"syntaxerror", "5.3.3", 0, 0, "unrecognized command"},
	{"syntaxerror", "5.5.2", 0, 0, "send hello first"},
	{"systemerror", "4.3.2", 0, 0, "service not available"},
	{"systemerror", "4.3.2", 0, 0, "service not active"},
	{"systemerror", "5.3.5", 0, 0, "system incorrectly configured"},
	{"systemerror", "5.3.190", 0, 0, "when journaling archive is disabled"},
	{"systemerror", "5.0.0", 0, 0, "helo / ehlo requires domain address"},
	{"systemerror", "5.1.4", 0, 0, "destination mailbox address ambiguous"},
	{"systemerror", "5.2.4", 0, 0, "mailing list expansion problem"},
	{"systemerror", "5.2.14", 0, 0, "misconfigured forwarding address"},
	{"systemerror", "4.4.", 22, 28, "message failed to be replicated:"},
	{"systemerror", "4.4.3", 0, 0, "temporary server error. please try again later attr18"},
	{"systemerror", "4.7.0", 0, 0, "temporary server error. please try again later. prx4 nexthop:"},
	{"systemerror", "4.4.318", 0, 0, "(suspiciousremoteservererror)"},
	{"systemerror", "5.4.318", 0, 0, "(suspiciousremoteservererror)"},
	{"systemerror", "4.7.500", 0, 0, "server busy. please try again later from "},
	{"systemerror", "4.7.700", 0, 0, "pfa agent busy, please try again."},
	{"systemfull", "4.3.1", 0, 0, "insufficient system resources"},
	{"userunknown", "5.1.1", 0, 0, "resolver.adr.exrecipnotfound; not found"},
	{"userunknown", "5.1.1", 0, 0, "user unknown"},
	{"userunknown", "5.1.3", 0, 0, "storedrv.submit; invalid recipient address"},
	{"userunknown", "5.1.", 4, 5, "recipient address reserved by rfc 2606"},
	{"userunknown", "5.1.6", 0, 0, "recipient addresses in single label domains not accepted"},
	{"userunknown", "5.1.1", 0, 0, "bad destination mailbox address"},
	{"userunknown", "5.1.10", 0, 0, "recipient not found"},
	{"userunknown", "5.4.1", 0, 0, "recipient address rejected: access denied"},
	{"userunknown", "5.5.0", 0, 0, "requested action not taken: mailbox unavailable"},
	{"userunknown", "5.1.2", 0, 0, "invalid x.400 address"},
	{"userunknown", "5.1.351", 0, 0, "remote server returned unknown recipient or mailbox unavailable"},
}

// outlookCodes are the Outlook.com postmaster codes and the reply code
// they come with.
var outlookCodes = []struct{ code, reply, reason string }{
	{"rp-001", "421", "badreputation"}, {"rp-002", "421", "badreputation"}, {"rp-003", "421", "badreputation"},
	{"sc-001", "550", "badreputation"}, {"sc-002", "550", "policyviolation"}, {"sc-003", "550", "blocked"},
	{"sc-004", "550", "blocked"}, {"dy-001", "550", "blocked"}, {"dy-002", "550", "virusdetected"},
	{"ou-001", "550", "blocked"}, {"ou-002", "550", "badreputation"},
}

func readMicrosoft(fx *facts) string {
	_, _, detail, ok := statusParts(fx.status)
	if !ok {
		return ""
	}
	for _, r := range microsoftRules {
		if r.lo == 0 && r.hi == 0 {
			if fx.status != r.status {
				continue
			}
		} else if !strings.HasPrefix(fx.status, r.status) || detail < r.lo || detail > r.hi {
			continue
		}
		if strings.Contains(fx.text, r.phrase) {
			return r.reason
		}
	}
	for _, c := range outlookCodes {
		if strings.Contains(fx.text, c.code) && strconv.Itoa(fx.reply) == c.reply {
			return c.reason
		}
	}
	return ""
}

var mimecastRules = []struct{ reason, reply, phrase string }{
	{"authfailure", "550", "spf sender invalid - envelope rejected"},
	{"authfailure", "550", "dkim sender invalid - envelope rejected"},
	{"authfailure", "550", "dmarc sender invalid - envelope rejected"},
	{"badreputation", "451", "internal resources are temporarily unavailable"},
	{"badreputation", "550", "local ct ip reputation - (reject)"},
	{"blocked", "421", "sender address blocked"},
	{"blocked", "451", "recipient temporarily unavailable"},
	{"blocked", "451", "ip temporarily blacklisted"},
	{"expired", "550", "journal messages past the expiration"},
	{"failedstarttls", "553", "this route requires encryption (tls)"},
	{"failedstarttls", "553", "this route requires tls version 1.2 or greater"},
	{"failedstarttls", "553", "this route requires high-strength ciphers"},
	{"failedstarttls", "554", "configuration is invalid for this certificate"},
	{"emailtoolarge", "554", "maximum email size exceeded"},
	{"networkerror", "451", "the incorrect hostname used for inbounds"},
	{"networkerror", "550", "the incorrect hostname used for inbounds"},
	{"networkerror", "554", "mail loop detected"},
	{"norelaying", "451", "open relay not allowed"},
	{"norelaying", "451", "open relay is not allowed"},
	{"notaccept", "451", "account inbounds disabled"},
	{"onhold", "451", "account outbounds disabled"},
	{"onhold", "451", "hostname is not authorized"},
	{"onhold", "550", "journal message past expiration"},
	{"policyviolation", "550", "anti-spoofing policy - inbound not allowed"},
	{"policyviolation", "550", "rejected by header-based anti-spoofing policy"},
	{"policyviolation", "550", "message bounced due to content examination policy"},
	{"policyviolation", "554", "host network not allowed"},
	{"policyviolation", "554", "host network, not allowed"},
	{"rejected", "550", "administrative prohibition envelope blocked"},
	{"rejected", "550", "envelope blocked - user entry"},
	{"rejected", "550", "envelope blocked - user domain entry"},
	{"rejected", "550", "rejected by header-based manually blocked senders - block for manual block"},
	{"rejected", "550", "rejected by header-based blocked senders - block policy for header from"},
	{"rejected", "550", "envelope rejected - block policy for envelope from address"},
	{"securityerror", "535", "incorrect authentication data"},
	{"securityerror", "550", "submitter failed to disabled"},
	{"securityerror", "550", "submitter failed to authenticate"},
	{"systemerror", "451", "unable to process connection at this time"},
	{"systemerror", "451", "message ended early"},
	{"systemerror", "451", "unable to process command"},
	{"systemerror", "451", "unable to process an email at this time"},
	{"ratelimited", "451", "account service is temporarily unavailable"},
	{"ratelimited", "452", "too many recipients"},
	{"ratelimited", "550", "exceeding outbound thread limit"},
	{"userunknown", "501", "invalid address"},
	{"userunknown", "503", "user unknown"},
	{"userunknown", "550", "invalid recipient"},
	{"virusdetected", "554", "email rejected due to security policies"},
}

func readMimecast(fx *facts) string {
	if !validReply(fx.reply) {
		return ""
	}
	reply := strconv.Itoa(fx.reply)
	for _, r := range mimecastRules {
		if r.reply == reply && strings.Contains(fx.text, r.phrase) {
			return r.reason
		}
	}
	return ""
}

func readDocomo(fx *facts) string {
	// The status decides first, as in sisimai's Rhost::NTTDOCOMO: the
	// text includes the session transcript, and after a refused RCPT it
	// goes on with ">>> DATA <<< 503 Bad sequence of commands", which
	// says nothing about the recipient.
	switch fx.status {
	case "5.1.1", "5.0.911":
		return "userunknown"
	case "5.2.0":
		return "filtered"
	}
	if r := firstRule(fx.text, []rule{
		{"mailboxfull", "552 too much mail data"},
		{"syntaxerror", "503 bad sequence of commands"},
		{"syntaxerror", "504 command parameter not implemented"},
		{"ratelimited", "552 too many recipients"},
	}); r != "" {
		return r
	}
	if fx.status == "5.0.0" {
		// Without a telling status, the SMTP command does: docomo
		// rejects unknown users at RCPT, and refuses by its filter
		// after DATA.
		switch fx.command {
		case "RCPT":
			return "userunknown"
		case "DATA":
			return "rejected"
		}
	}
	return ""
}

func readOutlook(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"hostunknown", "the mail could not be delivered to the recipient because the domain is not reachable"},
		{"userunknown", "requested action not taken: mailbox unavailable"},
	})
}

// spectrumCodes are Charter/Spectrum AUP#nnnn ranges.
var spectrumCodes = []struct {
	lo, hi int
	reason string
}{
	{1000, 1000, "blocked"}, {1010, 1010, "rejected"}, {1020, 1080, "rejected"}, {1090, 1090, "systemerror"},
	{1100, 1150, "requireptr"}, {1160, 1190, "policyviolation"}, {1200, 1210, "blocked"}, {1220, 1250, "blocked"},
	{1260, 1260, "networkerror"}, {1300, 1340, "ratelimited"}, {1350, 1490, "ratelimited"}, {1500, 1500, "rejected"},
	{1520, 1520, "rejected"}, {1530, 1530, "emailtoolarge"}, {1540, 1540, "ratelimited"},
	{1550, 1550, "ratelimited"}, {1560, 1560, "policyviolation"}, {1580, 1580, "ratelimited"},
}

func readSpectrum(fx *facts) string {
	i := strings.Index(fx.text, "aup#")
	if i < 0 {
		return ""
	}
	digits := ""
	for _, c := range fx.text[i+4:] {
		if len(digits) == 4 {
			break
		}
		if c < '0' || c > '9' {
			digits = ""
			continue
		}
		digits += string(c)
	}
	n, err := strconv.Atoi(digits)
	if err != nil || len(digits) != 4 {
		return ""
	}
	for _, c := range spectrumCodes {
		if n >= c.lo && n <= c.hi {
			return c.reason
		}
	}
	return ""
}

func readTencent(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"authfailure", "spf check failed"},
		{"authfailure", "dmarc check failed"},
		{"blocked", "suspected bounce attacks"},
		{"blocked", "suspected spam ip"},
		{"blocked", "connection denied"},
		{"emailtoolarge", "message too large"},
		{"spamdetected", "spam is embedded in the email"},
		{"spamdetected", "mail content denied"},
		{"rejected", "suspected spam"},
		{"rejected", "mail is rejected by recipients"},
		{"ratelimited", "mailbox unavailable or access denined"},
		{"ratelimited", "frequency of receiving messages is limited"},
		{"suspend", "is a deactivated mailbox"},
		{"syntaxerror", "bad address syntax"},
		{"ratelimited", "ip frequency limited"},
		{"ratelimited", "domain frequency limited"},
		{"ratelimited", "sender frequency limited"},
		{"ratelimited", "connection frequency limited"},
		{"userunknown", "mailbox not found"},
	})
}

func readYahooInc(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"authfailure", "yahoo requires all senders to authenticate with either spf or dkim"},
		{"blocked", " because the ip is in spamhaus's list;"},
		{"blocked", "not accepted from ip addresses on spamhaus xbl"},
		{"norelaying", "relaying denied for "},
		{"notcompliantrfc", "headers are not rfc compliant"},
		{"policyviolation", "not accepted for policy reasons"},
		{"rejected", "temporarily deferred due to unexpected volume or user complaints"},
		{"rejected", "due to unresolvable rfc.5321 domain"},
		{"rejected", " will be permanently deferred"},
		{"ratelimited", "user is receiving mail too quickly"},
		{"suspend", " is no longer valid."},
		{"suspend", "this mailbox is disabled"},
		{"syntaxerror", "syntax error in parameters or arguments"},
		{"ratelimited", "max message per connection reached"},
		{"userunknown", "dd this user doesn't have a "},
		{"userunknown", "mailbox not found"},
	})
}

func readZoho(fx *facts) string {
	return firstRule(fx.text, []rule{
		{"authfailure", "email rejected per dmarc policy"},
		{"blocked", "greylisted, try again after some time"},
		{"rejected", "email cannot be delivered. reason: email flagged as spam"},
		{"rejected", "mail rejected by destination domain"},
		{"policyviolation", "email policy violation detected"},
		{"policyviolation", "mailbox delivery restricted by policy error"},
		{"systemerror", "temporary system error"},
		{"userunknown", "user does not exist"},
		{"virusdetected", " detected by zoho mail"},
	})
}
