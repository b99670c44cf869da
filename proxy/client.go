package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/regnorm/regnorm/proxy/operator"
)

// Client calls a running regnorm's API: warm, and node-config's reports.
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

// The bodies of POST /api/v1/warm; the operator's package owns them.
type (
	WarmRequest = operator.WarmRequest
	WarmResult  = operator.WarmResult
	WarmVariant = operator.WarmVariant
)
