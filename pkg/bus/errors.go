package bus

import "errors"

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: the router's retry middleware does not
// retry it and the record goes straight to the poison topic, so that a
// record that can never succeed (malformed, missing tenant, unknown type)
// does not hold its partition through the whole backoff. Permanent(nil) is
// nil.
//
// Handlers decide: an error that is not marked permanent is retried, like
// maddy's rule that unknown errors count as temporary.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var pe *permanentError
	return errors.As(err, &pe)
}
