package proxy_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// TestReplicaBlobCorruptedThenCutPassesTheOwnerOver: a neighbour between
// the replicas flips a byte of every blob an owner sends, then cuts the
// connection before the blob's end, so that the asker's hash of the
// owner's body (ownerBody) never reaches its end. The owner's own download
// of the blob is slow (a large layer): it is still under way, so the
// shared cache does not have the blob yet. The asker goes on from the
// upstream where the owner stopped; the whole does not verify, and the
// first client gets an error. The owner sent bytes that are not the blob:
// it must be passed over as one whose body does not verify is, so that the
// client's retries are served from the upstream, right. Otherwise every
// retry asks the owner again, through the neighbour, and fails again: the
// neighbour denies the blob for as long as the owner's download lasts,
// where flipping a byte alone (TestReplicaBlobThatDoesNotVerify) costs
// one request.
func TestReplicaBlobCorruptedThenCutPassesTheOwnerOver(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	var tampered atomic.Int32
	reps := startReplicas(t, h, 2, func(i int, internal string) string {
		u, _ := url.Parse(internal)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ModifyResponse = func(resp *http.Response) error {
			if resp.StatusCode == http.StatusOK && strings.Contains(resp.Request.URL.Path, "blob") {
				resp.Body = &flipThenCut{ReadCloser: resp.Body, left: 256 << 10}
				tampered.Add(1)
			}
			return nil
		}
		rp.ErrorLog = log.New(io.Discard, "", 0)
		front := httptest.NewServer(rp)
		t.Cleanup(front.Close)
		return front.URL
	})
	// A layer replica 1 owns, which replica 0's client asks for.
	var layer []byte
	var dgst digest.Digest
	for n := 0; ; n++ {
		if n == 64 {
			t.Fatal("no layer owned by replica 1")
		}
		layer = make([]byte, 1<<20)
		rand.Read(layer)
		dgst = digest.FromBytes(layer)
		if reps[0].built.replicas.Owner("blob docker.io "+dgst.String()) != nil {
			break
		}
	}
	h.pushBlob(t, "library/app", layer)
	path := "/v2/library/app/blobs/" + dgst.String()
	// The upstream sends the first whole GET of the layer (the owner's) by
	// halves, the second once released; the rest go through.
	var first atomic.Bool
	release := make(chan struct{})
	defer close(release)
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || r.Method != http.MethodGet || r.Header.Get("Range") != "" || !first.CompareAndSwap(false, true) {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(layer)))
		w.Write(layer[:len(layer)/2])
		w.(http.Flusher).Flush()
		<-release
		w.Write(layer[len(layer)/2:])
	})
	get := func() (int, []byte, error) { return getBody(reps[0].url + path) }
	status, body, err := get()
	if err == nil && status == http.StatusOK && digest.FromBytes(body) != dgst {
		t.Fatalf("a client got a whole body that is not the blob (%d bytes)", len(body))
	}
	if tampered.Load() != 1 {
		t.Fatalf("the owner was asked %d times through the neighbour, want 1: the test tested nothing", tampered.Load())
	}
	t.Logf("the first client: %d %q, %v", status, body, err)
	for retry := range 2 {
		status, body, err = get()
		if err != nil || status != http.StatusOK || digest.FromBytes(body) != dgst {
			t.Errorf("retry %d: %d, %d bytes, %v; want the blob (the owner that sent bytes that are not the blob passed over)",
				retry+1, status, len(body), err)
		}
	}
	if got := tampered.Load(); got != 1 {
		t.Errorf("the owner was asked %d times through the neighbour, want 1: it sent a blob that does not verify", got)
	}
}

// flipThenCut flips one bit of the first byte it passes, and fails after
// left bytes: the connection is cut before the blob's end.
type flipThenCut struct {
	io.ReadCloser
	left    int
	flipped bool
}

func (f *flipThenCut) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errors.New("cut by the neighbour")
	}
	if len(p) > f.left {
		p = p[:f.left]
	}
	n, err := f.ReadCloser.Read(p)
	if n > 0 && !f.flipped {
		p[0] ^= 1
		f.flipped = true
	}
	f.left -= n
	return n, err
}
