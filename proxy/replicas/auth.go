package replicas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// How a replica proves it is one. A request carries the time it was made
// and an HMAC-SHA256, under the shared secret, of that time, its method and
// its path and query; an owner takes it within maxSkew of its own clock. An
// answer carries the HMAC of the request's and of what the asker relies on
// (status, the headers below, and the body's hash when it is not a blob,
// whose digest the asker checks itself), so nobody between two replicas can
// answer for one. A request seen again within maxSkew is answered again:
// every request asks for work that is the same whoever repeats it.

// maxSkew is how far apart two replicas' clocks, and a request's trip, may
// be.
const maxSkew = 2 * time.Minute

const (
	authScheme = "RegnormReplica"
	// AnswerHeader carries an answer's HMAC.
	AnswerHeader = "Regnorm-Replica-Mac"
)

// signed headers of an answer, in this order.
var signedHeaders = []string{"Content-Type", "Content-Length", "Docker-Content-Digest", "Retry-After", StaleHeader}

// StaleHeader marks a manifest the owner answered from an expired tag
// record, because the upstream could not answer.
const StaleHeader = "Regnorm-Stale"

// ErrNotReplica is why a request was refused: it does not prove that a
// replica sent it.
var ErrNotReplica = errors.New("not signed by a replica")

func (s *Set) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.opts.Secret)
	for _, p := range parts {
		fmt.Fprintf(m, "%d:%s", len(p), p)
	}
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Set) requestMAC(method, host, uri string, stamp string) string {
	return s.mac("request", method, host, uri, stamp)
}

// sign stamps req as this replica's, and returns its MAC (what its answer
// is bound to).
func (s *Set) sign(req *http.Request) string {
	stamp := strconv.FormatInt(s.opts.Clock.Now().Unix(), 10)
	m := s.requestMAC(req.Method, req.URL.Host, req.URL.RequestURI(), stamp)
	req.Header.Set("Authorization", authScheme+" "+stamp+":"+m)
	return m
}

// Verify checks that req comes from a replica; the MAC it returns is what
// the answer is signed with (SignAnswer).
func (s *Set) Verify(req *http.Request) (string, error) {
	v, ok := strings.CutPrefix(req.Header.Get("Authorization"), authScheme+" ")
	if !ok {
		return "", ErrNotReplica
	}
	stamp, got, ok := strings.Cut(v, ":")
	if !ok {
		return "", ErrNotReplica
	}
	unix, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil {
		return "", ErrNotReplica
	}
	if d := s.opts.Clock.Now().Sub(time.Unix(unix, 0)); d > maxSkew || d < -maxSkew {
		return "", fmt.Errorf("%w: stamped %s from now", ErrNotReplica, d.Round(time.Second))
	}
	// The host it was sent to is this replica's (Self): a request sent to
	// another replica is not answered here.
	want := s.requestMAC(req.Method, s.selfHost, req.RequestURI, stamp)
	if !hmac.Equal([]byte(got), []byte(want)) {
		return "", ErrNotReplica
	}
	return want, nil
}

// SignAnswer signs an answer to the request whose MAC is reqMAC, once its
// status, headers and (but for a blob) body are set: body is the body
// (nil for a blob, whose digest the asker checks).
func (s *Set) SignAnswer(h http.Header, reqMAC string, status int, body []byte) {
	h.Set(AnswerHeader, s.answerMAC(h, reqMAC, status, body))
}

func (s *Set) answerMAC(h http.Header, reqMAC string, status int, body []byte) string {
	parts := []string{"answer", reqMAC, strconv.Itoa(status)}
	for _, k := range signedHeaders {
		parts = append(parts, h.Get(k))
	}
	if body != nil {
		sum := sha256.Sum256(body)
		parts = append(parts, hex.EncodeToString(sum[:]))
	}
	return s.mac(parts...)
}

// checkAnswer checks an answer's MAC.
func (s *Set) checkAnswer(resp *http.Response, reqMAC string, body []byte) error {
	want := s.answerMAC(resp.Header, reqMAC, resp.StatusCode, body)
	if !hmac.Equal([]byte(resp.Header.Get(AnswerHeader)), []byte(want)) {
		return errors.New("the answer is not signed by a replica")
	}
	return nil
}
