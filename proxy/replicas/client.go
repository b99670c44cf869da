package replicas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/errcode"
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
// upstream, configured alike, same repository and credentials), so its no
// stands. Any other error means the owner did not answer for the asker
// (gone, failing, too slow, its answer not signed, or its configuration
// not the asker's), and the asker does the work itself.
type Peer struct {
	set *Set
	url string
}

// URL is the replica's.
func (p *Peer) URL() string { return p.url }

// errOwnerSlow is the cause of an ask given up on: the owner took longer
// than it may.
var errOwnerSlow = errors.New("the owner did not answer in time")

// asked is an owner's answer to an ask: its response, the MAC of the
// request it answers, and the cancellation of the ask.
type asked struct {
	resp   *http.Response
	reqMAC string
	cancel context.CancelCauseFunc
}

// ask sends a; an owner that does not answer within headerTimeout (0: as
// long as ctx allows), or at all, is passed over.
func (p *Peer) ask(ctx context.Context, a Ask, method string, headerTimeout time.Duration) (asked, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	a.Config = p.set.configMAC(a.Config)
	req, err := http.NewRequestWithContext(ctx, method, p.url+a.path()+"?"+a.query().Encode(), nil)
	if err != nil {
		cancel(nil)
		return asked{}, err
	}
	reqMAC := p.set.sign(req)
	var timer *time.Timer
	if headerTimeout > 0 {
		timer = time.AfterFunc(headerTimeout, func() { cancel(errOwnerSlow) })
	}
	resp, err := p.set.opts.Client.Do(req)
	if timer != nil && !timer.Stop() {
		err = errors.Join(err, errOwnerSlow)
	}
	if err != nil {
		slow := errors.Is(context.Cause(ctx), errOwnerSlow)
		if slow || ctx.Err() == nil {
			p.set.failed(p.url, err)
		}
		cancel(nil)
		if resp != nil {
			resp.Body.Close()
		}
		return asked{}, fmt.Errorf("ask replica %s: %w", p.url, err)
	}
	return asked{resp: resp, reqMAC: reqMAC, cancel: cancel}, nil
}

