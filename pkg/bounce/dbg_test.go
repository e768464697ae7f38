package bounce
import ("testing";"fmt")
func TestDbgSynth(t *testing.T){
  msgs := []string{
`From: Mail Delivery System <Mailer-Daemon@example.org>
To: sender@example.jp
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1P1YNN-0003AD-Ga@example.org>

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  an undisclosed address
    (generated from kijitora@example.jp)

------ This is a copy of the message, including all the headers. ------

From: sender@example.jp
To: list@example.org
Subject: hi
`,
`From: Mail Delivery System <Mailer-Daemon@example.org>
To: sender@example.jp
Subject: Warning: message 1P1YNN-0003AD-Ga delayed 24 hours
Message-Id: <E1P1YNN-0003AD-Ga@example.org>

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx.example.org.

The message identifier is:     1P1YNN-0003AD-Ga
The subject of the message is: Nyaan
The date of the message is:    Thu, 22 Apr 2016 23:34:45 +0900

The address to which the message has not yet been delivered is:

  kijitora@example.co.jp
    host mta-2.example.co.jp [192.0.2.222]
    Delay reason: SMTP error from remote mail server after MAIL FROM:<sironeko@neko.example.com> SIZE=1024:
    450 service permits 2 unverifyable sending IPs - neko.example.com is not 203.0.113.222

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered.
`,
`From: MAILER-DAEMON@mx.example.jp
Subject: failure notice

Hi. This is the qmail-send program at mx.example.jp.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<kijitora@example.jp>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

From: a@example.org
`,
`From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.jp>
Subject: Returned mail: see transcript for details
Content-Type: text/plain

The original message was received at Thu, 29 Apr 2010 23:34:45 +0900
from localhost [127.0.0.1]

   ----- The following addresses had permanent fatal errors -----
<kijitora@example.org>
    (reason: 550 5.1.1 <kijitora@example.org>... User Unknown)

   ----- Transcript of session follows -----
... while talking to mx.example.org.:
>>> RCPT To:<kijitora@example.org>
<<< 550 5.1.1 <kijitora@example.org>... User Unknown
550 5.1.1 <kijitora@example.org>... User unknown

   ----- Original message follows -----

From: a@example.jp
`,
  }
  for _, m := range msgs {
    recs, err := Parse([]byte(m))
    fmt.Println("---", err, len(recs))
    for _, r := range recs { fmt.Printf("%s %s %v %s %d %q\n", r.Recipient, r.Reason, r.Hard, r.Status, r.ReplyCode, r.Diagnostic) }
  }
}
