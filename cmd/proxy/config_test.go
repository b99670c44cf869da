package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/proxy/ruleset"
)

func TestDefaultConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":5000" || cfg.Cache.Driver != "filesystem" || cfg.Cache.Filesystem.RootDirectory != "./data" || cfg.DefaultUpstream != "docker.io" {
		t.Fatalf("defaults: %+v", cfg)
	}
	var names []string
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	if got := strings.Join(names, ","); got != "docker.io,quay.io,ghcr.io,registry.k8s.io,gcr.io" {
		t.Fatalf("default upstreams: %s", got)
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "regnorm.yaml")
	os.WriteFile(file, []byte("listen: 127.0.0.1:6000\ntagTTL: 1m\ncache:\n  filesystem:\n    rootDirectory: /from-file\n"), 0o600)

	cfg, err := loadConfig([]string{"--config", file, "--listen", "127.0.0.1:7000"},
		env(map[string]string{"REGNORM_LISTEN": "127.0.0.1:6500", "REGNORM_DATA_DIR": "/from-env"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7000" {
		t.Errorf("listen = %s, want the flag's", cfg.Listen)
	}
	if cfg.Cache.Filesystem.RootDirectory != "/from-env" {
		t.Errorf("rootDirectory = %s, want the environment's", cfg.Cache.Filesystem.RootDirectory)
	}
	if cfg.TagTTL != time.Minute {
		t.Errorf("tagTTL = %s, want the file's", cfg.TagTTL)
	}
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		args       []string
		wantField  string
	}{
		{name: "listen", args: []string{"--listen", "nope"}, wantField: "listen"},
		{name: "driver", args: []string{"--cache-driver", "floppy"}, wantField: "cache.driver"},
		{name: "ttl", args: []string{"--tag-ttl", "soon"}, wantField: "tagTTL"},
		{name: "default upstream", args: []string{"--default-upstream", "example.com"}, wantField: "defaultUpstream"},
		{name: "url", yaml: "upstreams:\n- name: docker.io\n  url: ftp://x\n", wantField: "upstreams[0].url"},
		{name: "duplicate", yaml: "upstreams:\n- name: docker.io\n  url: https://a\n- name: docker.io\n  url: https://b\n", wantField: "upstreams[1].name"},
		{name: "password without user", yaml: "upstreams:\n- name: docker.io\n  url: https://a\n  passwordEnv: X\n", wantField: "upstreams[0].username"},
		{name: "unknown field", yaml: "listne: :5000\n", wantField: "listne"},
		{name: "log level", yaml: "logLevel: loud\n", wantField: "logLevel"},
		{name: "cache size", args: []string{"--cache-max-size", "lots"}, wantField: "cache.maxSize"},
		{name: "cache size in the file", yaml: "cache:\n  maxSize: -3GB\n", wantField: "maxSize"},
		{name: "certificate without key", yaml: "tls:\n  certFile: /a\n", wantField: "tls.certFile"},
		{name: "protect without auth", yaml: "auth:\n  protectMetrics: true\n", wantField: "auth.htpasswdFile"},
		{name: "forward with a user", yaml: "upstreams:\n- name: docker.io\n  url: https://a\n  username: u\n  forwardCredentials: true\n", wantField: "upstreams[0].forwardCredentials"},
		{name: "attempts", yaml: "upstreamAttempts: 0\n", wantField: "upstreamAttempts"},
		{name: "stall timeout", yaml: "stallTimeout: -1s\n", wantField: "stallTimeout"},
		{name: "layer size", yaml: "normalize:\n  maxLayerSize: big\n", wantField: "normalize.maxLayerSize"},
		{name: "blob size", yaml: "maxBlobSize: 0\n", wantField: "maxBlobSize"},
		{name: "upstream downloads", yaml: "maxDownloads: 4\nupstreams:\n- name: docker.io\n  url: https://a\n  maxDownloads: 5\n", wantField: "upstreams[0].maxDownloads"},
		{name: "redirects allowed to a URL", yaml: "upstreams:\n- name: docker.io\n  url: https://a\n  allowRedirectsTo: [\"https://auth.internal\"]\n", wantField: "upstreams[0].allowRedirectsTo"},
		{name: "upstream blob size", yaml: "upstreams:\n- name: docker.io\n  url: https://a\n  maxBlobSize: huge\n", wantField: "upstreams[0].maxBlobSize"},
		{name: "hosts directory a list", yaml: "nodes:\n  hostsDir: /etc/containerd/certs.d:/etc/docker/certs.d\n", wantField: "nodes.hostsDir"},
		{name: "hosts directory relative", yaml: "nodes:\n  hostsDir: certs.d\n", wantField: "nodes.hostsDir"},
		{name: "containerd configuration directory relative", yaml: "nodes:\n  containerdConfigDir: etc/containerd\n", wantField: "nodes.containerdConfigDir"},
		{name: "no failed attempts allowed", yaml: "auth:\n  failuresPerMinute: 0\n", wantField: "auth.failuresPerMinute"},
		{name: "zstd window too small", yaml: "normalize:\n  maxZstdWindow: 512B\n", wantField: "normalize.maxZstdWindow"},
		{name: "zstd window too large", yaml: "normalize:\n  maxZstdWindow: 4GiB\n", wantField: "normalize.maxZstdWindow"},
		{name: "layer work", yaml: "normalize:\n  maxLayerWork: 0\n", wantField: "normalize.maxLayerWork"},
		{name: "queued layer work", yaml: "normalize:\n  maxQueuedLayerWork: -1\n", wantField: "normalize.maxQueuedLayerWork"},
		{name: "webhook without a certificate", yaml: "webhook:\n  listen: \":8443\"\n", wantField: "webhook.certFile"},
		{name: "webhook certificate without listen", yaml: "webhook:\n  certFile: /a\n  keyFile: /b\n", wantField: "webhook.listen"},
		{name: "webhook on the mirror's address", args: []string{"--webhook-listen", ":5000"}, yaml: "webhook:\n  certFile: /a\n  keyFile: /b\n", wantField: "webhook.listen"},
		{name: "webhook client", yaml: "webhook:\n  clients: [\"1.6\", \"one\"]\n", wantField: "webhook.clients[1]"},
		{name: "webhook timeout past the API server's", yaml: "webhook:\n  timeout: 30s\n", wantField: "webhook.timeout"},
		{name: "webhook pins too short", yaml: "webhook:\n  pinFor: 10m\n", wantField: "webhook.pinFor"},
		{name: "pins bounded past the cache", yaml: "cache:\n  maxSize: 1GiB\n  maxPinnedSize: 2GiB\n", wantField: "cache.maxPinnedSize"},
		{name: "pins bounded in a cache without limits", yaml: "cache:\n  maxPinnedSize: 2GiB\n", wantField: "cache.maxPinnedSize"},
		{name: "webhook pins too long", yaml: "webhook:\n  pinFor: 2161h\n", wantField: "webhook.pinFor"},
		{name: "webhook client names without a client CA", yaml: "webhook:\n  clientNames: [kube-apiserver]\n", wantField: "webhook.clientNames"},
		{name: "webhook client CA without listen", yaml: "webhook:\n  clientCAFile: /ca.crt\n", wantField: "webhook.listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := tt.args
			if tt.yaml != "" {
				file := filepath.Join(t.TempDir(), "c.yaml")
				os.WriteFile(file, []byte(tt.yaml), 0o600)
				args = append(args, "--config", file)
			}
			_, err := loadConfig(args, env(nil))
			if err == nil || !strings.Contains(err.Error(), tt.wantField) {
				t.Fatalf("got %v, want an error naming %s", err, tt.wantField)
			}
		})
	}
}

