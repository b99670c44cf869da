package regtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/docker/libtrust"
	digest "github.com/opencontainers/go-digest"
)

// Media types of Docker schema 1 manifests.
const (
	// MediaTypeSchema1Signed is a manifest with its libtrust signatures, as
	// Docker pushed and registries serve it.
	MediaTypeSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	// MediaTypeSchema1 is the same manifest without signatures.
	MediaTypeSchema1 = "application/vnd.docker.distribution.manifest.v1+json"
)

// EmptyGzipTarDigest is the digest of the 32-byte gzip of an empty tar that
// Docker wrote for every "throwaway" schema 1 layer (a step such as ENV or
// CMD that changes no files).
const EmptyGzipTarDigest = digest.Digest("sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4")

// EmptyGzipTar returns the blob EmptyGzipTarDigest names: an empty tar (1024
// zero bytes) gzipped as the Go of Docker's day did, which wrote the zero
// time's Unix seconds, truncated to 32 bits, as the header's mtime.
func EmptyGzipTar() ([]byte, error) {
	raw, err := tarOf(nil)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.ModTime = time.Unix(int64(uint32(time.Time{}.Unix())), 0)
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if got := digest.FromBytes(out.Bytes()); got != EmptyGzipTarDigest {
		return nil, fmt.Errorf("empty gzip tar is %s, want %s", got, EmptyGzipTarDigest)
	}
	return out.Bytes(), nil
}

// Schema1Layer is one step of a schema 1 image's history.
type Schema1Layer struct {
	// Files are the layer's entries (gzip-compressed as TarGz does).
	Files []File
	// Throwaway records a step that changed no files, as Docker did: its
	// blob is the empty gzip tar (EmptyGzipTarDigest) and its
	// v1Compatibility says "throwaway": true. Files must be empty.
	Throwaway bool
	// CreatedBy is the step's command, its container_config.Cmd (default a
	// "#(nop)" ADD or LABEL line).
	CreatedBy string
}

// Schema1Options shape a generated schema 1 image.
type Schema1Options struct {
	// Name and Tag are the manifest's name and tag fields (default
	// "library/regtest" and "latest"); registries do not check them against
	// the repository and tag pushed to.
	Name, Tag string
	// Architecture is the manifest's and the config's (default amd64).
	Architecture string
	// Cmd, Entrypoint and Env are the image's run config, in the newest
	// v1Compatibility's "config" (Env defaults to PATH=/usr/bin:/bin).
	Cmd, Entrypoint, Env []string
	// Unsigned makes Manifest the bare JSON (MediaTypeSchema1) instead of
	// the signed JWS (MediaTypeSchema1Signed). Its digest is the same.
	Unsigned bool
	// Key signs the manifest (default a new EC P-256 key).
	Key libtrust.PrivateKey
}

// Schema1Image is a generated Docker schema 1 image, ready to push.
type Schema1Image struct {
	// Manifest is what to push: the signed JWS, or with Unsigned the
	// payload itself. MediaType is its type.
	Manifest  []byte
	MediaType string
	// Digest is the manifest's digest as registries compute it: the SHA-256
	// of the JWS payload, which is the unsigned manifest.
	Digest digest.Digest
	// Payload is the unsigned manifest JSON.
	Payload []byte
	// Layers, LayerDigests and DiffIDs follow the layers as given, oldest
	// first (the reverse of the manifest's fsLayers): each blob, its digest
	// (the blobSum) and the digest of its uncompressed tar. A throwaway
	// layer's blob is the empty gzip tar.
	Layers       [][]byte
	LayerDigests []digest.Digest
	DiffIDs      []digest.Digest
	// Key signed the manifest (nil with Unsigned).
	Key libtrust.PrivateKey
}

// v1Compatibility is a schema 1 history entry, as Docker wrote it. Only
// the newest carries the image's config, architecture and os.
type v1Compatibility struct {
	ID              string    `json:"id"`
	Parent          string    `json:"parent,omitempty"`
	Created         time.Time `json:"created"`
	ContainerConfig struct {
		Cmd []string
	} `json:"container_config"`
	Config        *v1Config `json:"config,omitempty"`
	Architecture  string    `json:"architecture,omitempty"`
	OS            string    `json:"os,omitempty"`
	DockerVersion string    `json:"docker_version,omitempty"`
	ThrowAway     bool      `json:"throwaway,omitempty"`
}

type v1Config struct {
	Env        []string `json:"Env"`
	Cmd        []string `json:"Cmd"`
	Entrypoint []string `json:"Entrypoint"`
}

