// Package errcode is the OCI distribution error that regnorm answers with:
// the spec's codes, the HTTP status, and what a client may be told. proxy/
// writes it; its subpackages (the upstream client, the download fan-out)
// return it, so that an upstream's answer reaches the client as it was
// meant, never with its cause.
package errcode

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Codes from the OCI distribution spec, plus UNAVAILABLE for upstream
// trouble, which the spec leaves to the registry.
const (
	BlobUnknown     = "BLOB_UNKNOWN"
	ManifestUnknown = "MANIFEST_UNKNOWN"
	ManifestInvalid = "MANIFEST_INVALID"
	NameUnknown     = "NAME_UNKNOWN"
	NameInvalid     = "NAME_INVALID"
	DigestInvalid   = "DIGEST_INVALID"
	TagInvalid      = "TAG_INVALID"
	Unauthorized    = "UNAUTHORIZED"
	Denied          = "DENIED"
	Unsupported     = "UNSUPPORTED"
	TooManyRequests = "TOOMANYREQUESTS"
	SizeInvalid     = "SIZE_INVALID"
	Unavailable     = "UNAVAILABLE"
)

// Error is an OCI distribution error with the HTTP status it is sent with.
type Error struct {
	Status  int
	Code    string
	Message string
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter time.Duration
	// Challenge, when set, is sent as the WWW-Authenticate header.
	Challenge string
	// Err is the cause, logged but never sent to the client.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// New is the error with status, code and message; cause is for the log.
func New(status int, code, msg string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: msg, Err: cause}
}

// RetryAfterBusy is the Retry-After of a request refused because as much
// work of its kind as regnorm allows is running and waiting already
// (downloads, layer work): soon enough for a client that retries to find a
// place, late enough not to make the queue busier.
const RetryAfterBusy = 5 * time.Second

// Busy is the answer to such a request: 503 UNAVAILABLE with msg and
// Retry-After RetryAfterBusy; cause is for the log.
func Busy(msg string, cause error) *Error {
	e := New(http.StatusServiceUnavailable, Unavailable, msg, cause)
	e.RetryAfter = RetryAfterBusy
	return e
}

// Public is the *Error a client is answered with for err: err's own, or a
// generic internal error (its cause is for the log only).
func Public(err error) *Error {
	var e *Error
	if !errors.As(err, &e) {
		e = New(http.StatusInternalServerError, Unavailable, "internal error", err)
	}
	return e
}

// PublicMessage is what a client may be told of err, wherever it is told
// (an answer's body, a line of warm's results): the code and message of
// Public(err), never its cause (upstream addresses, bodies, paths). The log
// has the rest.
func PublicMessage(err error) string {
	e := Public(err)
	return e.Code + ": " + e.Message
}

// StatusOf is the HTTP status err is answered with, 0 when err is not an
// *Error.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}