// body reads the answer's whole body, at most limit bytes, within the
// stall timeout: an owner that sends headers and then too little, too
// slowly, is passed over.
func (p *Peer) body(a asked, limit int64) ([]byte, error) {
	defer a.resp.Body.Close()
	stop := time.AfterFunc(p.set.opts.StallTimeout, func() { a.cancel(errOwnerSlow) })
	body, err := io.ReadAll(io.LimitReader(a.resp.Body, limit+1))
	if !stop.Stop() {
		err = errors.Join(err, errOwnerSlow)
		p.set.failed(p.url, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read the answer of replica %s: %w", p.url, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("replica %s answered more than %d bytes", p.url, limit)
	}
	return body, nil
}

// PassOver passes the owner over: what it sent did not verify.
func (p *Peer) PassOver(err error) { p.set.failed(p.url, err) }

// Failed counts an ask of kind whose answer failed after it began (a blob
// body cut, or not verifying): the asker does the rest itself.
func (p *Peer) Failed(kind string, err error) { p.count(kind, err) }

// answer is an owner's answer that is not a success: an *errcode.Error when
// it stands, else a failure. A 421 (the ask was not the owner's to answer)
// and a 5xx are failures, but a variant's 503 (still at work, or too busy
// to start), which stands.
func (p *Peer) answer(a asked, kind string) error {
	resp := a.resp
	body, err := p.body(a, maxErrorBody)
	if err != nil {
		return fmt.Errorf("replica %s answered %d: %w", p.url, resp.StatusCode, err)
	}
	if err := p.checkAnswer(resp, a.reqMAC, body); err != nil {
		return err
	}
	standing := resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusMisdirectedRequest ||
		kind == KindVariant && resp.StatusCode == http.StatusServiceUnavailable
	if !standing {
		return fmt.Errorf("replica %s answered %d: %s", p.url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &oci) != nil || len(oci.Errors) == 0 {
		return fmt.Errorf("replica %s answered %d without an error", p.url, resp.StatusCode)
	}
	// No challenge is taken from an owner: owners serve no upstream that
	// forwards credentials, so none is the client's to follow.
	e := errcode.New(resp.StatusCode, oci.Errors[0].Code, oci.Errors[0].Message, fmt.Errorf("answered by replica %s", p.url))
	e.RetryAfter = retryAfter(resp.Header)
	return e
}

// checkAnswer checks the owner's signature on its answer; an owner whose
// answers do not verify is passed over.
func (p *Peer) checkAnswer(resp *http.Response, reqMAC string, body []byte) error {
	if err := p.set.checkAnswer(resp, reqMAC, body); err != nil {
		err = fmt.Errorf("replica %s: %w", p.url, err)
		p.set.failed(p.url, err)
		return err
	}
	return nil
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

// GetBlob opens the blob a (KindBlob) names from its owner: its size and
// its body as the owner sends it, which the asker verifies (and passes the
// owner over, PassOver, when it does not). A body that fails is the
// owner's failure: an error from Read, never a short end.
func (p *Peer) GetBlob(ctx context.Context, a Ask) (io.ReadCloser, int64, error) {
	rc, size, err := p.getBlob(ctx, a)
	return rc, size, p.count(KindBlob, err)
}

func (p *Peer) getBlob(ctx context.Context, a Ask) (io.ReadCloser, int64, error) {
	r, err := p.ask(ctx, a, http.MethodGet, p.set.opts.StallTimeout)
	if err != nil {
		return nil, 0, err
	}
	if r.resp.StatusCode != http.StatusOK {
		defer r.cancel(nil)
		return nil, 0, p.answer(r, KindBlob)
	}
	if err := p.checkAnswer(r.resp, r.reqMAC, nil); err != nil {
		r.resp.Body.Close()
		r.cancel(nil)
		return nil, 0, err
	}
	if r.resp.ContentLength < 0 || r.resp.Header.Get("Docker-Content-Digest") != a.Digest.String() {
		r.resp.Body.Close()
		r.cancel(nil)
		return nil, 0, fmt.Errorf("replica %s answered blob %s without its size or digest", p.url, a.Digest)
	}
	b := &ownerBody{peer: p, body: r.resp.Body, cancel: r.cancel, timeout: p.set.opts.StallTimeout}
	b.stall = time.AfterFunc(b.timeout, func() { b.cancel(errStalled) })
	b.stall.Stop()
	return b, r.resp.ContentLength, nil
}

// errStalled is why an owner's body was abandoned.
var errStalled = errors.New("the owner stopped sending")

// ownerBody is an owner's blob body: one that sends nothing for the stall
// timeout (only time inside Read counts) is cut and its owner passed over.
// Its reader counts a failure (Failed).
type ownerBody struct {
	peer    *Peer
	body    io.ReadCloser
	cancel  context.CancelCauseFunc
	timeout time.Duration
	stall   *time.Timer // armed while a Read waits
}

func (b *ownerBody) Read(p []byte) (int, error) {
	b.stall.Reset(b.timeout)
	n, err := b.body.Read(p)
	stalled := !b.stall.Stop()
	if err == nil || err == io.EOF {
		return n, err
	}
	if stalled {
		err = fmt.Errorf("%w for %s", errStalled, b.timeout)
		b.peer.set.failed(b.peer.url, err)
	}
	return n, fmt.Errorf("relay from replica %s: %w", b.peer.url, err)
}

func (b *ownerBody) Close() error {
	b.stall.Stop()
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// GetManifest is the manifest a (KindManifest) names as its owner answers
// it: verified against a.Ref when that is a digest, and signed by the owner
// either way. stale is set when the owner answered from an expired tag
// record.
func (p *Peer) GetManifest(ctx context.Context, a Ask) (m cache.Manifest, stale bool, err error) {
	m, stale, err = p.getManifest(ctx, a)
	return m, stale, p.count(KindManifest, err)
}

func (p *Peer) getManifest(ctx context.Context, a Ask) (cache.Manifest, bool, error) {
	r, err := p.ask(ctx, a, http.MethodGet, p.set.opts.StallTimeout)
	if err != nil {
		return cache.Manifest{}, false, err
	}
	defer r.cancel(nil)
	if r.resp.StatusCode != http.StatusOK {
		return cache.Manifest{}, false, p.answer(r, KindManifest)
	}
	content, err := p.body(r, mediatype.MaxManifestSize)
	if err != nil {
		return cache.Manifest{}, false, err
	}
	if err := p.checkAnswer(r.resp, r.reqMAC, content); err != nil {
		return cache.Manifest{}, false, err
	}
	got := digest.FromBytes(content)
	if r.resp.Header.Get("Docker-Content-Digest") != got.String() || (strings.Contains(a.Ref, ":") && a.Ref != got.String()) {
		return cache.Manifest{}, false, fmt.Errorf("replica %s sent a manifest that does not match its digest", p.url)
	}
	stale, _ := strconv.ParseBool(r.resp.Header.Get(StaleHeader))
	return cache.Manifest{MediaType: r.resp.Header.Get("Content-Type"), Digest: got, Content: content}, stale, nil
}

// MakeVariant has the owner make the variant a (KindVariant) names, and
// returns once it is in the cache. With a wait (at most MaxWait), the owner
// works at most that long before it answers 503 with Retry-After, which
// stands (it goes on working); without one, as long as ctx lets it.
func (p *Peer) MakeVariant(ctx context.Context, a Ask) error {
	return p.count(KindVariant, p.makeVariant(ctx, a))
}

func (p *Peer) makeVariant(ctx context.Context, a Ask) error {
	var timeout time.Duration
	if a.Wait > 0 {
		// The owner answers within the wait; past it and the stall
		// timeout, it is not answering.
		timeout = min(a.Wait, MaxWait) + p.set.opts.StallTimeout
	}
	r, err := p.ask(ctx, a, http.MethodPost, timeout)
	if err != nil {
		return err
	}
	defer r.cancel(nil)
	if r.resp.StatusCode != http.StatusNoContent {
		return p.answer(r, KindVariant)
	}
	r.resp.Body.Close()
	return p.checkAnswer(r.resp, r.reqMAC, []byte{})
}
