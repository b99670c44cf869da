package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/regnorm/regnorm/proxy/errcode"
)

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError is the one place that turns an error into an OCI error response.
// Errors that are not *errcode.Error are internal: the client sees a generic
// message, the log sees the cause.
func writeError(w http.ResponseWriter, r *http.Request, err error) *errcode.Error {
	e, body := errorAnswer(w.Header(), err)
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return e
}

// errorAnswer sets h for err's answer and returns it with its body.
func errorAnswer(h http.Header, err error) (*errcode.Error, []byte) {
	e := errcode.Public(err)
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
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message}}})
	return e, append(body, '\n')
}
