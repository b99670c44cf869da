package upstream_test

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestBlobResumeAnswered200ShorterThanWhatWasRead: an upstream that
// ignores ranges answers a resumption with a whole body shorter than what
// was already read (another blob, or one cut on purpose). Skipping what
// was read meets the body's end: that is an error of the read, once, not
// bytes handed on, nor a loop of requests.
func TestBlobResumeAnswered200ShorterThanWhatWasRead(t *testing.T) {
	t.Parallel()
	blob, dgst := testBlob()
	c := &cutting{blob: blob, ignoreRange: true}
	rest := blobRegistry(t, c, 3, time.Millisecond).Repository("lib/x").GetBlobFrom(context.Background(), dgst, int64(len(blob))+10, int64(len(blob))+20)
	got, err := io.ReadAll(rest)
	if err == nil || len(got) != 0 {
		t.Errorf("from past the end of a 200: %d bytes, %v; want an error and nothing", len(got), err)
	}
	if n := c.gets.Load(); n != 1 {
		t.Errorf("the upstream was asked %d times, want 1", n)
	}
}
