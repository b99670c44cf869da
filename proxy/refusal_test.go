package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/errcode"
)

// refusal is how a caller was refused: the OCI code, and the HTTP status
// where the caller's answer has one (warm answers 200 and says, for each
// image, the code and message).
type refusal struct {
	status int
	code   string
}

// reader is one of the callers that read a repository's content: a client's
// manifest or blob GET, warm, and the rule engine.
type reader struct {
	name string
	read func(t *testing.T) refusal
}

// httpRead is a client's GET of path.
func httpRead(h *harness, path string, header http.Header) func(t *testing.T) refusal {
	return func(t *testing.T) refusal {
		r := h.do(t, http.MethodGet, path, header)
		if r.status == http.StatusOK {
			return refusal{status: r.status}
		}
		return refusal{status: r.status, code: r.ociError(t)}
	}
}

// warmRead is warm of image by the client with user and password.
func warmRead(h *harness, image, user, password string) func(t *testing.T) refusal {
	return func(t *testing.T) refusal {
		c := proxy.Client{Server: h.url, Username: user, Password: password}
		res, err := c.Warm(context.Background(), []string{image}, nil)
		if err != nil {
			t.Fatalf("warm %s: %v", image, err)
		}
		if res[0].Error == "" {
			return refusal{status: http.StatusOK}
		}
		code, _, _ := strings.Cut(res[0].Error, ": ")
		return refusal{code: code}
	}
}

// engineRead is a read by the rule engine, for the client with header, of
// repo's manifest or blob dgst: through the Source a pull hands it.
func engineRead(h *harness, header http.Header, repo string, dgst digest.Digest, manifest bool) func(t *testing.T) refusal {
	return func(t *testing.T) refusal {
		r, err := http.NewRequest(http.MethodGet, h.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header = header.Clone()
		src, err := h.srv.EngineSource(r, repo)
		if err != nil {
			t.Fatal(err)
		}
		if manifest {
			_, err = src.Manifest(context.Background(), dgst)
		} else {
			var rc io.ReadCloser
			if rc, err = src.OpenBlob(context.Background(), dgst); err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
			}
		}
		if err == nil {
			return refusal{status: http.StatusOK}
		}
		e := errcode.Public(err)
		return refusal{status: e.Status, code: e.Code}
	}
}

// TestEveryReaderIsRefusedAlike: a client's manifest GET by tag and by
// digest, its blob GET, warm and the rule engine's reads all ask the one
// repository service, so a repository the client may not read refuses each
// of them the same way: the same OCI code, and the same status where the
// answer has one.
func TestEveryReaderIsRefusedAlike(t *testing.T) {
	t.Parallel()
	t.Run("forwarded credentials", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{
			registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
				{Username: "alice", Password: "alice-pw", Repos: []string{"team/private"}},
				{Username: "bob", Password: "bob-pw", Repos: []string{"team/shared"}},
			}},
			forward: true,
		})
		alice, bob := basic("alice", "alice-pw"), basic("bob", "bob-pw")
		img := h.push(t, "team/private", "v1", legacy, baseLayer, xattrLayer)
		var m ocispec.Manifest
		json.Unmarshal(img.Manifest, &m)
		layer := m.Layers[0].Digest
		// Alice has it cached: what Bob is refused, he is refused although
		// regnorm holds it.
		h.pullAs(t, alice, "team/private", "v1")
		if r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+layer.String(), alice); r.status != http.StatusOK {
			t.Fatalf("Alice's own layer: %d", r.status)
		}
		assertRefusedAlike(t, refusal{status: http.StatusUnauthorized, code: errcode.Unauthorized}, []reader{
			{"manifest GET by tag", httpRead(h, "/v2/team/private/manifests/v1", bob)},
			{"manifest GET by digest", httpRead(h, "/v2/team/private/manifests/"+img.ManifestDigest.String(), bob)},
			{"blob GET", httpRead(h, "/v2/team/private/blobs/"+layer.String(), bob)},
			{"warm by tag", warmRead(h, "docker.io/team/private:v1", "bob", "bob-pw")},
			{"warm by digest", warmRead(h, "docker.io/team/private@"+img.ManifestDigest.String(), "bob", "bob-pw")},
			{"engine's manifest read", engineRead(h, bob, "team/private", img.ManifestDigest, true)},
			{"engine's blob read", engineRead(h, bob, "team/private", layer, false)},
		})
	})
	t.Run("links without forwarding", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{})
		img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		h.pullAll(t, "library/app", "v1")
		var m ocispec.Manifest
		json.Unmarshal(img.Manifest, &m)
		layer := m.Layers[0].Digest
		// library/other holds nothing: what regnorm has cached from
		// library/app is unknown there, as it is upstream.
		assertRefusedAlike(t, refusal{status: http.StatusNotFound, code: errcode.ManifestUnknown}, []reader{
			{"manifest GET by tag", httpRead(h, "/v2/library/other/manifests/v1", containerdAccept)},
			{"manifest GET by digest", httpRead(h, "/v2/library/other/manifests/"+img.ManifestDigest.String(), containerdAccept)},
			{"warm by tag", warmRead(h, "docker.io/library/other:v1", "", "")},
			{"warm by digest", warmRead(h, "docker.io/library/other@"+img.ManifestDigest.String(), "", "")},
			{"engine's manifest read", engineRead(h, nil, "library/other", img.ManifestDigest, true)},
		})
		assertRefusedAlike(t, refusal{status: http.StatusNotFound, code: errcode.BlobUnknown}, []reader{
			{"blob GET", httpRead(h, "/v2/library/other/blobs/"+layer.String(), nil)},
			{"engine's blob read", engineRead(h, nil, "library/other", layer, false)},
		})
	})
}

// assertRefusedAlike reads with each reader and checks that each was
// refused as want says (warm: its code alone).
func assertRefusedAlike(t *testing.T, want refusal, readers []reader) {
	t.Helper()
	for _, rd := range readers {
		got := rd.read(t)
		if got.status == 0 { // warm
			got.status = want.status
		}
		if got != want {
			t.Errorf("%s: refused with %d %q, want %d %q", rd.name, got.status, got.code, want.status, want.code)
		}
	}
}
