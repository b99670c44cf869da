package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/operator"
)

// Client calls a running regnorm's API: warm, upgrade readiness, and
// node-config's reports.
type Client struct {
	// Server is regnorm's address, e.g. https://regnorm.regnorm.svc:5000.
	Server string
	// HTTP sends the requests (default http.DefaultClient): set its TLS
	// configuration to trust a private CA.
	HTTP *http.Client
	// Token, when set, is sent as a bearer token (auth.tokensFile).
	Token string
	// Username and Password, when set, are sent as Basic credentials
	// (auth.htpasswdFile, or forwarded upstream with forwardCredentials).
	Username, Password string
}

// maxAnswer bounds an API answer the client reads.
const maxAnswer = 64 << 20

// maxErrorBody caps how much of an error answer is read.
const maxErrorBody = 4 << 10

// post sends in as JSON to path and decodes the answer into out (when not
// nil). An answer other than want is an error, with the OCI error's code
// and message when regnorm sent one.
func (c Client) post(ctx context.Context, path string, in any, want int, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.Server, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(req, want, out)
}

// do sends req with the client's credentials and decodes the answer into
// out (when not nil). An answer other than want is an error, with the OCI
// error's code and message when regnorm sent one.
func (c Client) do(req *http.Request, want int, out any) error {
	switch {
	case c.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.Token)
	case c.Username != "" || c.Password != "":
		req.SetBasicAuth(c.Username, c.Password)
	}
	client := c.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var e errorBody
		if json.NewDecoder(io.LimitReader(resp.Body, maxErrorBody)).Decode(&e) == nil && len(e.Errors) > 0 {
			return fmt.Errorf("%s: %s: %s", resp.Status, e.Errors[0].Code, e.Errors[0].Message)
		}
		return errors.New(resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out)
}

// Warm asks regnorm to normalize images ahead of time, for the named
// containerd versions (none: for a client that names none), and returns
// what each became.
func (c Client) Warm(ctx context.Context, images, clients []string) ([]WarmResult, error) {
	var out struct {
		Results []WarmResult `json:"results"`
	}
	if err := c.post(ctx, "/api/v1/warm", WarmRequest{Images: images, Clients: clients}, http.StatusOK, &out); err != nil {
		return nil, fmt.Errorf("warm: %w", err)
	}
	return out.Results, nil
}

// MaxWarmImages is how many images one warm request may name.
const MaxWarmImages = operator.MaxWarmImages

// The bodies of POST /api/v1/warm; the operator's package owns them.
type (
	WarmRequest = operator.WarmRequest
	WarmResult  = operator.WarmResult
	WarmVariant = operator.WarmVariant
	// ReadinessAnswer is the body of GET /api/v1/readiness.
	ReadinessAnswer = operator.ReadinessAnswer
	// ImageReadiness is one image of a ReadinessAnswer.
	ImageReadiness = operator.ImageReadiness
)

// get decodes the answer to GET path into out; an answer other than 200 is
// an error, as for post.
func (c Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.Server, "/")+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, http.StatusOK, out)
}

// maxReadinessPages bounds the pages NotReady reads of one version's
// readiness, whatever the server says.
const maxReadinessPages = 1000

// Readiness is a page (from 1) of GET /api/v1/readiness: for a containerd
// version ("2.1", "1.6.8"), the images regnorm answered, with only the
// statuses named (none: every one).
func (c Client) Readiness(ctx context.Context, containerd string, statuses []string, page int) (ReadinessAnswer, error) {
	q := url.Values{"containerd": {containerd}, "page": {strconv.Itoa(page)}}
	if len(statuses) > 0 {
		q.Set("status", strings.Join(statuses, ","))
	}
	var out ReadinessAnswer
	if err := c.get(ctx, "/api/v1/readiness?"+q.Encode(), &out); err != nil {
		return ReadinessAnswer{}, fmt.Errorf("readiness: %w", err)
	}
	return out, nil
}

// NotReady lists the images regnorm answered that would fail on one of
// these containerd versions without regnorm and whose variant is not ready
// (not-ready, or unknown: not checked yet), as warm takes them
// (upstream/repository@original), each once.
func (c Client) NotReady(ctx context.Context, versions []string) ([]string, error) {
	var images []string
	seen := map[string]bool{}
	for _, v := range versions {
		for page := 1; page <= maxReadinessPages; page++ {
			ans, err := c.Readiness(ctx, v, []string{mirror.NotReady, mirror.Unknown}, page)
			if err != nil {
				return nil, err
			}
			for _, img := range ans.Images {
				if ref := img.Upstream + "/" + img.Repository + "@" + img.OriginalDigest; !seen[ref] {
					seen[ref] = true
					images = append(images, ref)
				}
			}
			if page >= ans.Pages {
				break
			}
		}
	}
	return images, nil
}
