package regtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/docker/libtrust"
	digest "github.com/opencontainers/go-digest"
)

// registry2 starts REGNORM_REGISTRY2_BIN (scripts/test-deps.sh builds it)
// until the test ends. Without it the test is skipped, except under CI,
// where a skipped check is a failure.
func registry2(t *testing.T) *Registry2 {
	t.Helper()
	bin := os.Getenv("REGNORM_REGISTRY2_BIN")
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("REGNORM_REGISTRY2_BIN is not set; scripts/test-deps.sh builds it")
		}
		t.Skip("REGNORM_REGISTRY2_BIN is not set; scripts/test-deps.sh builds it")
	}
	r, err := StartRegistry2(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func schema1Layers() []Schema1Layer {
	return []Schema1Layer{
		{Files: []File{{Name: "hello", Mode: 0o755, Content: []byte("#!/bin/sh\necho hello\n")}}},
		{Throwaway: true, CreatedBy: "/bin/sh -c #(nop)  ENV PATH=/usr/bin:/bin"},
		{Files: []File{{Name: "etc/", Typeflag: '5', Mode: 0o755}, {Name: "etc/motd", Content: []byte("regnorm\n")}}},
		{Throwaway: true, CreatedBy: `/bin/sh -c #(nop)  CMD ["/hello"]`},
	}
}

// get fetches /v2/repo/manifests/ref with accept.
func get(t *testing.T, base, repo, ref string, accept ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestBuildSchema1 checks the manifest's shape without a registry: fsLayers
// and history newest first, id/parent chains of 64-hex ids, throwaway
// entries on the empty gzip tar, the run config on the newest entry, and a
// payload that does not depend on the key.
func TestBuildSchema1(t *testing.T) {
	img, err := BuildSchema1(Schema1Options{Name: "library/hello", Tag: "v1", Cmd: []string{"/hello"}}, schema1Layers()...)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := EmptyGzipTar()
	if err != nil {
		t.Fatal(err)
	}
	if len(empty) != 32 {
		t.Errorf("empty gzip tar is %d bytes, want 32", len(empty))
	}
	var m struct {
		SchemaVersion int    `json:"schemaVersion"`
		Name          string `json:"name"`
		Tag           string `json:"tag"`
		Architecture  string `json:"architecture"`
		FSLayers      []struct {
			BlobSum digest.Digest `json:"blobSum"`
		} `json:"fsLayers"`
		History []struct {
			V1Compatibility string `json:"v1Compatibility"`
		} `json:"history"`
		Signatures []json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 1 || m.Name != "library/hello" || m.Tag != "v1" || m.Architecture != "amd64" || len(m.Signatures) != 1 {
		t.Errorf("schemaVersion %d, %s:%s, architecture %q, %d signatures", m.SchemaVersion, m.Name, m.Tag, m.Architecture, len(m.Signatures))
	}
	if len(m.FSLayers) != 4 || len(m.History) != 4 {
		t.Fatalf("%d fsLayers, %d history entries, want 4", len(m.FSLayers), len(m.History))
	}
	hex := regexp.MustCompile(`^[0-9a-f]{64}$`)
	parent := ""
	for i := 3; i >= 0; i-- { // oldest first
		layer := 3 - i
		if m.FSLayers[i].BlobSum != img.LayerDigests[layer] || img.LayerDigests[layer] != digest.FromBytes(img.Layers[layer]) {
			t.Errorf("fsLayers[%d] is %s, want %s", i, m.FSLayers[i].BlobSum, img.LayerDigests[layer])
		}
		var v1 struct {
			ID, Parent      string
			ThrowAway       bool                         `json:"throwaway"`
			ContainerConfig struct{ Cmd []string }       `json:"container_config"`
			Config          *struct{ Cmd, Env []string } `json:"config"`
			Architecture    string                       `json:"architecture"`
			OS              string                       `json:"os"`
		}
		if err := json.Unmarshal([]byte(m.History[i].V1Compatibility), &v1); err != nil {
			t.Fatal(err)
		}
		if !hex.MatchString(v1.ID) || v1.Parent != parent {
			t.Errorf("history[%d]: id %q, parent %q, want parent %q", i, v1.ID, v1.Parent, parent)
		}
		parent = v1.ID
		throwaway := layer == 1 || layer == 3
		if v1.ThrowAway != throwaway || (m.FSLayers[i].BlobSum == EmptyGzipTarDigest) != throwaway {
			t.Errorf("history[%d]: throwaway %v, blobSum %s", i, v1.ThrowAway, m.FSLayers[i].BlobSum)
		}
		if (v1.Config != nil) != (i == 0) {
			t.Errorf("history[%d]: config %v", i, v1.Config)
		}
		if i == 0 && (!slices.Equal(v1.Config.Cmd, []string{"/hello"}) || v1.Architecture != "amd64" || v1.OS != "linux") {
			t.Errorf("newest history: %s", m.History[0].V1Compatibility)
		}
	}
	if !bytes.Equal(img.Layers[1], empty) || !bytes.Equal(img.Layers[3], empty) {
		t.Error("throwaway layers are not the empty gzip tar")
	}

	again, err := BuildSchema1(Schema1Options{Name: "library/hello", Tag: "v1", Cmd: []string{"/hello"}}, schema1Layers()...)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Payload, img.Payload) || again.Digest != img.Digest || bytes.Equal(again.Manifest, img.Manifest) {
		t.Error("payload and digest should be reproducible, signatures not")
	}
	if img.Digest != digest.FromBytes(img.Payload) {
		t.Errorf("digest %s is not the payload's", img.Digest)
	}

	unsigned, err := BuildSchema1(Schema1Options{Name: "library/hello", Tag: "v1", Cmd: []string{"/hello"}, Unsigned: true}, schema1Layers()...)
	if err != nil {
		t.Fatal(err)
	}
	if unsigned.MediaType != MediaTypeSchema1 || !bytes.Equal(unsigned.Manifest, img.Payload) || unsigned.Digest != img.Digest || unsigned.Key != nil {
		t.Errorf("unsigned: %s %s, key %v", unsigned.MediaType, unsigned.Digest, unsigned.Key)
	}
}

// TestSchema1Registry2 pushes a signed schema 1 image to a real distribution
// v2.8.3 and reads it back by tag and by digest. The registry stores the
// payload and signs it afresh with its own key on every read: the digest
// is stable, the bytes are not.
func TestSchema1Registry2(t *testing.T) {
	reg := registry2(t)
	ctx := context.Background()
	img, err := BuildSchema1(Schema1Options{Name: "library/hello", Tag: "v1", Cmd: []string{"/hello"}}, schema1Layers()...)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Base: reg.URL}
	if err := c.PushSchema1(ctx, "library/hello", "v1", img); err != nil {
		t.Fatal(err)
	}

	// check GETs ref with accept and returns the body and the key that
	// signed it.
	check := func(t *testing.T, ref string, accept ...string) ([]byte, string) {
		t.Helper()
		resp, body := get(t, reg.URL, "library/hello", ref, accept...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", ref, resp.Status, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != MediaTypeSchema1Signed {
			t.Errorf("GET %s: Content-Type %q", ref, ct)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != img.Digest.String() {
			t.Errorf("GET %s: Docker-Content-Digest %s, want %s", ref, got, img.Digest)
		}
		if got, err := Schema1Digest(body); err != nil || got != img.Digest {
			t.Errorf("GET %s: body's digest %s (%v), want %s", ref, got, err, img.Digest)
		}
		js, err := libtrust.ParsePrettySignature(body, "signatures")
		if err != nil {
			t.Fatal(err)
		}
		if payload, err := js.Payload(); err != nil || !bytes.Equal(payload, img.Payload) {
			t.Errorf("GET %s: payload differs (%v):\n%s", ref, err, payload)
		}
		keys, err := js.Verify()
		if err != nil || len(keys) != 1 {
			t.Fatalf("GET %s: %d signing keys (%v)", ref, len(keys), err)
		}
		return body, keys[0].KeyID()
	}
	var byTag []byte
	t.Run("by tag", func(t *testing.T) {
		var key string
		byTag, key = check(t, "v1", MediaTypeSchema1Signed)
		if bytes.Equal(byTag, img.Manifest) || key == img.Key.KeyID() {
			t.Errorf("served as pushed, signed by %s: the registry re-signs with its own key", key)
		}
	})
	t.Run("by digest", func(t *testing.T) {
		body, _ := check(t, img.Digest.String(), MediaTypeSchema1Signed)
		if bytes.Equal(body, byTag) {
			t.Error("two reads gave the same bytes: the registry signs each read afresh")
		}
	})
	// A stored schema 1 manifest is served whatever Accept says.
	t.Run("accept schema 2 and OCI only", func(t *testing.T) {
		check(t, "v1", MediaTypeDockerManifest+", application/vnd.docker.distribution.manifest.list.v2+json, "+
			"application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	})
	t.Run("no accept", func(t *testing.T) {
		check(t, "v1")
	})
	t.Run("empty layer blob", func(t *testing.T) {
		resp, err := http.Get(reg.URL + "/v2/library/hello/blobs/" + EmptyGzipTarDigest.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || digest.FromBytes(body) != EmptyGzipTarDigest {
			t.Errorf("GET empty layer: %s, %d bytes", resp.Status, len(body))
		}
	})
	// v2.8.3 stores signed manifests only: an unsigned one is refused, so
	// serving one takes an upstream of the test's own.
	t.Run("unsigned refused", func(t *testing.T) {
		unsigned, err := BuildSchema1(Schema1Options{Name: "library/hello", Tag: "unsigned", Cmd: []string{"/hello"}, Unsigned: true}, schema1Layers()...)
		if err != nil {
			t.Fatal(err)
		}
		err = c.PushSchema1(ctx, "library/hello", "unsigned", unsigned)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "MANIFEST_INVALID") {
			t.Errorf("push unsigned: %v, want 400 MANIFEST_INVALID", err)
		}
	})
}
