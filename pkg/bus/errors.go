package bus

import "github.com/mailbus/mailbus/pkg/exterr"

// Permanent marks err as permanent (it is exterr.Permanent): the router's
// retry middleware does not retry it and the record goes straight to the
// poison topic, so that a record that can never succeed (malformed, missing
// tenant, unknown type) does not hold its partition through the whole
// backoff. Permanent(nil) is nil.
//
// Handlers decide, by the one rule of package exterr: an error not marked
// permanent, and not stating it otherwise (a 5xx *mail.SMTPError, a mail
// validation error, limits.ErrInvalid), is retried, like maddy's rule that
// unknown errors count as temporary.
func Permanent(err error) error { return exterr.Permanent(err) }

// IsPermanent reports whether retrying cannot fix err. It is
// exterr.IsPermanent, the rule every stage applies; the router's retry and
// poison middleware use it.
func IsPermanent(err error) bool { return exterr.IsPermanent(err) }