// TestConfigErrorsSayWhatToFix: a mistake in the file is named by its field
// path, with what was expected and, for a misspelt field, the one meant.
func TestConfigErrorsSayWhatToFix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"misspelt field", "tagTtl: 5m\n", []string{"tagTtl (line 1): unknown field; did you mean tagTTL?"}},
		{"misspelt nested field", "cache:\n  maxsize: 5GB\n", []string{"cache.maxsize (line 2): unknown field; did you mean cache.maxSize?"}},
		{"misspelt field in a list", "upstreams:\n- name: a\n  ulr: https://a\n", []string{"upstreams[0].ulr (line 3): unknown field; did you mean upstreams[0].url?"}},
		{"duration in words", "tagTTL: 10 minutes\n", []string{`tagTTL (line 1): "10 minutes" is not a duration such as 90s, 10m or 1h30m`}},
		{"bool", "normalize:\n  symlinkXattrs: sometimes\n", []string{`normalize.symlinkXattrs (line 2): "sometimes" is not true or false`}},
		{"number", "upstreamAttempts: three\n", []string{`upstreamAttempts (line 1): "three" is not a whole number`}},
		{"mapping for a list", "upstreams:\n  name: a\n", []string{"upstreams (line 2): expected a list, got a mapping"}},
		{"fleet memory too short", "nodes:\n  forgetAfter: 10m\n", []string{"nodes.forgetAfter: must be at least 15m0s"}},
		{"unknown client policy", "normalize:\n  clients: some\n", []string{`normalize.clients: "some" is neither auto nor all`}},
		{"unknown rule", "normalize:\n  unknownClients: [symlink-xattr]\n", []string{`normalize.unknownClients: unknown rule "symlink-xattr" (known: config-media-type, symlink-xattrs, zstd-media-type, schema1, zstd-gzip, index-sizes, layer-media-type, diff-ids, gnu-sparse)`}},
		{"platform without architecture", "normalize:\n  platforms: [linux]\n", []string{`normalize.platforms: "linux" is not a platform such as linux/amd64 or linux/arm/v7, nor all`}},
		{"replica URL", "replicas:\n  listen: :5001\n  self: https://10.0.0.1:5001\n  peers: [http://10.0.0.1, http://10.0.0.2:5001]\n  secretFile: /s\n",
			[]string{`replicas.self: "https://10.0.0.1:5001": want http://host:port`, `replicas.peers[0]: "http://10.0.0.1": want http://host:port`}},
		{"replicas without a listener", "replicas:\n  peers: [http://10.0.0.1:5001]\n", []string{"replicas.listen: must be set"}},
		{"two mistakes at once", "listne: :5000\ncache:\n  maxAge: forever\n", []string{"listne (line 1): unknown field; did you mean listen?", `cache.maxAge (line 3): "forever" is not a duration`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "c.yaml")
			os.WriteFile(file, []byte(tt.yaml), 0o600)
			_, err := loadConfig([]string{"--config", file}, env(nil))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), "config: "+w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
}

