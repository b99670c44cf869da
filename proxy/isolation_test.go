package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestUpstreamCannotHoldAnotherUpstreamsBlob: a hostile upstream's
// download of a digest is not what another upstream's clients read. The
// hostile upstream answers a good layer's digest with the right length of
// wrong bytes, one byte and then nothing until the test lets it go; a
// docker.io client asking for the same digest meanwhile gets the good
// bytes from docker.io. No timing: the hostile upstream is let go only once
// the docker.io client's request reached docker.io, so the client that
// joined the hostile download (as it did, when downloads were shared by
// digest alone) reads its wrong bytes and its cut.
func TestUpstreamCannotHoldAnotherUpstreamsBlob(t *testing.T) {
	t.Parallel()
	good := regtest.RandomBytes(64 << 10)
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(good)))
		if r.Method == http.MethodHead {
			return
		}
		w.Write([]byte("A"))
		w.(http.Flusher).Flush()
		enterOnce.Do(func() { close(entered) })
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(bytes.Repeat([]byte("A"), len(good)-1))
	}))
	t.Cleanup(hostile.Close)
	hostileURL, _ := url.Parse(hostile.URL)
	h := newHarness(t, harnessOptions{
		retry: upstream.RetryPolicy{Attempts: 1},
		more:  []upstream.Config{{Name: "hostile", URL: hostileURL}},
	})
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the harness waits for the downloads to end
	dgst := h.pushBlob(t, "library/victim", good)

	reached := make(chan struct{})
	var reachOnce sync.Once
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
			reachOnce.Do(func() { close(reached) })
		}
		h.front.relay(w, r)
	})

	// The attacker starts the hostile download and goes away.
	attacker := make(chan struct{})
	go func() {
		defer close(attacker)
		resp, err := http.Get(h.url + "/v2/evil/x/blobs/" + dgst.String() + "?ns=hostile")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-entered

	victim := make(chan response, 1)
	go func() { victim <- h.do(t, http.MethodGet, "/v2/library/victim/blobs/"+dgst.String(), nil) }()
	<-reached
	letGo()
	r := <-victim
	<-attacker
	if r.status != http.StatusOK || r.err != nil || !bytes.Equal(r.body, good) {
		t.Fatalf("docker.io's client: got %d, %d bytes starting %q (read error %v); want 200 and docker.io's %d bytes",
			r.status, len(r.body), r.body[:min(len(r.body), 8)], r.err, len(good))
	}
	// The good bytes are what the cache keeps: docker.io's download
	// committed them, the hostile one nothing.
	if r := h.do(t, http.MethodGet, "/v2/library/victim/blobs/"+dgst.String(), nil); r.status != http.StatusOK || !bytes.Equal(r.body, good) {
		t.Errorf("from the cache: got %d, %d bytes", r.status, len(r.body))
	}
}
