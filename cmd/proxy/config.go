package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/premade"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/webhook"
	"github.com/regnorm/regnorm/rewrite"
)

// Config is regnorm's whole configuration. Precedence, lowest first: the
// embedded defaults, the YAML file, REGNORM_* environment variables, flags.
type Config struct {
	// Listen is the address the mirror serves on.
	Listen string `yaml:"listen"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"logLevel"`
	// LogFormat is text or json.
	LogFormat string `yaml:"logFormat"`
	// DefaultUpstream answers requests without an ns parameter.
	DefaultUpstream string `yaml:"defaultUpstream"`
	// TagTTL is how long a tag is served from cache before upstream is asked again.
	TagTTL time.Duration `yaml:"tagTTL"`
	// FetchTimeout bounds one blob download from upstream.
	FetchTimeout time.Duration `yaml:"fetchTimeout"`
	// StallTimeout abandons an upstream response that sends nothing for this
	// long (headers, or the next bytes of a body); a blob download resumes
	// where it stopped.
	StallTimeout time.Duration `yaml:"stallTimeout"`
	// UpstreamAttempts is how often a failed upstream request (network
	// error, 5xx, 429, cut-off body) is tried in all; 1 is no retry.
	UpstreamAttempts int `yaml:"upstreamAttempts"`
	// ShutdownTimeout is how long in-flight requests may finish after SIGTERM.
	ShutdownTimeout time.Duration `yaml:"shutdownTimeout"`
	// ReadTimeout bounds how long a client may take to send one request,
	// headers and body (only POST /api/v1/warm and node reports have one).
	// It does not bound the answer: a blob download takes as long as it
	// takes while the client reads it.
	ReadTimeout time.Duration `yaml:"readTimeout"`
	// IdleTimeout closes a keep-alive connection that sends no new request
	// for this long.
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// SpoolDir holds the (unlinked) files that fan a download out to many
	// clients. Empty means the system temporary directory.
	SpoolDir string `yaml:"spoolDir"`
	// SpoolMaxSize bounds the spool files together, e.g. 8GiB. A download
	// that does not fit goes to the cache only; its clients wait for it.
	SpoolMaxSize Size `yaml:"spoolMaxSize"`
	// MaxDownloads is how many blob downloads from upstream run at once.
	MaxDownloads int `yaml:"maxDownloads"`
	// MaxQueuedDownloads is how many more may wait for a turn; beyond,
	// requests get 503 with Retry-After.
	MaxQueuedDownloads int `yaml:"maxQueuedDownloads"`
	// MaxBlobSize bounds one blob downloaded from upstream, e.g. 16GiB: one
	// announced larger is refused, one that sends more is stopped, and
	// nothing of it is cached. upstreams[].maxBlobSize overrides it. A
	// layer regnorm makes is bounded by the largest of them (past it, left
	// untouched).
	MaxBlobSize Size `yaml:"maxBlobSize"`
	// MaxUpstreamBodyMemory bounds the memory that upstream answers read
	// whole (manifests, tag lists, token answers, error bodies) hold at
	// once, e.g. 64MiB; each upstream may hold three quarters of it. Past
	// it, requests get 503 with Retry-After.
	MaxUpstreamBodyMemory Size `yaml:"maxUpstreamBodyMemory"`
	// TLS serves HTTPS when set.
	TLS TLSConfig `yaml:"tls"`
	// Auth makes clients authenticate; off by default.
	Auth AuthConfig `yaml:"auth"`
	// Cache selects and configures the storage driver.
	Cache CacheConfig `yaml:"cache"`
	// Normalize switches the rules and sets how long clients wait for them.
	Normalize NormalizeConfig `yaml:"normalize"`
	// Nodes configures the fleet view.
	Nodes NodesConfig `yaml:"nodes"`
	// Replicas shares the cache's work among the replicas serving it: one
	// upstream download per blob, one fetch per manifest, one making of
	// each variant. Off unless listen is set.
	Replicas ReplicasConfig `yaml:"replicas"`
	// Webhook serves the admission webhook for Pods (proxy/webhook) on a
	// listener of its own. Off unless listen is set.
	Webhook WebhookConfig `yaml:"webhook"`
	// Attestations configures the derivation attestations of the variants
	// (docs/signatures.md).
	Attestations AttestationsConfig `yaml:"attestations"`
	// Upstreams are the registries this mirror serves. A list in the file
	// replaces the default list whole.
	Upstreams []UpstreamConfig `yaml:"upstreams"`
	// CheckOnly (--check-config): validate, print the result, and exit.
	CheckOnly bool `yaml:"-"`
}