// TestClientPolicy: the rules per client come from normalize; an empty
// unknownClients list gives unidentified clients the originals.
func TestClientPolicy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		yaml string
		want ruleset.Policy
	}{
		{"", ruleset.DefaultPolicy()},
		{"normalize:\n  clients: all\n", ruleset.Policy{Enabled: ruleset.Default(), AllClients: true, Unknown: ruleset.All()}},
		{"normalize:\n  unknownClients: []\n", ruleset.Policy{Enabled: ruleset.Default()}},
		{"normalize:\n  symlinkXattrs: false\n  unknownClients: [config-media-type]\n",
			ruleset.Policy{Enabled: ruleset.Set{ConfigMediaType: true, ZstdMediaType: true, Schema1: true, ZstdGzip: true, IndexSizes: true, LayerMediaType: true, DiffIDs: true}, Unknown: ruleset.Set{ConfigMediaType: true}}},
		{"normalize:\n  gnuSparse: true\n", ruleset.Policy{Enabled: ruleset.All(), Unknown: ruleset.All()}},
	} {
		file := filepath.Join(dir, "c.yaml")
		os.WriteFile(file, []byte(tc.yaml), 0o600)
		cfg, err := loadConfig([]string{"--config", file}, env(nil))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := *cfg.Normalize.policy(); got != tc.want {
			t.Errorf("%q: policy %+v, want %+v", tc.yaml, got, tc.want)
		}
	}
}

