//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

const acceptAll = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"

// pullResult is one pull's timing.
type pullResult struct {
	total         time.Duration
	firstManifest time.Duration // until the tag's HEAD answered
	bytes         int64
}

var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}

// pull is pullAs by Debian's containerd 1.6.20, which needs the config
// media type rule only.
func pull(ctx context.Context, base, repo, tag string) (pullResult, error) {
	return pullAs(ctx, "containerd/1.6.20", base, repo, tag)
}

// pullAs makes the requests containerd makes, with its User-Agent: HEAD by
// tag, GET manifest by digest, GET config and layers (three at a time),
// verifying every digest. A 503 with Retry-After (a mirror still
// normalizing) is retried, as kubelet would.
func pullAs(ctx context.Context, userAgent, base, repo, tag string) (pullResult, error) {
	start := time.Now()
	var res pullResult
	var dgst digest.Digest
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, base+"/v2/"+repo+"/manifests/"+tag, nil)
		req.Header.Set("Accept", acceptAll)
		req.Header.Set("User-Agent", userAgent)
		resp, err := httpClient.Do(req)
		if err != nil {
			return res, err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			time.Sleep(time.Second)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return res, fmt.Errorf("HEAD %s:%s: %s", repo, tag, resp.Status)
		}
		dgst = digest.Digest(resp.Header.Get("Docker-Content-Digest"))
		break
	}
	res.firstManifest = time.Since(start)
	body, err := get(ctx, base+"/v2/"+repo+"/manifests/"+dgst.String(), dgst, &res)
	if err != nil {
		return res, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return res, err
	}
	if _, err := get(ctx, base+"/v2/"+repo+"/blobs/"+m.Config.Digest.String(), m.Config.Digest, &res); err != nil {
		return res, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(3)
	var layerBytes atomic.Int64
	for _, l := range m.Layers {
		g.Go(func() error {
			var r pullResult
			_, err := get(gctx, base+"/v2/"+repo+"/blobs/"+l.Digest.String(), l.Digest, &r)
			layerBytes.Add(r.bytes)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	res.bytes += layerBytes.Load()
	res.total = time.Since(start)
	return res, nil
}

// errWrongContent is a body that does not hash to the digest it was asked by.
var errWrongContent = errors.New("content does not hash to its digest")

// get fetches url and verifies that the body hashes to want. Manifests are
// returned; blobs are hashed as they stream and discarded.
func get(ctx context.Context, url string, want digest.Digest, res *pullResult) ([]byte, error) {
	return getAs(ctx, "", url, want, res)
}

// getAs is get with userAgent's User-Agent (Go's when it is empty). A
// body that hashes to another digest is an errWrongContent.
func getAs(ctx context.Context, userAgent, url string, want digest.Digest, res *pullResult) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", acceptAll)
	if userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	h := sha256.New()
	var body []byte
	var n int64
	if resp.Header.Get("Content-Type") != "application/octet-stream" && resp.ContentLength < 4<<20 {
		body, err = io.ReadAll(resp.Body)
		h.Write(body)
		n = int64(len(body))
	} else {
		n, err = io.Copy(h, resp.Body)
	}
	if err != nil {
		return nil, err
	}
	res.bytes += n
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != want {
		return nil, fmt.Errorf("GET %s: %w: it hashes to %s", url, errWrongContent, got)
	}
	return body, nil
}

// headLatencies sends n manifest HEADs from c concurrent clients and
// returns their latencies.
func headLatencies(ctx context.Context, base, repo, tag string, c, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c)
	for i := range n {
		g.Go(func() error {
			req, _ := http.NewRequestWithContext(gctx, http.MethodHead, base+"/v2/"+repo+"/manifests/"+tag, nil)
			req.Header.Set("Accept", acceptAll)
			start := time.Now()
			resp, err := httpClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			lat[i] = time.Since(start)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("HEAD: %s", resp.Status)
			}
			return nil
		})
	}
	return lat, g.Wait()
}
