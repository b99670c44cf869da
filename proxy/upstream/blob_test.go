package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/upstream"
)

// cutting serves blob, honouring "bytes=N-" ranges, and cuts the body
// short (the connection drops) after at most cut bytes for the first cuts
// requests. rangeAnswer, when set, replaces the Content-Range it sends.
type cutting struct {
	blob        []byte
	cut, cuts   int
	rangeAnswer string
	ignoreRange bool // every answer is the whole blob, 200
	gets        atomic.Int32
}

func (c *cutting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := int(c.gets.Add(1))
	start := 0
	if v, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes="); ok && !c.ignoreRange {
		start, _ = strconv.Atoi(strings.TrimSuffix(v, "-"))
	}
	rest := c.blob[start:]
	w.Header().Set("Content-Length", strconv.Itoa(len(rest)))
	if r.Header.Get("Range") != "" && start > 0 && !c.ignoreRange {
		cr := fmt.Sprintf("bytes %d-%d/%d", start, len(c.blob)-1, len(c.blob))
		if c.rangeAnswer != "" {
			cr = c.rangeAnswer
		}
		w.Header().Set("Content-Range", cr)
		w.WriteHeader(http.StatusPartialContent)
	}
	if n <= c.cuts {
		w.Write(rest[:min(c.cut, len(rest))])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	w.Write(rest)
}

func blobRegistry(t *testing.T, h http.Handler, attempts int, backoff time.Duration) *upstream.Registry {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return upstream.New(upstream.Config{Name: "example", URL: u}, upstream.Options{
		Retry: upstream.RetryPolicy{Attempts: attempts, Backoff: backoff, MaxWait: time.Minute}, Stall: 10 * time.Second,
		Metrics: upstream.NewMetrics(), Log: slog.New(slog.DiscardHandler)})
}

func testBlob() ([]byte, digest.Digest) {
	blob := bytes.Repeat([]byte("regnorm "), 64<<10)
	return blob, digest.FromBytes(blob)
}

// A body cut short is resumed where it stopped, as often as the policy
// allows; then the error is final, and so is Close: no more requests.
func TestBlobResumesThenGivesUp(t *testing.T) {
	t.Parallel()
	blob, dgst := testBlob()
	ctx := context.Background()

	c := &cutting{blob: blob, cut: 100 << 10, cuts: 2}
	b, err := blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, blob) || c.gets.Load() != 3 {
		t.Fatalf("cut twice, 3 attempts: %d of %d bytes, %v, %d GETs; want all of it after 3", len(got), len(blob), err, c.gets.Load())
	}
	b.Close()

	c = &cutting{blob: blob, cut: 100 << 10, cuts: 99}
	b, err = blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(b)
	if err == nil || len(got) != 300<<10 || c.gets.Load() != 3 {
		t.Fatalf("always cut: %d bytes, %v, %d GETs; want 300 KiB, an error, 3 GETs", len(got), err, c.gets.Load())
	}
	if n, again := b.Read(make([]byte, 10)); n != 0 || again == nil || c.gets.Load() != 3 {
		t.Errorf("a Read after the final error: %d bytes, %v, %d GETs", n, again, c.gets.Load())
	}
	b.Close()
	if n, err := b.Read(make([]byte, 10)); n != 0 || err == nil || c.gets.Load() != 3 {
		t.Errorf("a Read after Close: %d bytes, %v, %d GETs", n, err, c.gets.Load())
	}
}

// A resumption answered with another range than asked is an error, never
// bytes from the wrong place; one cut before any byte may be answered with
// the whole blob.
func TestBlobResumeChecksTheRange(t *testing.T) {
	t.Parallel()
	blob, dgst := testBlob()
	ctx := context.Background()

	c := &cutting{blob: blob, cut: 100 << 10, cuts: 1, rangeAnswer: "bytes 0-99/100"}
	b, err := blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(b); err == nil || !strings.Contains(err.Error(), "answered range") || len(got) != 100<<10 {
		t.Errorf("wrong range: %d bytes, %v; want 100 KiB and an error naming the range", len(got), err)
	}

	c = &cutting{blob: blob, cut: 0, cuts: 1}
	b, err = blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(b); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("cut at 0: %d bytes, %v; want all of it", len(got), err)
	}
}

// An upstream that ignores ranges answers a resumption with the whole
// blob: what was read is skipped, and the blob comes out whole, as it does
// for a replica's download that goes on where its owner stopped
// (GetBlobFrom).
func TestBlobResumeFromAnUpstreamThatIgnoresRanges(t *testing.T) {
	t.Parallel()
	blob, dgst := testBlob()
	ctx := context.Background()
	c := &cutting{blob: blob, cut: 100 << 10, cuts: 1, ignoreRange: true}
	b, err := blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(b); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("resumed: %d bytes, %v; want all of it", len(got), err)
	}
	c = &cutting{blob: blob, ignoreRange: true}
	rest := blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlobFrom(ctx, dgst, 1000, int64(len(blob)))
	if got, err := io.ReadAll(rest); err != nil || !bytes.Equal(got, blob[1000:]) {
		t.Errorf("from 1000: %d bytes, %v; want the rest", len(got), err)
	}
}

// A download cancelled while it waits to resume ends with the cancel's
// cause, so the caller can tell why (an orphaned download, say).
func TestBlobCancelCause(t *testing.T) {
	t.Parallel()
	blob, dgst := testBlob()
	cause := errors.New("nobody reads it")
	ctx, cancel := context.WithCancelCause(context.Background())
	c := &cutting{blob: blob, cut: 100 << 10, cuts: 1}
	b, err := blobRegistry(t, c, 3, time.Hour).Repository("lib/x").GetBlob(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, b)
		done <- err
	}()
	cancel(cause) // the resume waits an hour: the cancel ends it
	if err := <-done; !errors.Is(err, cause) {
		t.Errorf("error %v; want one that is the cancel's cause", err)
	}
}