// TestOneUpstreamIsTheDefault: with a single upstream and no
// defaultUpstream, requests without ns go to it; with several, an error
// names the field and the choices.
func TestOneUpstreamIsTheDefault(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	one := filepath.Join(dir, "one.yaml")
	os.WriteFile(one, []byte("upstreams:\n- name: registry.example.com\n  url: https://registry.example.com\n"), 0o600)
	cfg, err := loadConfig([]string{"--config", one}, env(nil))
	if err != nil || cfg.DefaultUpstream != "registry.example.com" {
		t.Fatalf("one upstream: %q, %v", cfg.DefaultUpstream, err)
	}
	two := filepath.Join(dir, "two.yaml")
	os.WriteFile(two, []byte("upstreams:\n- name: a.example.com\n  url: https://a\n- name: b.example.com\n  url: https://b\n"), 0o600)
	_, err = loadConfig([]string{"--config", two}, env(nil))
	if err == nil || !strings.Contains(err.Error(), `defaultUpstream: "docker.io" is not one of the configured upstreams: set it to one of a.example.com, b.example.com`) {
		t.Fatalf("two upstreams: %v", err)
	}
	// Named explicitly, the default is kept (and checked).
	if _, err := loadConfig([]string{"--config", one, "--default-upstream", "docker.io"}, env(nil)); err == nil {
		t.Fatal("an explicit default that is not configured was accepted")
	}
}

// TestConfigCheckIsBounded: a file that repeats an anchored mapping of
// thousands of unknown fields thousands of times is refused quickly, with
// a bounded list of mistakes.
func TestConfigCheckIsBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("upstreams:\n- &a {")
	for i := range 2000 {
		fmt.Fprintf(&b, "k%d: 1, ", i)
	}
	b.WriteString("name: a}\n")
	for range 2000 {
		b.WriteString("- *a\n")
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte(b.String()), 0o600)
	_, err := loadConfig([]string{"--config", file}, env(nil))
	if err == nil {
		t.Fatal("accepted")
	}
	if lines := strings.Count(err.Error(), "\n"); lines > 25 || !strings.Contains(err.Error(), "more mistakes") {
		t.Fatalf("%d lines of errors:\n%.2000s", lines, err)
	}
}

// TestConfigMergeKeys: YAML merge keys are followed, not taken for fields.
func TestConfigMergeKeys(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte(`upstreams:
- &a
  name: a.example.com
  url: https://a.example.com
- <<: *a
  name: b.example.com
defaultUpstream: a.example.com
`), 0o600)
	cfg, err := loadConfig([]string{"--config", file}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 2 || cfg.Upstreams[1].URL != "https://a.example.com" || cfg.Upstreams[1].Name != "b.example.com" {
		t.Fatalf("upstreams: %+v", cfg.Upstreams)
	}
	os.WriteFile(file, []byte("upstreams:\n- &a {name: a.example.com, url: https://a, ulr: x}\n- <<: *a\n  name: b.example.com\n"), 0o600)
	if _, err := loadConfig([]string{"--config", file}, env(nil)); err == nil || !strings.Contains(err.Error(), "did you mean upstreams[0].url?") {
		t.Fatalf("a typo in an anchored mapping: %v", err)
	}
}

// TestPinnedSizeBound: pins keep at most half of cache.maxSize unless
// cache.maxPinnedSize says otherwise, and --check-config prints the bound
// in force; a cache bounded by age only has no bound on pins but pinFor.
func TestPinnedSizeBound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, want string }{
		{"cache:\n  maxSize: 40GiB\n", "maxPinnedSize: 20GiB\n"},
		{"cache:\n  maxSize: 40GiB\n  maxPinnedSize: 5GiB\n", "maxPinnedSize: 5GiB\n"},
		{"cache:\n  maxAge: 720h\n", "maxPinnedSize: \"0\"\n"},
	} {
		config := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(config, []byte(tc.yaml), 0o600)
		var out bytes.Buffer
		if err := run(context.Background(), []string{"--check-config", "--config", config, "--data-dir", t.TempDir()}, env(nil), &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "\n    "+tc.want) {
			t.Errorf("%q: --check-config lacks %q:\n%s", tc.yaml, tc.want, out.String())
		}
	}
}
