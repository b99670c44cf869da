package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// readJSON decodes the body of a POST into v: the one way regnorm takes a
// request body. It must be application/json: a browser sends that type to
// another origin only after asking first (a CORS preflight), which regnorm
// never answers, so a page elsewhere cannot make a visitor's browser post
// to regnorm (a form sends text/plain, multipart/form-data or
// application/x-www-form-urlencoded, which are refused). The body is capped
// at limit bytes, must hold one JSON value and nothing after it, and with
// strict no unknown fields; shape says what to send. A body that does not
// arrive within the server's read timeout is refused too (408).
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any, strict bool, shape string) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return errcode.New(http.StatusUnsupportedMediaType, errcode.Unsupported, "the body must be application/json: "+shape, nil)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	if strict {
		dec.DisallowUnknownFields()
	}
	err := dec.Decode(v)
	if err == nil {
		// Read to the end: anything after the value is a mistake.
		if _, err = dec.Token(); err == io.EOF {
			return nil
		} else if err == nil {
			err = errors.New("more than one JSON value")
		}
	}
	var tooLarge *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooLarge):
		return errcode.New(http.StatusRequestEntityTooLarge, errcode.Unsupported, fmt.Sprintf("the body is larger than %d KiB: %s", limit>>10, shape), err)
	case errors.As(err, &netErr) && netErr.Timeout():
		return errcode.New(http.StatusRequestTimeout, errcode.Unsupported, "the body did not arrive in time", err)
	}
	return errcode.New(http.StatusBadRequest, errcode.Unsupported, "the body must be "+shape, err)
}