// WebhookConfig configures the mutating admission webhook for Pods
// (docs/webhook.md): Pods that name an image by digest get the variant the
// fleet's containerd versions can all run.
type WebhookConfig struct {
	// Listen is the webhook's HTTPS address. Empty: off.
	Listen string `yaml:"listen"`
	// CertFile and KeyFile are its PEM pair, required with listen; read
	// again when either changes (a renewed certificate).
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// Clients are the containerd versions ("1.6.8", "2.1") whose variants
	// it writes (the union of their rule sets). None: the versions of the
	// nodes node-config reported on (records every replica reads alike).
	Clients []string `yaml:"clients"`
	// Timeout bounds the making of variants within one admission, all its
	// images together (at most 25s: the API server waits 30s at most).
	Timeout time.Duration `yaml:"timeout"`
	// PinFor keeps a variant admitted in a Pod from eviction this long
	// after its last admission (at most 90 days; cache.maxPinnedSize
	// bounds the bytes kept so).
	PinFor time.Duration `yaml:"pinFor"`
	// ClientCAFile is a PEM CA: the listener then requires a client
	// certificate it signed (the API server's, named in its
	// AdmissionConfiguration's kubeconfig), and a caller without one
	// fails the handshake. Empty: any caller that reaches the port is
	// answered (then only a NetworkPolicy keeps callers out).
	ClientCAFile string `yaml:"clientCAFile"`
	// ClientNames, with ClientCAFile, are the callers allowed: a client
	// certificate's common name or one of its DNS names must be one of
	// them. Empty: any certificate ClientCAFile signed.
	ClientNames []string `yaml:"clientNames"`
}

// maxPinFor bounds webhook.pinFor: a pin is renewed by every admission
// that names the variant, so a longer one only keeps what no Pod names.
const maxPinFor = 90 * 24 * time.Hour

func (w WebhookConfig) enabled() bool { return w.Listen != "" }

// clients is Clients parsed (validated).
func (w WebhookConfig) clients() []containerdcfg.Version {
	var out []containerdcfg.Version
	for _, c := range w.Clients {
		v, _ := operator.ParseContainerd(c)
		out = append(out, v)
	}
	return out
}

// AttestationsConfig is how variants are attested. Every variant is
// attested; without a key, unsigned.
type AttestationsConfig struct {
	// KeyFile is the PEM private key (PKCS #8 or SEC 1, unencrypted; ECDSA
	// P-256 or ed25519) that signs the attestations; every replica needs
	// the same one. Empty: attestations are made unsigned.
	KeyFile string `yaml:"keyFile"`
}

// TLSConfig serves HTTPS. The files are read again when they change, so a
// renewed certificate (cert-manager, a mounted Secret) needs no restart.
type TLSConfig struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

// AuthConfig makes clients of the mirror authenticate, with htpasswd users
// (Basic) and/or bearer tokens. /healthz and /readyz always stay open.
type AuthConfig struct {
	// HtpasswdFile holds user:bcrypt-hash lines (htpasswd -B).
	HtpasswdFile string `yaml:"htpasswdFile"`
	// TokensFile holds one accepted bearer token per line, each at least
	// proxy.MinTokenLength bytes.
	TokensFile string `yaml:"tokensFile"`
	// ProtectMetrics puts /metrics behind authentication too.
	ProtectMetrics bool `yaml:"protectMetrics"`
	// ProtectReport puts /status, /api/v1/rewrites, /api/v1/readiness and
	// GET /api/v1/nodes behind authentication too: they name the images
	// pulled and the nodes.
	ProtectReport bool `yaml:"protectReport"`
	// FailuresPerMinute bounds the failed authentication attempts of one
	// client address, counted apart for bcrypt comparisons, wrong client
	// tokens and wrong node report tokens: that many at once and that
	// many more a minute; past it, 429 to wrong tokens and to pairs that
	// would cost a bcrypt comparison. A right token or a verified pair
	// always gets in.
	FailuresPerMinute int `yaml:"failuresPerMinute"`
}

func (a AuthConfig) enabled() bool { return a.HtpasswdFile != "" || a.TokensFile != "" }

// The zstd windows normalize.maxZstdWindow may allow: the format's least
// (1 KiB), and a bound well past the largest the reference encoder writes
// (--long=31 is 2 GiB).
const (
	minZstdWindow = 1 << 10
	maxZstdWindow = 2 << 30
)

// maxPremadeQueue bounds normalize.premadeQueue. The manifests queued are
// bounded apart (premade.MaxQueuedBytes).
const maxPremadeQueue = 1000