// schema1Manifest has a schema 1 manifest's fields in Docker's order.
type schema1Manifest struct {
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
}

// BuildSchema1 makes a Docker schema 1 image of layers, oldest first, signed
// with libtrust as Docker pushed them. Everything but the signature is
// reproducible: layer ids derive from each layer's index, blob and parent
// (and the newest's from the config too), and the timestamps are fixed.
//
// The hello image of the end-to-end tests, as a schema 1 image:
//
//	BuildSchema1(Schema1Options{Cmd: []string{"/hello"}},
//		Schema1Layer{Files: []File{{Name: "hello", Mode: 0o755, Content: bin}}},
//		Schema1Layer{Throwaway: true, CreatedBy: `/bin/sh -c #(nop)  CMD ["/hello"]`})
func BuildSchema1(opts Schema1Options, layers ...Schema1Layer) (Schema1Image, error) {
	if len(layers) == 0 {
		return Schema1Image{}, errors.New("schema 1 image without layers")
	}
	if opts.Name == "" {
		opts.Name = "library/regtest"
	}
	if opts.Tag == "" {
		opts.Tag = "latest"
	}
	if opts.Architecture == "" {
		opts.Architecture = "amd64"
	}
	if opts.Env == nil {
		opts.Env = []string{"PATH=/usr/bin:/bin"}
	}
	var img Schema1Image
	var empty []byte
	for i, l := range layers {
		var blob []byte
		var diffID digest.Digest
		switch {
		case l.Throwaway && len(l.Files) > 0:
			return Schema1Image{}, fmt.Errorf("schema 1 layer %d: a throwaway layer has files", i)
		case l.Throwaway:
			if empty == nil {
				var err error
				if empty, err = EmptyGzipTar(); err != nil {
					return Schema1Image{}, err
				}
			}
			blob, diffID = empty, digest.FromBytes(make([]byte, 1024))
		default:
			var err error
			if blob, diffID, err = TarGz(l.Files); err != nil {
				return Schema1Image{}, fmt.Errorf("schema 1 layer %d: %w", i, err)
			}
		}
		img.Layers = append(img.Layers, blob)
		img.LayerDigests = append(img.LayerDigests, digest.FromBytes(blob))
		img.DiffIDs = append(img.DiffIDs, diffID)
	}

	m := schema1Manifest{SchemaVersion: 1, Name: opts.Name, Tag: opts.Tag, Architecture: opts.Architecture}
	m.FSLayers = make([]struct {
		BlobSum digest.Digest `json:"blobSum"`
	}, len(layers))
	m.History = make([]struct {
		V1Compatibility string `json:"v1Compatibility"`
	}, len(layers))
	epoch := time.Unix(1700000000, 0).UTC()
	parent := ""
	for i, l := range layers {
		newest := i == len(layers)-1
		v1 := v1Compatibility{Parent: parent, Created: epoch.Add(time.Duration(i) * time.Second), ThrowAway: l.Throwaway}
		v1.ContainerConfig.Cmd = []string{l.CreatedBy}
		if l.CreatedBy == "" {
			v1.ContainerConfig.Cmd = []string{fmt.Sprintf("/bin/sh -c #(nop) ADD file:%s in / ", img.DiffIDs[i].Encoded())}
			if l.Throwaway {
				v1.ContainerConfig.Cmd = []string{fmt.Sprintf("/bin/sh -c #(nop)  LABEL regtest.step=%d", i)}
			}
		}
		seed := fmt.Sprintf("regtest schema1 layer %d %s %s", i, img.LayerDigests[i], parent)
		if newest {
			v1.Config = &v1Config{Env: opts.Env, Cmd: opts.Cmd, Entrypoint: opts.Entrypoint}
			// 1.9 was the last Docker to push schema 1 only.
			v1.Architecture, v1.OS, v1.DockerVersion = opts.Architecture, "linux", "1.9.1"
			config, err := json.Marshal(v1.Config)
			if err != nil {
				return Schema1Image{}, err
			}
			seed += " " + string(config)
		}
		v1.ID = digest.FromString(seed).Encoded()
		b, err := json.Marshal(v1)
		if err != nil {
			return Schema1Image{}, err
		}
		// fsLayers and history run newest first.
		m.FSLayers[len(layers)-1-i].BlobSum = img.LayerDigests[i]
		m.History[len(layers)-1-i].V1Compatibility = string(b)
		parent = v1.ID
	}
	var err error
	// Docker indented manifests with three spaces; signing keeps the
	// indentation and appends the signatures.
	if img.Payload, err = json.MarshalIndent(m, "", "   "); err != nil {
		return Schema1Image{}, err
	}
	if opts.Unsigned {
		img.Manifest, img.MediaType, img.Digest = img.Payload, MediaTypeSchema1, digest.FromBytes(img.Payload)
		return img, nil
	}
	if img.Key = opts.Key; img.Key == nil {
		if img.Key, err = libtrust.GenerateECP256PrivateKey(); err != nil {
			return Schema1Image{}, err
		}
	}
	if img.Manifest, err = SignSchema1(img.Payload, img.Key); err != nil {
		return Schema1Image{}, err
	}
	img.MediaType = MediaTypeSchema1Signed
	if img.Digest, err = Schema1Digest(img.Manifest); err != nil {
		return Schema1Image{}, err
	}
	if img.Digest != digest.FromBytes(img.Payload) {
		return Schema1Image{}, fmt.Errorf("signed manifest's payload is %s, not the manifest's %s", img.Digest, digest.FromBytes(img.Payload))
	}
	return img, nil
}

