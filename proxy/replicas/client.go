package replicas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// The owner's routes, on the replicas' own listener.
const (
	BlobPath     = "/internal/v1/blob"
	ManifestPath = "/internal/v1/manifest"
	VariantPath  = "/internal/v1/variant"
)

// Kinds of work, the metrics' label.
const (
	KindBlob     = "blob"
	KindManifest = "manifest"
	KindVariant  = "variant"
)

// maxErrorBody bounds an owner's error answer.
const maxErrorBody = 64 << 10

// Peer is another replica: the owner of some work, asked to do it.
//
// What a Peer's methods return is the owner's answer when it is an
// *errcode.Error: the owner asked the upstream as the asker would (same
// upstream, repository and credentials), so its no stands. Any other error
// means the owner could not answer (gone, failing, too slow, or its answer
// not signed), and the asker does the work itself.
type Peer struct {
	set *Set
	url string
}

// URL is the replica's.
func (p *Peer) URL() string { return p.url }

func (p *Peer) request(ctx context.Context, method, path string, q url.Values, h http.Header) (*http.Request, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, p.url+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, "", err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	return req, p.set.sign(req), nil
}

// do sends req; a failure to answer at all passes the owner over.
func (p *Peer) do(req *http.Request) (*http.Response, error) {
	resp, err := p.set.opts.Client.Do(req)
	if err != nil {
		if req.Context().Err() == nil {
			p.set.failed(p.url, err)
		}
		return nil, fmt.Errorf("ask replica %s: %w", p.url, err)
	}
	return resp, nil
}

// answer is an owner's answer that is not a success: an *errcode.Error when
// it stands (a 4xx, or standing says so), else a failure.
func (p *Peer) answer(resp *http.Response, reqMAC string, standing bool) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody+1))
	if err != nil || len(body) > maxErrorBody {
		return fmt.Errorf("replica %s answered %d, and its body could not be read", p.url, resp.StatusCode)
	}
	if err := p.set.checkAnswer(resp, reqMAC, body); err != nil {
		return fmt.Errorf("replica %s: %w", p.url, err)
	}
	if resp.StatusCode >= 500 && !standing {
		return fmt.Errorf("replica %s answered %d", p.url, resp.StatusCode)
	}
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &oci) != nil || len(oci.Errors) == 0 || resp.StatusCode < 400 {
		return fmt.Errorf("replica %s answered %d without an error", p.url, resp.StatusCode)
	}
	e := errcode.New(resp.StatusCode, oci.Errors[0].Code, oci.Errors[0].Message, fmt.Errorf("answered by replica %s", p.url))
	e.RetryAfter = retryAfter(resp.Header)
	e.Challenge = resp.Header.Get("WWW-Authenticate")
	return e
}

// count records how an ask of kind ended: an error that does not stand
// makes the asker do the work itself.
func (p *Peer) count(kind string, err error) error {
	var answer *errcode.Error
	switch {
	case err == nil:
		p.set.opts.Metrics.asks.WithLabelValues(kind, "ok").Inc()
	case errors.As(err, &answer):
		p.set.opts.Metrics.asks.WithLabelValues(kind, "answer").Inc()
	default:
		p.set.opts.Metrics.asks.WithLabelValues(kind, "fallback").Inc()
		p.set.opts.Log.Info("the owner did not answer; doing its work here", "kind", kind, "replica", p.url, "error", err)
	}
	return err
}

func where(upstream, repo string) url.Values {
	return url.Values{"upstream": {upstream}, "repo": {repo}}
}

// GetBlob opens dgst, which upstream's repo holds, from its owner: its
// size and its body as the owner sends it, which the asker verifies. A body
// that fails is the owner's failure (an error from Read, never a short end):
// the asker goes on from the upstream itself.
func (p *Peer) GetBlob(ctx context.Context, upstream, repo string, dgst digest.Digest) (io.ReadCloser, int64, error) {
	rc, size, err := p.getBlob(ctx, upstream, repo, dgst)
	return rc, size, p.count(KindBlob, err)
}

func (p *Peer) getBlob(ctx context.Context, upstream, repo string, dgst digest.Digest) (io.ReadCloser, int64, error) {
	q := where(upstream, repo)
	q.Set("digest", dgst.String())
	ctx, cancel := context.WithCancelCause(ctx)
	req, reqMAC, err := p.request(ctx, http.MethodGet, BlobPath, q, nil)
	if err != nil {
		cancel(nil)
		return nil, 0, err
	}
	resp, err := p.do(req)
	if err != nil {
		cancel(nil)
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel(nil)
		return nil, 0, p.answer(resp, reqMAC, false)
	}
	if err := p.set.checkAnswer(resp, reqMAC, nil); err != nil {
		resp.Body.Close()
		cancel(nil)
		return nil, 0, fmt.Errorf("replica %s: %w", p.url, err)
	}
	if resp.ContentLength < 0 || resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		resp.Body.Close()
		cancel(nil)
		return nil, 0, fmt.Errorf("replica %s answered blob %s without its size or digest", p.url, dgst)
	}
	return &relayed{peer: p, body: resp.Body, cancel: cancel, timeout: p.set.opts.StallTimeout}, resp.ContentLength, nil
}