// NormalizeConfig configures normalization.
type NormalizeConfig struct {
	// ConfigMediaType retypes octet-stream image configs.
	ConfigMediaType bool `yaml:"configMediaType"`
	// SymlinkXattrs repackages layers with xattrs on symlinks.
	SymlinkXattrs bool `yaml:"symlinkXattrs"`
	// ZstdMediaType retypes Docker's zstd layer type as OCI's.
	ZstdMediaType bool `yaml:"zstdMediaType"`
	// Schema1 converts schema 1 manifests to Docker schema 2.
	Schema1 bool `yaml:"schema1"`
	// ZstdGzip recompresses zstd layers with gzip.
	ZstdGzip bool `yaml:"zstdGzip"`
	// IndexSizes gives index entries the size of the child they name.
	IndexSizes bool `yaml:"indexSizes"`
	// LayerMediaType types compressed layers declared as OCI's plain tar
	// by their compression.
	LayerMediaType bool `yaml:"layerMediaType"`
	// DiffIDs gives configs the diff IDs of their layers where they are
	// wrong or missing.
	DiffIDs bool `yaml:"diffIDs"`
	// GNUSparse repackages layers with GNU sparse entries (tar -S) as
	// regular files.
	GNUSparse bool `yaml:"gnuSparse"`
	// Clients is "auto": each client gets the enabled rules its containerd
	// version needs (the others get the original); or "all": every client
	// gets every enabled rule.
	Clients string `yaml:"clients"`
	// UnknownClients are the rules (within the enabled ones) for a client
	// whose User-Agent names no containerd version: rule names, [] for none.
	UnknownClients []string `yaml:"unknownClients"`
	// Platforms are the children of an index that are read and normalized
	// (os/architecture[/variant], or all); the others, and attestation
	// manifests, are served as listed. Each child read is an upstream pull.
	Platforms []string `yaml:"platforms"`
	// Deadline is how long a request by tag waits for normalization before
	// 503 with Retry-After (the work goes on).
	Deadline time.Duration `yaml:"deadline"`
	// PatientDeadline is the wait for containerd before 1.7, which has no
	// response header timeout (1.7 and 2.0-2.2 get at most 50 s / 4.5 min).
	PatientDeadline time.Duration `yaml:"patientDeadline"`
	// MaxLayerSize bounds how far a layer is decompressed to scan it, e.g.
	// 16GiB: a layer that expands further (a decompression bomb) is served
	// untouched.
	MaxLayerSize Size `yaml:"maxLayerSize"`
	// MaxZstdWindow bounds the window a zstd layer's frames may declare,
	// e.g. 8MiB: it is the memory decoding takes, and a layer that declares
	// more is served untouched.
	MaxZstdWindow Size `yaml:"maxZstdWindow"`
	// MaxLayerWork is how many layer scans, repackagings and recompressions
	// run at once; with MaxZstdWindow it bounds the memory they take.
	MaxLayerWork int `yaml:"maxLayerWork"`
	// MaxQueuedLayerWork is how many more may wait for a turn; beyond, the
	// request gets 503 with Retry-After.
	MaxQueuedLayerWork int `yaml:"maxQueuedLayerWork"`
	// Premade makes, after a pull by tag, the variants the fleet's other
	// containerd versions need, in the background (proxy/premade).
	Premade bool `yaml:"premade"`
	// PremadeQueue is how many images may wait for their pre-made
	// variants; beyond, an image is not queued (its nodes' pulls make its
	// variants, as without).
	PremadeQueue int `yaml:"premadeQueue"`
}

// NodesConfig configures the fleet view (/api/v1/nodes, the status page).
type NodesConfig struct {
	// ForgetAfter drops a node that has neither pulled nor been reported on
	// for this long.
	ForgetAfter time.Duration `yaml:"forgetAfter"`
	// ReportTokenFile holds the tokens node-config's reports must carry,
	// one a line, each at least proxy.MinTokenLength bytes (node-config
	// --report-token-file). Without it, every report is refused.
	ReportTokenFile string `yaml:"reportTokenFile"`
	// HostsDir is the directory node-config writes hosts.toml files to
	// (its --config-path): the fleet view's fix names it, and a report
	// about another is refused.
	HostsDir string `yaml:"hostsDir"`
	// ContainerdConfigDir is the directory of containerd's configuration on
	// the nodes (that of node-config's --containerd-config): a report may
	// name node-config's drop-in only in a directory under it.
	ContainerdConfigDir string `yaml:"containerdConfigDir"`
}

// ReplicasConfig makes the replicas of one cache share its work
// (proxy/replicas): each blob, manifest and variant has an owner replica,
// which the others ask over this listener.
type ReplicasConfig struct {
	// Listen is the address the other replicas call (plain HTTP, every
	// request and answer signed with the shared secret). Empty: off.
	Listen string `yaml:"listen"`
	// Self is this replica's URL as the others reach it, http://host:port
	// (env REGNORM_REPLICAS_SELF; in Kubernetes, the pod's IP).
	Self string `yaml:"self"`
	// Peers is every replica's URL, Self included; or Service instead.
	Peers []string `yaml:"peers"`
	// Service is a DNS name and port whose addresses are the replicas (a
	// headless Service), resolved every Refresh.
	Service string `yaml:"service"`
	// Refresh is how often Service is resolved.
	Refresh time.Duration `yaml:"refresh"`
	// SecretFile holds the secret every replica shares, at least 32 bytes.
	SecretFile string `yaml:"secretFile"`
}

func (r ReplicasConfig) enabled() bool { return r.Listen != "" }

// CacheConfig selects the storage driver.
type CacheConfig struct {
	// Driver is filesystem, s3 or inmemory.
	Driver string `yaml:"driver"`
	// MaxSize bounds the blobs' total size, e.g. 50GiB (least recently used
	// go first); 0 is no limit. Measuring it walks every blob: meant for
	// the filesystem.
	MaxSize Size `yaml:"maxSize"`
	// MaxPinnedSize bounds the blobs pins keep past MaxSize and MaxAge
	// (the variants the webhook wrote into Pods), e.g. 20GiB: the pins
	// renewed longest ago give way first. 0: half of MaxSize when it is
	// set, else no bound but webhook.pinFor.
	MaxPinnedSize Size `yaml:"maxPinnedSize"`
	// MaxAge evicts blobs unused for longer; 0 is no limit. Meant for S3.
	MaxAge time.Duration `yaml:"maxAge"`
	// EvictionGrace keeps blobs used within it from eviction: another
	// replica may be serving them. Default 2h with s3, 0 otherwise.
	EvictionGrace *time.Duration `yaml:"evictionGrace"`
	// MaintenanceInterval is how often the cache is measured, evicted and
	// cleaned (each pass lists the blobs). Default 1h with s3, 1m otherwise.
	MaintenanceInterval *time.Duration   `yaml:"maintenanceInterval"`
	Filesystem          FilesystemConfig `yaml:"filesystem"`
	S3                  S3Config         `yaml:"s3"`
}