// SignSchema1 signs a schema 1 manifest with key as Docker did, returning
// the pretty JWS (MediaTypeSchema1Signed): payload with a "signatures" key
// added.
func SignSchema1(payload []byte, key libtrust.PrivateKey) ([]byte, error) {
	js, err := libtrust.NewJSONSignature(payload)
	if err != nil {
		return nil, err
	}
	if err := js.Sign(key); err != nil {
		return nil, err
	}
	return js.PrettySignature("signatures")
}

// Schema1Digest is a signed schema 1 manifest's digest as registries
// compute it: the SHA-256 of its JWS payload, not of the bytes served. It
// checks the signatures too.
func Schema1Digest(signed []byte) (digest.Digest, error) {
	js, err := libtrust.ParsePrettySignature(signed, "signatures")
	if err != nil {
		return "", err
	}
	if _, err := js.Verify(); err != nil {
		return "", fmt.Errorf("schema 1 signature: %w", err)
	}
	payload, err := js.Payload()
	if err != nil {
		return "", err
	}
	return digest.FromBytes(payload), nil
}

// PushSchema1 pushes img's blobs, each once, and its manifest under tag,
// with img.MediaType as Content-Type.
func (c *Client) PushSchema1(ctx context.Context, repo, tag string, img Schema1Image) error {
	pushed := map[digest.Digest]bool{}
	for i, blob := range img.Layers {
		if pushed[img.LayerDigests[i]] {
			continue
		}
		if err := c.PushBlob(ctx, repo, blob); err != nil {
			return err
		}
		pushed[img.LayerDigests[i]] = true
	}
	return c.PushManifest(ctx, repo, tag, img.MediaType, img.Manifest)
}

// Registry2 is a distribution v2.8.3 registry binary with schema 1 enabled:
// the upstream that stores and serves schema 1 images (v3 refuses them).
type Registry2 struct {
	// URL is the registry's base URL, http://127.0.0.1:port.
	URL string
	// Config is the YAML configuration it runs with.
	Config string
	cmd    *exec.Cmd
	done   chan struct{}
}

// StartRegistry2 runs the registry binary bin (REGNORM_REGISTRY2_BIN) on
// 127.0.0.1 with its storage, config and log under dir. Stop it with Close.
//
// A stored schema 1 manifest comes back, by tag or digest, whatever the
// Accept header says, signed afresh on every read with the registry's own
// key: the bytes differ from those pushed and from read to read, the digest
// does not. A schema 2 manifest read by tag without the schema 2 type in
// Accept is converted to schema 1 (or refused with 400 MANIFEST_INVALID
// when its config has no history, as BuildImage's have not).
func StartRegistry2(bin, dir string) (*Registry2, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &Registry2{URL: "http://" + addr, done: make(chan struct{})}
	r.Config = fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: regtest
compatibility:
  schema1:
    enabled: true
`, filepath.Join(dir, "data"), addr)
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(r.Config), 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	r.cmd = exec.Command(bin, "serve", config)
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start registry 2: %w", err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	failed := func(why string) error {
		log, _ := os.ReadFile(logFile.Name())
		return fmt.Errorf("registry 2 %s: %s", why, strings.TrimSpace(string(log)))
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get(r.URL + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		select {
		case <-r.done:
			return nil, failed("exited at start")
		default:
		}
		if time.Now().After(deadline) {
			r.Close()
			return nil, failed("did not answer GET /v2/")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops the registry (this process only, by its PID).
func (r *Registry2) Close() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
}
