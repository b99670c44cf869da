package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/distribution/reference"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
)

// WarmRequest is the body of POST /api/v1/warm.
type WarmRequest struct {
	// Images are references such as docker.io/library/redis:2.8.23; the
	// registry must be a configured upstream.
	Images []string `json:"images"`
}

// WarmResult is what warming one image did.
type WarmResult struct {
	Image            string         `json:"image"`
	OriginalDigest   string         `json:"originalDigest,omitempty"`
	NormalizedDigest string         `json:"normalizedDigest,omitempty"`
	Changes          []cache.Change `json:"changes,omitempty"`
	Error            string         `json:"error,omitempty"`
}

const (
	maxWarmImages   = 1000
	warmConcurrency = 2
)

// serveWarm normalizes images ahead of time, waiting as long as it takes, so
// that nodes asking later get the answer at once.
func (s *Server) serveWarm(w http.ResponseWriter, r *http.Request) error {
	var req WarmRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		return newError(http.StatusBadRequest, CodeUnsupported, "body must be {\"images\": [...]}", err)
	}
	if len(req.Images) == 0 || len(req.Images) > maxWarmImages {
		return newError(http.StatusBadRequest, CodeUnsupported, fmt.Sprintf("give 1 to %d images", maxWarmImages), nil)
	}
	results := make([]WarmResult, len(req.Images))
	var mu sync.Mutex
	g := errgroup.Group{}
	g.SetLimit(warmConcurrency)
	for i, image := range req.Images {
		g.Go(func() error {
			res := s.warm(r, image)
			mu.Lock()
			results[i] = res
			mu.Unlock()
			return nil
		})
	}
	g.Wait()
	w.Header().Set("Content-Type", "application/json")
	return writeJSON(w, map[string]any{"results": results})
}

// warm normalizes one image for the client of r, who must be allowed to
// pull it: with forwarded credentials, its own credentials are asked, as for
// a pull.
func (s *Server) warm(r *http.Request, image string) WarmResult {
	ctx := r.Context()
	res := WarmResult{Image: image}
	fail := func(err error) WarmResult {
		res.Error = err.Error()
		return res
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fail(err)
	}
	up, err := s.upstreamFor(reference.Domain(named))
	if err != nil {
		return fail(err)
	}
	if up, err = up.as(r); err != nil {
		return fail(err)
	}
	req := distRequest{upstream: up, repo: reference.Path(named)}
	var m cache.Manifest
	if ref, ok := named.(reference.Canonical); ok {
		req.digest = ref.Digest()
		m, _, err = s.manifestByDigest(ctx, req, nil)
	} else {
		req.tag = "latest"
		if ref, ok := named.(reference.Tagged); ok {
			req.tag = ref.Tag()
		}
		if err = s.admitTag(ctx, req); err == nil {
			m, _, err = s.manifestByTag(ctx, req, nil)
		}
	}
	if err != nil {
		return fail(err)
	}
	res.OriginalDigest = m.Digest.String()
	n, err := s.normalize(ctx, up, req.repo, m)
	if err != nil {
		return fail(err)
	}
	if n.changed() {
		res.NormalizedDigest, res.Changes = n.verdict.Normalized.String(), n.verdict.Changes
	}
	return res
}

// Warm asks the regnorm at server to normalize images ahead of time.
func Warm(ctx context.Context, server string, images []string) ([]WarmResult, error) {
	body, err := json.Marshal(WarmRequest{Images: images})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(server, "/")+"/api/v1/warm", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, fmt.Errorf("warm: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var out struct {
		Results []WarmResult `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("warm: %w", err)
	}
	return out.Results, nil
}