// evictionGrace is EvictionGrace, or the driver's default: replicas share
// an S3 cache; a filesystem cache belongs to one process.
func (c CacheConfig) evictionGrace() time.Duration {
	if c.EvictionGrace != nil {
		return *c.EvictionGrace
	}
	if c.Driver == "s3" {
		return cache.DefaultSharedGrace
	}
	return 0
}

// maintenanceInterval is MaintenanceInterval, or the driver's default.
func (c CacheConfig) maintenanceInterval() time.Duration {
	if c.MaintenanceInterval != nil {
		return *c.MaintenanceInterval
	}
	if c.Driver == "s3" {
		return s3MaintenanceInterval
	}
	return maintain.DefaultEvery
}

// s3MaintenanceInterval is the maintenance interval on S3, where each pass
// lists the bucket, which is billed.
const s3MaintenanceInterval = time.Hour

// S3Config configures the S3 driver (distribution's s3-aws), for several
// replicas sharing one cache.
type S3Config struct {
	Bucket string `yaml:"bucket"`
	Region string `yaml:"region"`
	// Endpoint is an S3-compatible server's URL (MinIO, versitygw, Ceph);
	// empty for AWS. http:// turns TLS off.
	Endpoint       string `yaml:"endpoint"`
	ForcePathStyle bool   `yaml:"forcePathStyle"`
	// RootDirectory is a key prefix inside the bucket.
	RootDirectory string `yaml:"rootDirectory"`
	// SkipVerify turns off TLS certificate checks (test servers only).
	SkipVerify bool `yaml:"skipVerify"`
	// The keys come from files or environment variables, never from this
	// file. With none set, the AWS SDK's own chain applies (instance roles).
	AccessKeyFile string `yaml:"accessKeyFile"`
	SecretKeyFile string `yaml:"secretKeyFile"`
	AccessKeyEnv  string `yaml:"accessKeyEnv"`
	SecretKeyEnv  string `yaml:"secretKeyEnv"`
}

// FilesystemConfig configures the filesystem driver.
type FilesystemConfig struct {
	RootDirectory string `yaml:"rootDirectory"`
}

// UpstreamConfig is one upstream registry.
type UpstreamConfig struct {
	// Name is the registry as containerd names it in ns, e.g. docker.io.
	Name string `yaml:"name"`
	// URL is the endpoint; http:// for plain HTTP.
	URL string `yaml:"url"`
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string `yaml:"caFile"`
	// Username for Basic auth and token requests.
	Username string `yaml:"username"`
	// PasswordFile holds the password (or token) for Username.
	PasswordFile string `yaml:"passwordFile"`
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv string `yaml:"passwordEnv"`
	// ForwardCredentials sends each client's own Basic credentials
	// upstream instead of username/password, and serves cached content to a
	// client only after the upstream confirms that client may read it.
	ForwardCredentials bool `yaml:"forwardCredentials"`
	// AllowRedirectsTo lists where the upstream's redirects and token realm
	// may lead inside the network, for a registry whose storage or token
	// service is there: CIDR prefixes (checked on the address dialled) and
	// host names (registry-auth.internal, *.storage.internal). Its own URL
	// is always allowed.
	AllowRedirectsTo []string `yaml:"allowRedirectsTo"`
	// MaxBlobSize overrides the top-level maxBlobSize for this upstream;
	// 0 takes that one.
	MaxBlobSize Size `yaml:"maxBlobSize"`
	// MaxDownloads is how many of the maxDownloads slots this upstream's
	// downloads may hold at once; 0 is three quarters of them (all, with
	// one upstream), so that one upstream that stalls leaves the others
	// slots.
	MaxDownloads int `yaml:"maxDownloads"`
}