// errStalled is why an owner's body was abandoned.
var errStalled = errors.New("the owner stopped sending")

// relayed is an owner's blob body: one that sends nothing for the stall
// timeout (only time inside Read counts) is cut, and any failure is counted
// once as the owner's.
type relayed struct {
	peer    *Peer
	body    io.ReadCloser
	cancel  context.CancelCauseFunc
	timeout time.Duration
	failed  atomic.Bool
}

func (b *relayed) Read(p []byte) (int, error) {
	stall := time.AfterFunc(b.timeout, func() { b.cancel(errStalled) })
	n, err := b.body.Read(p)
	stalled := !stall.Stop()
	if err == nil || err == io.EOF {
		return n, err
	}
	if stalled {
		err = fmt.Errorf("%w for %s", errStalled, b.timeout)
	}
	if b.failed.CompareAndSwap(false, true) {
		b.peer.set.opts.Metrics.asks.WithLabelValues(KindBlob, "fallback").Inc()
		b.peer.set.opts.Log.Info("the owner stopped in the middle of a blob; going on from upstream", "replica", b.peer.url, "error", err)
		if stalled {
			b.peer.set.failed(b.peer.url, err)
		}
	}
	return n, fmt.Errorf("relay from replica %s: %w", b.peer.url, err)
}

func (b *relayed) Close() error {
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// GetManifest is ref (a tag or a digest) of upstream's repo as its owner
// answers it to a client that accepts accept: verified against ref when
// ref is a digest, and signed by the owner either way. stale is set when the
// owner answered from an expired tag record.
func (p *Peer) GetManifest(ctx context.Context, upstream, repo, ref string, accept []string) (m cache.Manifest, stale bool, err error) {
	m, stale, err = p.getManifest(ctx, upstream, repo, ref, accept)
	return m, stale, p.count(KindManifest, err)
}

func (p *Peer) getManifest(ctx context.Context, upstream, repo, ref string, accept []string) (cache.Manifest, bool, error) {
	q := where(upstream, repo)
	q.Set("ref", ref)
	q["accept"] = accept
	ctx, cancel := context.WithTimeout(ctx, p.set.opts.StallTimeout)
	defer cancel()
	req, reqMAC, err := p.request(ctx, http.MethodGet, ManifestPath, q, nil)
	if err != nil {
		return cache.Manifest{}, false, err
	}
	resp, err := p.do(req)
	if err != nil {
		return cache.Manifest{}, false, err
	}
	if resp.StatusCode != http.StatusOK {
		return cache.Manifest{}, false, p.answer(resp, reqMAC, false)
	}
	defer resp.Body.Close()
	content, err := io.ReadAll(io.LimitReader(resp.Body, mediatype.MaxManifestSize+1))
	if err != nil {
		return cache.Manifest{}, false, fmt.Errorf("read manifest from replica %s: %w", p.url, err)
	}
	if len(content) > mediatype.MaxManifestSize {
		return cache.Manifest{}, false, fmt.Errorf("replica %s sent a manifest larger than %d bytes", p.url, mediatype.MaxManifestSize)
	}
	if err := p.set.checkAnswer(resp, reqMAC, content); err != nil {
		return cache.Manifest{}, false, fmt.Errorf("replica %s: %w", p.url, err)
	}
	got := digest.FromBytes(content)
	if resp.Header.Get("Docker-Content-Digest") != got.String() || (strings.Contains(ref, ":") && ref != got.String()) {
		return cache.Manifest{}, false, fmt.Errorf("replica %s sent a manifest that does not match its digest", p.url)
	}
	stale, _ := strconv.ParseBool(resp.Header.Get(StaleHeader))
	return cache.Manifest{MediaType: resp.Header.Get("Content-Type"), Digest: got, Content: content}, stale, nil
}

// MakeVariant has the owner make the variant of original, which upstream's
// repo holds, for rules, and returns once it is in the cache. With a wait,
// the owner works at most that long before it answers 503 with
// Retry-After, which stands (it goes on working); without one, as long as
// ctx lets it.
func (p *Peer) MakeVariant(ctx context.Context, upstream, repo string, original digest.Digest, rules ruleset.Set, wait time.Duration) error {
	return p.count(KindVariant, p.makeVariant(ctx, upstream, repo, original, rules, wait))
}

func (p *Peer) makeVariant(ctx context.Context, upstream, repo string, original digest.Digest, rules ruleset.Set, wait time.Duration) error {
	q := where(upstream, repo)
	q.Set("digest", original.String())
	q.Set("rules", rules.Key())
	if wait > 0 {
		q.Set("wait", wait.String())
		// The owner answers within wait; past it and the stall timeout, it
		// is not answering.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+p.set.opts.StallTimeout)
		defer cancel()
	}
	req, reqMAC, err := p.request(ctx, http.MethodPost, VariantPath, q, nil)
	if err != nil {
		return err
	}
	resp, err := p.do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusNoContent {
		// A 503 is the owner still working, or too busy to: it stands.
		return p.answer(resp, reqMAC, resp.StatusCode == http.StatusServiceUnavailable)
	}
	defer resp.Body.Close()
	return p.set.checkAnswer(resp, reqMAC, []byte{})
}
