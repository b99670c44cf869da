package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// sendChunked answers a blob GET with content and no length, as chunks:
// nothing announces how much will come.
func sendChunked(content []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		for b := content; len(b) > 0; b = b[min(len(b), 4<<10):] {
			if _, err := w.Write(b[:min(len(b), 4<<10)]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

// TestBlobSizeIsBounded: a blob larger than its upstream's maxBlobSize is
// refused when its length says so and stopped when it does not (a chunked
// body), the client gets a 502 OCI error, and nothing of it is cached. A
// blob of exactly the limit is served.
func TestBlobSizeIsBounded(t *testing.T) {
	t.Parallel()
	const limit = 16 << 10
	for _, tt := range []struct {
		name    string
		size    int
		chunked bool
		wantOK  bool
	}{
		{name: "announced", size: 64 << 10},
		{name: "unknown length", size: 64 << 10, chunked: true},
		{name: "unknown length, one byte over", size: limit + 1, chunked: true},
		{name: "exactly the limit", size: limit, wantOK: true},
		{name: "exactly the limit, unknown length", size: limit, chunked: true, wantOK: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{upstream: func(c *upstream.Config) { c.MaxBlobSize = limit }})
			content := regtest.RandomBytes(tt.size)
			dgst := h.pushBlob(t, "library/big", content)
			path := "/v2/library/big/blobs/" + dgst.String()
			if tt.chunked {
				firstN(h.front, 1<<20, "/blobs/", sendChunked(content))
			} else if r := h.do(t, http.MethodHead, path, nil); (r.status == http.StatusOK) != tt.wantOK {
				t.Errorf("HEAD: got %d %s", r.status, r.header)
			}

			r := h.do(t, http.MethodGet, path, nil)
			if tt.wantOK {
				if r.status != http.StatusOK || !bytes.Equal(r.body, content) {
					t.Fatalf("got %d, %d bytes; want the blob", r.status, len(r.body))
				}
				return
			}
			if r.status != http.StatusBadGateway || r.ociError(t) != "UNAVAILABLE" || !strings.Contains(string(r.body), "maxBlobSize") {
				t.Errorf("got %d %.200q, want 502 UNAVAILABLE naming maxBlobSize", r.status, r.body)
			}
			if _, err := h.store.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("the blob is in the cache (%v)", err)
			}
			assertNoPartial(t, h.root, content)
			want := 1.0 // the GET
			if !tt.chunked {
				want++ // and the HEAD
			}
			if got := h.metric(t, "regnorm_upstream_blobs_too_large_total", `upstream="docker.io"`); got != want {
				t.Errorf("blobs too large: %v, want %v", got, want)
			}
		})
	}
}

// assertNoPartial fails if any file under root holds the start of content:
// a partial download left behind.
func assertNoPartial(t *testing.T, root string, content []byte) {
	t.Helper()
	head := content[:1024]
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, head) {
			t.Errorf("%s holds part of the refused blob (%d bytes)", path, len(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