// defaultConfig is the configuration before the file, the environment and
// the flags. A default a component also falls back to is that component's
// constant (proxy.DefaultDeadline, blobfetch.DefaultLimits...), so the two
// cannot differ; the others are written here, and only here.
func defaultConfig() Config {
	fetches := blobfetch.DefaultLimits()
	work := normalize.DefaultWorkLimits()
	rules := ruleset.DefaultPolicy().Enabled
	return Config{
		Listen:                ":5000",
		LogLevel:              "info",
		LogFormat:             "text",
		DefaultUpstream:       "docker.io",
		TagTTL:                5 * time.Minute,
		FetchTimeout:          blobfetch.DefaultTimeout,
		StallTimeout:          upstream.DefaultStall,
		UpstreamAttempts:      upstream.DefaultRetryPolicy().Attempts,
		ShutdownTimeout:       30 * time.Second,
		ReadTimeout:           time.Minute,
		IdleTimeout:           2 * time.Minute,
		SpoolMaxSize:          Size(fetches.SpoolBytes),
		MaxDownloads:          fetches.Downloads,
		MaxQueuedDownloads:    fetches.Queued,
		MaxBlobSize:           upstream.DefaultMaxBlobSize,
		MaxUpstreamBodyMemory: upstream.DefaultBodyMemory,
		Auth:                  AuthConfig{FailuresPerMinute: proxy.DefaultAuthFailuresPerMinute},
		Nodes:                 NodesConfig{ForgetAfter: fleet.DefaultForgetAfter, HostsDir: fleet.DefaultHostsDir, ContainerdConfigDir: fleet.DefaultContainerdConfigDir},
		Cache:                 CacheConfig{Driver: "filesystem", Filesystem: FilesystemConfig{RootDirectory: "./data"}},
		Replicas:              ReplicasConfig{Refresh: 10 * time.Second},
		Webhook:               WebhookConfig{Timeout: webhook.DefaultTimeout, PinFor: webhook.DefaultPinFor},
		Normalize: NormalizeConfig{
			ConfigMediaType:    rules.ConfigMediaType,
			SymlinkXattrs:      rules.SymlinkXattrs,
			ZstdMediaType:      rules.ZstdMediaType,
			Schema1:            rules.Schema1,
			ZstdGzip:           rules.ZstdGzip,
			IndexSizes:         rules.IndexSizes,
			LayerMediaType:     rules.LayerMediaType,
			DiffIDs:            rules.DiffIDs,
			GNUSparse:          rules.GNUSparse,
			Clients:            "auto",
			UnknownClients:     ruleset.Names(),
			Platforms:          normalize.DefaultPlatformNames(),
			Deadline:           proxy.DefaultDeadline,
			PatientDeadline:    10 * time.Minute,
			MaxLayerSize:       normalize.DefaultMaxLayerSize,
			MaxZstdWindow:      rewrite.DefaultZstdWindow,
			MaxLayerWork:       work.Running,
			MaxQueuedLayerWork: work.Queued,
			Premade:            true,
			PremadeQueue:       premade.DefaultQueue,
		},
		Upstreams: []UpstreamConfig{
			{Name: "docker.io", URL: "https://registry-1.docker.io"},
			{Name: "quay.io", URL: "https://quay.io"},
			{Name: "ghcr.io", URL: "https://ghcr.io"},
			{Name: "registry.k8s.io", URL: "https://registry.k8s.io"},
			{Name: "gcr.io", URL: "https://gcr.io"},
		},
	}
}

// override is a setting the environment and a flag give, over the file.
type override struct {
	flag, env string
	// field is the setting's path in the file, which errors name.
	field string
	usage string
	// at is the field in c: a *string, a *time.Duration or a flag.Value.
	at func(c *Config) any
}

// overrides are the settings the environment and flags give.
func overrides() []override {
	return []override{
		{"listen", "REGNORM_LISTEN", "listen", "listen address",
			func(c *Config) any { return &c.Listen }},
		{"data-dir", "REGNORM_DATA_DIR", "cache.filesystem.rootDirectory", "filesystem cache directory",
			func(c *Config) any { return &c.Cache.Filesystem.RootDirectory }},
		{"cache-max-size", "REGNORM_CACHE_MAX_SIZE", "cache.maxSize", "bound the cache, e.g. 50GiB",
			func(c *Config) any { return &c.Cache.MaxSize }},
		{"cache-driver", "REGNORM_CACHE_DRIVER", "cache.driver", "cache storage driver: filesystem, s3 or inmemory; s3 takes its settings from the file",
			func(c *Config) any { return &c.Cache.Driver }},
		{"default-upstream", "REGNORM_DEFAULT_UPSTREAM", "defaultUpstream", "upstream for requests without ns; with one upstream configured, that one",
			func(c *Config) any { return &c.DefaultUpstream }},
		{"tag-ttl", "REGNORM_TAG_TTL", "tagTTL", "how long a tag is served from cache, e.g. 10m",
			func(c *Config) any { return &c.TagTTL }},
		{"log-level", "REGNORM_LOG_LEVEL", "logLevel", "debug, info, warn or error",
			func(c *Config) any { return &c.LogLevel }},
		{"log-format", "REGNORM_LOG_FORMAT", "logFormat", "text or json",
			func(c *Config) any { return &c.LogFormat }},
		{"replicas-self", "REGNORM_REPLICAS_SELF", "replicas.self", "this replica's URL as the other replicas reach it, http://host:port",
			func(c *Config) any { return &c.Replicas.Self }},
		{"webhook-listen", "REGNORM_WEBHOOK_LISTEN", "webhook.listen", "the admission webhook's HTTPS address, e.g. :8443 (needs webhook.certFile and webhook.keyFile)",
			func(c *Config) any { return &c.Webhook.Listen }},
	}
}

// set reads v into the field at p, as the file would.
func set(p any, v string) error {
	switch p := p.(type) {
	case *string:
		*p = v
	case *time.Duration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*p = d
	case flag.Value:
		return p.Set(v)
	default:
		panic(fmt.Sprintf("config: cannot set a %T", p))
	}
	return nil
}

// text is the field at p as the help shows it; empty for a zero value.
func text(p any) string {
	if reflect.ValueOf(p).Elem().IsZero() {
		return ""
	}
	switch p := p.(type) {
	case *string:
		return *p
	case *time.Duration:
		return shortDuration(*p)
	}
	return fmt.Sprint(p)
}

