package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error codes from the OCI distribution spec, plus UNAVAILABLE for upstream
// trouble, which the spec leaves to the registry.
const (
	CodeBlobUnknown     = "BLOB_UNKNOWN"
	CodeManifestUnknown = "MANIFEST_UNKNOWN"
	CodeManifestInvalid = "MANIFEST_INVALID"
	CodeNameUnknown     = "NAME_UNKNOWN"
	CodeNameInvalid     = "NAME_INVALID"
	CodeDigestInvalid   = "DIGEST_INVALID"
	CodeTagInvalid      = "TAG_INVALID"
	CodeUnauthorized    = "UNAUTHORIZED"
	CodeDenied          = "DENIED"
	CodeUnsupported     = "UNSUPPORTED"
	CodeTooManyRequests = "TOOMANYREQUESTS"
	CodeSizeInvalid     = "SIZE_INVALID"
	CodeUnavailable     = "UNAVAILABLE"
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

func newError(status int, code, msg string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: msg, Err: cause}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// publicMessage is what a client may be told of err, wherever it is told:
// the code and message of an *Error, never its cause (upstream addresses,
// bodies, paths); for anything else, a generic line. The log has the rest.
func publicMessage(err error) string {
	e := public(err)
	return e.Code + ": " + e.Message
}

// public is the *Error a client is answered with for err: err's own, or a
// generic internal error (its cause is for the log only).
func public(err error) *Error {
	var e *Error
	if !errors.As(err, &e) {
		e = newError(http.StatusInternalServerError, CodeUnavailable, "internal error", err)
	}
	return e
}

// writeError is the one place that turns an error into an OCI error response.
// Errors that are not *Error are internal: the client sees a generic message,
// the log sees the cause.
func writeError(w http.ResponseWriter, r *http.Request, err error) *Error {
	e := public(err)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	h.Del("ETag")
	if e.Challenge != "" {
		h.Set("WWW-Authenticate", e.Challenge)
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		json.NewEncoder(w).Encode(errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message}}})
	}
	return e
}
