package regtest

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of Docker schema 2 images.
const (
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerConfig   = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// File is one entry of a generated layer.
type File struct {
	Name     string
	Mode     int64
	Content  []byte
	Typeflag byte // tar.TypeReg when zero
	Linkname string
	// PAXRecords such as "SCHILY.xattr.user.x".
	PAXRecords map[string]string
	// Sparse and SparseSize make a GNU sparse entry (Typeflag
	// tar.TypeGNUSparse): its data regions and logical size
	// (WriteGNUSparse). Content is unused.
	Sparse     []SparseData
	SparseSize int64
}

// Image is a generated image, ready to push.
type Image struct {
	Layers         [][]byte // layer blobs, compressed as their media type says
	Config         []byte
	Manifest       []byte
	ManifestDigest digest.Digest
}

// ImageOptions shape a generated image.
type ImageOptions struct {
	// ConfigMediaType is the config descriptor's media type (default the
	// Docker config type; legacy Docker used application/octet-stream).
	ConfigMediaType string
	Entrypoint      []string
	// LayerMediaType is every layer's media type (default Docker's gzip
	// type); the layers are compressed as it says (gzip, zstd, or none). An
	// OCI layer type makes an OCI image manifest with an OCI config.
	LayerMediaType string
	// Architecture is what the config says the image is for (default
	// amd64), whatever its binaries are.
	Architecture string
}

// BuildImage makes a Docker schema 2 image whose layers hold files.
func BuildImage(opts ImageOptions, layers ...[]File) (Image, error) {
	oci := strings.HasPrefix(opts.LayerMediaType, "application/vnd.oci.")
	if opts.LayerMediaType == "" {
		opts.LayerMediaType = MediaTypeDockerLayer
	}
	if opts.ConfigMediaType == "" {
		opts.ConfigMediaType = MediaTypeDockerConfig
		if oci {
			opts.ConfigMediaType = ocispec.MediaTypeImageConfig
		}
	}
	var img Image
	var diffIDs []digest.Digest
	manifest := ocispec.Manifest{MediaType: MediaTypeDockerManifest}
	if oci {
		manifest.MediaType = ocispec.MediaTypeImageManifest
	}
	manifest.SchemaVersion = 2
	for _, files := range layers {
		blob, diffID, err := Layer(files, opts.LayerMediaType)
		if err != nil {
			return Image{}, err
		}
		img.Layers = append(img.Layers, blob)
		diffIDs = append(diffIDs, diffID)
		desc := ocispec.Descriptor{MediaType: opts.LayerMediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		if strings.Contains(opts.LayerMediaType, "foreign") || strings.Contains(opts.LayerMediaType, "nondistributable") {
			// Fetched from elsewhere, as Windows base layers are.
			desc.URLs = []string{"https://layers.invalid/" + desc.Digest.Encoded()}
		}
		manifest.Layers = append(manifest.Layers, desc)
	}
	if opts.Architecture == "" {
		opts.Architecture = "amd64"
	}
	config := ocispec.Image{
		Platform: ocispec.Platform{Architecture: opts.Architecture, OS: "linux"},
		Config:   ocispec.ImageConfig{Entrypoint: opts.Entrypoint, Env: []string{"PATH=/usr/bin:/bin"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	var err error
	if img.Config, err = json.Marshal(config); err != nil {
		return Image{}, err
	}
	manifest.Config = ocispec.Descriptor{MediaType: opts.ConfigMediaType, Digest: digest.FromBytes(img.Config), Size: int64(len(img.Config))}
	if img.Manifest, err = json.MarshalIndent(manifest, "", "   "); err != nil {
		return Image{}, err
	}
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	return img, nil
}

// TarGz writes files as a gzip-compressed tar and returns it with the digest
// of the uncompressed tar (its diff_id).
func TarGz(files []File) ([]byte, digest.Digest, error) {
	return Layer(files, MediaTypeDockerLayer)
}

// Layer writes files as a tar, compressed as mediaType says (a gzip or zstd
// suffix, or none), and returns it with its diff_id.
func Layer(files []File, mediaType string) ([]byte, digest.Digest, error) {
	raw, err := tarOf(files)
	if err != nil {
		return nil, "", err
	}
	diffID := digest.FromBytes(raw)
	var out bytes.Buffer
	var zw io.WriteCloser
	switch {
	case strings.HasSuffix(mediaType, "gzip"):
		zw = gzip.NewWriter(&out)
	case strings.HasSuffix(mediaType, "zstd"):
		if zw, err = zstd.NewWriter(&out, zstd.WithEncoderConcurrency(1)); err != nil {
			return nil, "", err
		}
	default:
		return raw, diffID, nil
	}
	if _, err := zw.Write(raw); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return out.Bytes(), diffID, nil
}

func tarOf(files []File) ([]byte, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	epoch := time.Unix(1700000000, 0)
	for _, f := range files {
		if f.Typeflag == tar.TypeGNUSparse {
			if err := tw.Flush(); err != nil {
				return nil, err
			}
			if err := WriteGNUSparse(&raw, f.Name, cmp.Or(f.Mode, 0o644), f.SparseSize, f.Sparse); err != nil {
				return nil, err
			}
			continue
		}
		hdr := &tar.Header{Name: f.Name, Mode: f.Mode, Typeflag: f.Typeflag, Linkname: f.Linkname, ModTime: epoch, PAXRecords: f.PAXRecords}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(f.Content))
		}
		if f.PAXRecords != nil {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.Name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Content); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return raw.Bytes(), nil
}

// RandomBytes returns n random bytes.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Client pushes to a registry over HTTP.
type Client struct {
	// Base is the registry URL, e.g. http://127.0.0.1:5000.
	Base string
	// Token, when set, returns a bearer token with push rights on repo.
	Token func(repo string) (string, error)
	// Username and Password, when set, are sent as Basic auth.
	Username, Password string
}

// PushImage pushes img's blobs and manifest, tagged tag.
func (c *Client) PushImage(ctx context.Context, repo, tag string, img Image) error {
	for _, blob := range append([][]byte{img.Config}, img.Layers...) {
		if err := c.PushBlob(ctx, repo, blob); err != nil {
			return err
		}
	}
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		return fmt.Errorf("push %s:%s: %w", repo, tag, err)
	}
	return c.PushManifest(ctx, repo, tag, m.MediaType, img.Manifest)
}

// PushBlob uploads content with a POST and a monolithic PUT.
func (c *Client) PushBlob(ctx context.Context, repo string, content []byte) error {
	resp, err := c.do(ctx, http.MethodPost, repo, c.Base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload to %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(c.Base)
	if err != nil {
		return err
	}
	if loc, err = loc.Parse(resp.Header.Get("Location")); err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", digest.FromBytes(content).String())
	loc.RawQuery = q.Encode()
	resp, err = c.do(ctx, http.MethodPut, repo, loc.String(), "application/octet-stream", content)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("finish upload to %s: %s: %s", repo, resp.Status, body)
	}
	return nil
}

// PushManifest puts a manifest under ref (a tag or its digest).
func (c *Client) PushManifest(ctx context.Context, repo, ref, mediaType string, content []byte) error {
	resp, err := c.do(ctx, http.MethodPut, repo, c.Base+"/v2/"+repo+"/manifests/"+ref, mediaType, content)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("put manifest %s:%s: %s: %s", repo, ref, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, repo, target, contentType string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Username != "" {
		req.SetBasicAuth(c.Username, c.Password)
	}
	if c.Token != nil {
		tok, err := c.Token(repo)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return http.DefaultClient.Do(req)
}