// shortDuration is d as a person writes it: 5m, not 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// configFlags declares the main command's flags: --config, --check-config,
// and one for each override, whose help states its default.
func configFlags(getenv func(string) string) (fs *flag.FlagSet, configFile *string, checkOnly *bool) {
	fs = flag.NewFlagSet("regnorm", flag.ContinueOnError)
	configFile = fs.String("config", getenv("REGNORM_CONFIG"), "YAML configuration file (env REGNORM_CONFIG)")
	checkOnly = fs.Bool("check-config", false, "load the configuration and everything it refers to, print it, and exit")
	defaults := defaultConfig()
	for _, o := range overrides() {
		usage := fmt.Sprintf("%s (env %s)", o.usage, o.env)
		if d := text(o.at(&defaults)); d != "" {
			usage = fmt.Sprintf("%s (env %s; default %s)", o.usage, o.env, d)
		}
		fs.String(o.flag, "", usage)
	}
	return fs, configFile, checkOnly
}

// loadConfig builds the configuration from args and the environment.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	cfg := defaultConfig()
	fs, configFile, checkOnly := configFlags(getenv)
	fs.SetOutput(io.Discard) // run prints the usage for --help; errors are returned
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, err
		}
		return Config{}, fmt.Errorf("%w (regnorm --help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v (regnorm --help lists the commands)", fs.Args())
	}
	cfg.CheckOnly = *checkOnly
	defaultSet := false
	if *configFile != "" {
		var err error
		if defaultSet, err = readConfigFile(*configFile, &cfg); err != nil {
			return Config{}, err
		}
	}
	// Environment, then flags: the later one wins.
	for _, o := range overrides() {
		for _, v := range []string{getenv(o.env), fs.Lookup(o.flag).Value.String()} {
			if v == "" {
				continue
			}
			if err := set(o.at(&cfg), v); err != nil {
				return Config{}, fmt.Errorf("config: %s: %w", o.field, err)
			}
			defaultSet = defaultSet || o.field == "defaultUpstream"
		}
	}
	// Pins keep at most half a bounded cache unless told otherwise, whoever
	// had them made (--check-config prints the bound in force).
	if cfg.Cache.MaxPinnedSize == 0 {
		cfg.Cache.MaxPinnedSize = cfg.Cache.MaxSize / 2
	}
	// With one upstream and no default named, that upstream is the default.
	if !defaultSet && len(cfg.Upstreams) == 1 {
		cfg.DefaultUpstream = cfg.Upstreams[0].Name
	}
	return cfg, cfg.validate()
}

// readConfigFile decodes the YAML file at path over cfg. Mistakes are
// reported all at once, each by its field path with what was expected. It
// reports whether the file sets defaultUpstream.
func readConfigFile(path string, cfg *Config) (setsDefault bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return false, fmt.Errorf("config %s: not YAML: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return false, nil // an empty file: the defaults
	}
	if errs := checkYAML(&doc); len(errs) > 0 {
		return false, fmt.Errorf("config %s:\n%w", path, errors.Join(errs...))
	}
	if err := doc.Decode(cfg); err != nil {
		return false, fmt.Errorf("config %s: %w", path, err)
	}
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "defaultUpstream" {
			setsDefault = true
		}
	}
	return setsDefault, nil
}

// validate checks everything before anything starts; each error names the field.
func (c Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("logLevel", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("logFormat", "%q is not text or json", c.LogFormat)
	}
	if c.TagTTL < 0 {
		bad("tagTTL", "must not be negative")
	}
	if c.FetchTimeout <= 0 {
		bad("fetchTimeout", "must be positive")
	}
	if c.StallTimeout <= 0 {
		bad("stallTimeout", "must be positive")
	}
	if c.UpstreamAttempts < 1 || c.UpstreamAttempts > 10 {
		bad("upstreamAttempts", "%d is not between 1 and 10", c.UpstreamAttempts)
	}
	if c.Cache.MaxAge < 0 || (c.Cache.MaxAge > 0 && c.Cache.MaxAge < 2*cache.AccessInterval) {
		bad("cache.maxAge", "must be 0 (no limit) or at least %s: uses are recorded up to %s late", 2*cache.AccessInterval, cache.AccessInterval)
	}
	if p := c.Cache.MaxPinnedSize; p > 0 {
		switch {
		case c.Cache.MaxSize == 0 && c.Cache.MaxAge == 0:
			bad("cache.maxPinnedSize", "needs cache.maxSize or cache.maxAge: without a limit nothing is evicted, pinned or not")
		case c.Cache.MaxSize > 0 && p > c.Cache.MaxSize:
			bad("cache.maxPinnedSize", "%q is more than cache.maxSize (%q)", p, c.Cache.MaxSize)
		}
	}
	if c.Cache.evictionGrace() < 0 {
		bad("cache.evictionGrace", "must not be negative")
	}
	if c.Cache.maintenanceInterval() < time.Second {
		bad("cache.maintenanceInterval", "must be at least 1s")
	}
	if c.SpoolMaxSize <= 0 {
		bad("spoolMaxSize", "%q is not a positive size such as 8GiB", c.SpoolMaxSize)
	}
	if c.MaxDownloads < 1 {
		bad("maxDownloads", "must be at least 1")
	}
	if c.MaxQueuedDownloads < 1 {
		bad("maxQueuedDownloads", "must be at least 1")
	}
	if c.MaxBlobSize <= 0 {
		bad("maxBlobSize", "%q is not a positive size such as 16GiB", c.MaxBlobSize)
	}
	if c.MaxUpstreamBodyMemory < upstream.MinBodyMemory {
		bad("maxUpstreamBodyMemory", "%q is less than 8MiB: an upstream's share must hold the largest manifest (4 MiB)", c.MaxUpstreamBodyMemory)
	}
	if c.Nodes.ForgetAfter < 3*reportEvery {
		bad("nodes.forgetAfter", "must be at least %s: three of node-config's report periods (%s), or reporting nodes would be forgotten between reports", 3*reportEvery, reportEvery)
	}
	if !fleet.ValidDir(c.Nodes.HostsDir) {
		bad("nodes.hostsDir", "%q is not one clean absolute directory (no ':' list, no quotes): node-config's --config-path", c.Nodes.HostsDir)
	}
	if !fleet.ValidDir(c.Nodes.ContainerdConfigDir) {
		bad("nodes.containerdConfigDir", "%q is not one clean absolute directory (no ':' list, no quotes): that of node-config's --containerd-config", c.Nodes.ContainerdConfigDir)
	}
	if c.Auth.FailuresPerMinute < 1 {
		bad("auth.failuresPerMinute", "must be at least 1")
	}
	if c.Normalize.MaxLayerSize <= 0 {
		bad("normalize.maxLayerSize", "%q is not a positive size such as 16GiB", c.Normalize.MaxLayerSize)
	}
	if w := c.Normalize.MaxZstdWindow; w < minZstdWindow || w > maxZstdWindow {
		bad("normalize.maxZstdWindow", "%q is not a size from 1KiB to 2GiB such as 8MiB", c.Normalize.MaxZstdWindow)
	}
	if c.Normalize.MaxLayerWork < 1 {
		bad("normalize.maxLayerWork", "must be at least 1")
	}
	if c.Normalize.MaxQueuedLayerWork < 1 {
		bad("normalize.maxQueuedLayerWork", "must be at least 1")
	}
	if q := c.Normalize.PremadeQueue; q < 1 || q > maxPremadeQueue {
		bad("normalize.premadeQueue", "must be from 1 to %d", maxPremadeQueue)
	}
	if c.Normalize.Clients != "auto" && c.Normalize.Clients != "all" {
		bad("normalize.clients", "%q is neither auto nor all", c.Normalize.Clients)
	}
	if _, err := ruleset.Parse(c.Normalize.UnknownClients); err != nil {
		bad("normalize.unknownClients", "%v", err)
	}
	if _, err := normalize.ParsePlatforms(c.Normalize.Platforms); err != nil {
		bad("normalize.platforms", "%v", err)
	}
	if c.Normalize.Deadline <= 0 {
		bad("normalize.deadline", "must be positive")
	}
	if c.Normalize.PatientDeadline < c.Normalize.Deadline {
		bad("normalize.patientDeadline", "must be at least normalize.deadline")
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdownTimeout", "must not be negative")
	}
	if c.ReadTimeout <= 0 {
		bad("readTimeout", "must be positive")
	}
	if c.IdleTimeout <= 0 {
		bad("idleTimeout", "must be positive")
	}
	switch c.Cache.Driver {
	case "filesystem":
		if c.Cache.Filesystem.RootDirectory == "" {
			bad("cache.filesystem.rootDirectory", "must be set for the filesystem driver")
		}
	case "s3":
		if c.Cache.S3.Bucket == "" {
			bad("cache.s3.bucket", "must be set for the s3 driver")
		}
		if c.Cache.S3.Region == "" {
			bad("cache.s3.region", "must be set for the s3 driver (any value for most S3-compatible servers)")
		}
		if e := c.Cache.S3.Endpoint; e != "" {
			if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad("cache.s3.endpoint", "%q is not an http(s) URL", e)
			}
		}
		if (c.Cache.S3.AccessKeyFile == "") != (c.Cache.S3.SecretKeyFile == "") {
			bad("cache.s3.accessKeyFile", "set both accessKeyFile and secretKeyFile, or neither")
		}
	case "inmemory":
	default:
		bad("cache.driver", "%q is not filesystem, s3 or inmemory", c.Cache.Driver)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls.certFile", "set both tls.certFile and tls.keyFile, or neither")
	}
	if !c.Auth.enabled() && (c.Auth.ProtectMetrics || c.Auth.ProtectReport) {
		bad("auth.htpasswdFile", "protectMetrics and protectReport need htpasswdFile or tokensFile")
	}
	if len(c.Upstreams) == 0 {
		bad("upstreams", "at least one upstream is needed")
	}
	seen := map[string]bool{}
	for i, u := range c.Upstreams {
		field := fmt.Sprintf("upstreams[%d]", i)
		switch {
		case u.Name == "":
			bad(field+".name", "must be set")
		case strings.ContainsAny(u.Name, "/ ?#@"):
			bad(field+".name", "%q is not a registry host name", u.Name)
		case seen[u.Name]:
			bad(field+".name", "%q is configured twice", u.Name)
		}
		seen[u.Name] = true
		if parsed, err := url.Parse(u.URL); err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" || parsed.RawQuery != "" {
			bad(field+".url", "%q is not an http(s) URL", u.URL)
		}
		if _, err := upstream.ParseAllowList(u.AllowRedirectsTo); err != nil {
			bad(field+".allowRedirectsTo", "%v", err)
		}
		if u.MaxDownloads < 0 || u.MaxDownloads > c.MaxDownloads {
			bad(field+".maxDownloads", "%d is not between 0 (the default share) and maxDownloads (%d)", u.MaxDownloads, c.MaxDownloads)
		}
		if u.PasswordFile != "" && u.PasswordEnv != "" {
			bad(field+".passwordFile", "set passwordFile or passwordEnv, not both")
		}
		if (u.PasswordFile != "" || u.PasswordEnv != "") && u.Username == "" {
			bad(field+".username", "must be set when a password is configured")
		}
		if u.ForwardCredentials && u.Username != "" {
			bad(field+".forwardCredentials", "forwards the clients' credentials: do not also set username")
		}
		if u.ForwardCredentials && c.Auth.enabled() {
			bad(field+".forwardCredentials", "clients' Authorization header goes upstream: it cannot also authenticate them to regnorm (auth.*)")
		}
	}
	if r := c.Replicas; r.enabled() {
		if _, _, err := net.SplitHostPort(r.Listen); err != nil {
			bad("replicas.listen", "%q is not host:port", r.Listen)
		}
		if r.Self == "" {
			bad("replicas.self", "must be set with replicas.listen: this replica's URL as the others reach it")
		} else if err := replicas.CheckURL(r.Self); err != nil {
			bad("replicas.self", "%v", err)
		}
		for i, p := range r.Peers {
			if err := replicas.CheckURL(p); err != nil {
				bad(fmt.Sprintf("replicas.peers[%d]", i), "%v", err)
			}
		}
		if r.Service != "" {
			if _, _, err := net.SplitHostPort(r.Service); err != nil {
				bad("replicas.service", "%q is not host:port", r.Service)
			}
		}
		if (len(r.Peers) == 0) == (r.Service == "") {
			bad("replicas.peers", "set either replicas.peers or replicas.service")
		}
		if r.SecretFile == "" {
			bad("replicas.secretFile", "must be set with replicas.listen")
		}
		if r.Refresh <= 0 {
			bad("replicas.refresh", "must be positive")
		}
	} else if r.Self != "" || len(r.Peers) > 0 || r.Service != "" {
		bad("replicas.listen", "must be set for replicas.self, replicas.peers or replicas.service to mean anything")
	}
	if w := c.Webhook; w.enabled() {
		if _, _, err := net.SplitHostPort(w.Listen); err != nil {
			bad("webhook.listen", "%q is not host:port", w.Listen)
		} else if w.Listen == c.Listen || (c.Replicas.enabled() && w.Listen == c.Replicas.Listen) {
			bad("webhook.listen", "%q is another listener's address: the webhook serves on its own", w.Listen)
		}
		if w.CertFile == "" || w.KeyFile == "" {
			bad("webhook.certFile", "webhook.certFile and webhook.keyFile must be set with webhook.listen: the API server calls webhooks over HTTPS only")
		}
	} else if w.CertFile != "" || w.KeyFile != "" || w.ClientCAFile != "" {
		bad("webhook.listen", "must be set for webhook.certFile, webhook.keyFile and webhook.clientCAFile to mean anything")
	}
	if len(c.Webhook.ClientNames) > 0 && c.Webhook.ClientCAFile == "" {
		bad("webhook.clientNames", "needs webhook.clientCAFile: names are read from client certificates that CA signed")
	}
	for i, n := range c.Webhook.ClientNames {
		if strings.TrimSpace(n) == "" {
			bad(fmt.Sprintf("webhook.clientNames[%d]", i), "must not be empty")
		}
	}
	for i, client := range c.Webhook.Clients {
		if _, err := operator.ParseContainerd(client); err != nil {
			bad(fmt.Sprintf("webhook.clients[%d]", i), "%q is not a containerd version such as 1.6.8 or 2.1", client)
		}
	}
	if t := c.Webhook.Timeout; t <= 0 || t > webhook.MaxTimeout {
		bad("webhook.timeout", "must be positive and at most %s: the API server waits 30s at most, and the webhook's own answer takes a moment", shortDuration(webhook.MaxTimeout))
	}
	if c.Webhook.PinFor < time.Hour || c.Webhook.PinFor > maxPinFor {
		bad("webhook.pinFor", "must be from 1h to %s (90 days): every admission renews a pin", shortDuration(maxPinFor))
	}
	if !seen[c.DefaultUpstream] && len(c.Upstreams) > 0 {
		var names []string
		for _, u := range c.Upstreams {
			names = append(names, u.Name)
		}
		bad("defaultUpstream", "%q is not one of the configured upstreams: set it to one of %s", c.DefaultUpstream, strings.Join(names, ", "))
	}
	return errors.Join(errs...)
}

// policy is which clients get which rules.
func (n NormalizeConfig) policy() *ruleset.Policy {
	unknown, _ := ruleset.Parse(n.UnknownClients) // validated
	return &ruleset.Policy{
		Enabled: ruleset.Set{ConfigMediaType: n.ConfigMediaType, SymlinkXattrs: n.SymlinkXattrs, ZstdMediaType: n.ZstdMediaType,
			Schema1: n.Schema1, ZstdGzip: n.ZstdGzip, IndexSizes: n.IndexSizes,
			LayerMediaType: n.LayerMediaType, DiffIDs: n.DiffIDs, GNUSparse: n.GNUSparse},
		AllClients: n.Clients == "all",
		Unknown:    unknown,
	}
}
