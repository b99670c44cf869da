// Command proxy runs regnorm, a pull-through registry mirror for containerd
// that normalizes images on the way through.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	s3 "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/upstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "regnorm:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "warm":
			return runWarm(ctx, args[1:], getenv, stdout, stderr)
		case "node-config":
			return runNodeConfig(ctx, args[1:], getenv, stdout, stderr)
		case "help":
			usage(stdout)
			return nil
		case "version":
			printVersion(stdout)
			return nil
		}
	}
	if slices.Contains(args, "-version") || slices.Contains(args, "--version") {
		printVersion(stdout)
		return nil
	}
	cfg, err := loadConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.CheckOnly {
		if err := checkResources(cfg, getenv); err != nil {
			return err
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "# configuration is valid: everything it refers to loads\n%s", out)
		return nil
	}
	log := newLogger(cfg, stderr)

	upstreams, err := buildUpstreams(cfg.Upstreams, getenv)
	if err != nil {
		return err
	}
	driver, uploads, err := buildDriver(ctx, cfg.Cache, getenv)
	if err != nil {
		return err
	}
	var storeOpts []cache.Option
	if uploads != nil {
		storeOpts = append(storeOpts, cache.WithMultipartUploads(uploads))
	}
	store := cache.New(driver, storeOpts...)
	clientAuth, err := loadClientAuth(cfg.Auth)
	if err != nil {
		return err
	}
	reportTokens, err := loadReportTokens(cfg.Nodes)
	if err != nil {
		return err
	}
	maxBytes, _ := cfg.Cache.maxBytes() // validated
	maxLayer, _ := parseByteSize(cfg.Normalize.MaxLayerSize)
	maxWindow, _ := parseByteSize(cfg.Normalize.MaxZstdWindow)
	platforms, _ := normalize.ParsePlatforms(cfg.Normalize.Platforms) // validated
	spoolMax, _ := parseByteSize(cfg.SpoolMaxSize)
	maxBlob, _ := parseByteSize(cfg.MaxBlobSize)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoMetric(readBuildInfo()))
	srv, err := proxy.New(proxy.Options{
		Store:                 store,
		Upstreams:             upstreams,
		DefaultUpstream:       cfg.DefaultUpstream,
		TagTTL:                cfg.TagTTL,
		SpoolDir:              cfg.SpoolDir,
		FetchTimeout:          cfg.FetchTimeout,
		StallTimeout:          cfg.StallTimeout,
		Retry:                 retryPolicy(cfg.UpstreamAttempts),
		Rules:                 cfg.Normalize.policy(),
		Platforms:             &platforms,
		Deadline:              cfg.Normalize.Deadline,
		PatientDeadline:       cfg.Normalize.PatientDeadline,
		MaxLayerSize:          int64(maxLayer),
		MaxBlobSize:           int64(maxBlob),
		MaxZstdWindow:         int64(maxWindow),
		LayerWork:             normalize.WorkLimits{Running: cfg.Normalize.MaxLayerWork, Queued: cfg.Normalize.MaxQueuedLayerWork},
		ClientAuth:            clientAuth,
		AuthFailuresPerMinute: cfg.Auth.FailuresPerMinute,
		NodeReportTokens:      reportTokens,
		NodeHostsDir:          cfg.Nodes.HostsDir,
		Eviction:              cache.EvictionPolicy{MaxBytes: maxBytes, MaxAge: cfg.Cache.MaxAge, Grace: cfg.Cache.evictionGrace()},
		MaintenanceInterval:   cfg.Cache.maintenanceInterval(),
		ForgetNodesAfter:      cfg.Nodes.ForgetAfter,
		Fetches:               blobfetch.Limits{Downloads: cfg.MaxDownloads, Queued: cfg.MaxQueuedDownloads, SpoolBytes: int64(spoolMax)},
		Metrics:               proxy.NewMetrics(reg),
		Logger:                log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := newHTTPServer(cfg, srv.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})), log)
	if cfg.TLS.CertFile != "" {
		certs, err := newCertReloader(cfg.TLS.CertFile, cfg.TLS.KeyFile, log)
		if err != nil {
			ln.Close()
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12})
	}
	log.Info("regnorm listening", "version", readBuildInfo().Version, "address", ln.Addr().String(), "tls", cfg.TLS.CertFile != "", "client_auth", cfg.Auth.enabled(), "node_reports", len(reportTokens) > 0,
		"cache", cfg.Cache.Driver, "default_upstream", cfg.DefaultUpstream)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		srv.Run(gctx)
		return nil
	})
	g.Go(func() error {
		if err := httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "drain_timeout", cfg.ShutdownTimeout)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), cfg.ShutdownTimeout)
		defer cancel()
		return httpSrv.Shutdown(sctx)
	})
	return g.Wait()
}

// readHeaderTimeout bounds how long a client may take to send a request's
// headers.
const readHeaderTimeout = 10 * time.Second

// newHTTPServer is the server run serves h with. Its limits bound what a
// client can hold without sending: headers (readHeaderTimeout), a whole
// request (cfg.ReadTimeout: a body not in by then is answered 408, or the
// connection closed), an idle keep-alive connection (cfg.IdleTimeout). No
// limit bounds an answer (there is no WriteTimeout): a blob download takes
// as long as it takes while the client reads it, and net/http lifts the
// read deadline once a request is read.
func newHTTPServer(cfg Config, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// The proxy refuses headers over 60 KiB with an OCI error; this cap
		// (answered in plain text by net/http) bounds each connection's
		// memory.
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// usage is what `regnorm --help` prints.
func usage(w io.Writer) {
	fmt.Fprint(w, `regnorm: a pull-through registry mirror for containerd that fixes images on the way through.

Usage:
  regnorm [flags]                        run the mirror
  regnorm --check-config [flags]         load the configuration and everything it refers to, print it, exit
  regnorm --version                      print the version and exit
  regnorm warm [flags] IMAGE...          normalize images ahead of time on a running regnorm
  regnorm node-config [flags] [REGISTRY=SERVER...]
                                         point this node's containerd at regnorm (the chart's DaemonSet)

Run "regnorm warm --help" or "regnorm node-config --help" for theirs.

Flags:
`)
	fs, _ := configFlags(func(string) string { return "" })
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
Precedence, lowest first: defaults, the YAML file (--config), REGNORM_* environment variables, flags.
Exit status: 0 on success and after SIGTERM's drain, 1 on any error (it is printed).
`)
}

// runWarm is `regnorm warm [flags] IMAGE...`: it asks a running regnorm to
// normalize images ahead of time and prints what it did, one line an image.
func runWarm(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm warm", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints to stdout
	server := fs.String("server", firstNonEmpty(getenv("REGNORM_SERVER"), "http://127.0.0.1:5000"), "regnorm to warm (env REGNORM_SERVER)")
	caFile := fs.String("ca-file", getenv("REGNORM_CA_FILE"), "PEM bundle to trust for an https server, besides the system roots (env REGNORM_CA_FILE)")
	tokenFile := fs.String("token-file", getenv("REGNORM_TOKEN_FILE"), "file holding a bearer token (auth.tokensFile); or env REGNORM_TOKEN")
	username := fs.String("username", getenv("REGNORM_USERNAME"), "user for Basic auth (auth.htpasswdFile, or forwarded upstream) (env REGNORM_USERNAME)")
	passwordFile := fs.String("password-file", getenv("REGNORM_PASSWORD_FILE"), "file holding the password for --username; or env REGNORM_PASSWORD")
	clients := fs.String("clients", getenv("REGNORM_WARM_CLIENTS"), "containerd versions of your nodes, comma-separated (1.6.8,2.3.4): warm the variant each gets (env REGNORM_WARM_CLIENTS)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: regnorm warm [flags] IMAGE...

Asks the regnorm at --server to normalize each IMAGE (docker.io/library/redis:2.8.23,
quay.io/org/app@sha256:..., or a name without a registry, which is on the
default upstream) and waits until it has, for a client that names no
containerd version or, with --clients, for each containerd version named.
Prints one line an image (with --clients, one line a variant, its clients
first):
  IMAGE<TAB>clean DIGEST
  IMAGE<TAB>normalized ORIGINAL -> NORMALIZED (KIND, ...)
  IMAGE<TAB>containerd 1.6.20,2.3.4: clean DIGEST
  IMAGE<TAB>error: CODE: MESSAGE
and exits 1 if any image failed. Secrets come from files or the environment,
never from a flag's value.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil
		}
		return fmt.Errorf("warm: %w (regnorm warm --help)", err)
	}
	if fs.NArg() == 0 {
		return errors.New("warm: no image given (regnorm warm --help)")
	}
	// A credential given as a flag wins over one only in the environment.
	client := proxy.Client{Server: *server}
	var err error
	switch {
	case *tokenFile != "" && *username != "":
		return errors.New("warm: give a token (--token-file) or a user (--username), not both")
	case *tokenFile != "":
		if client.Token, err = readSecret(*tokenFile); err != nil {
			return fmt.Errorf("warm: --token-file: %w", err)
		}
	case *username != "":
		client.Username, client.Password = *username, getenv("REGNORM_PASSWORD")
		if *passwordFile != "" {
			if client.Password, err = readSecret(*passwordFile); err != nil {
				return fmt.Errorf("warm: --password-file: %w", err)
			}
		}
	default:
		client.Token = getenv("REGNORM_TOKEN")
	}
	if *caFile != "" {
		pool, err := certPool(*caFile)
		if err != nil {
			return fmt.Errorf("warm: --ca-file: %w", err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		client.HTTP = &http.Client{Transport: t}
	}
	var versions []string
	for _, v := range strings.Split(*clients, ",") {
		if v = strings.TrimSpace(v); v != "" {
			versions = append(versions, v)
		}
	}
	results, err := client.Warm(ctx, fs.Args(), versions)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		if r.Error != "" {
			failed++
			fmt.Fprintf(stdout, "%s\terror: %s\n", r.Image, r.Error)
			continue
		}
		if r.Variants == nil {
			fmt.Fprintf(stdout, "%s\t%s\n", r.Image, warmLine(r.OriginalDigest, r.NormalizedDigest, r.Changes))
		}
		for _, v := range r.Variants {
			fmt.Fprintf(stdout, "%s\tcontainerd %s: %s\n", r.Image, strings.Join(v.Clients, ","), warmLine(r.OriginalDigest, v.NormalizedDigest, v.Changes))
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed", failed, len(results))
	}
	return nil
}

// readSecret reads a password or token from a file, without its trailing
// newline.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return secret, nil
}

// certPool is the system roots plus the certificates in the PEM file.
func certPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

func retryPolicy(attempts int) upstream.RetryPolicy {
	p := upstream.DefaultRetryPolicy()
	p.Attempts = attempts
	return p
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// buildDriver builds the cache's storage driver and, on S3, what ends the
// multipart uploads a crash leaves (the driver cannot see them).
func buildDriver(ctx context.Context, c CacheConfig, getenv func(string) string) (storagedriver.StorageDriver, cache.MultipartUploads, error) {
	switch c.Driver {
	case "s3":
		return buildS3Driver(ctx, c.S3, getenv)
	case "inmemory":
		return inmemory.New(), nil, nil
	case "filesystem":
		root, err := filepath.Abs(c.Filesystem.RootDirectory)
		if err != nil {
			return nil, nil, fmt.Errorf("config: cache.filesystem.rootDirectory: %w", err)
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, nil, fmt.Errorf("config: cache.filesystem.rootDirectory: %w", err)
		}
		return filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100}), nil, nil
	}
	return nil, nil, fmt.Errorf("config: cache.driver: %q is not supported", c.Driver)
}

// buildS3Driver constructs distribution's s3-aws driver directly, and an S3
// client on the same bucket for multipart uploads.
func buildS3Driver(ctx context.Context, c S3Config, getenv func(string) string) (storagedriver.StorageDriver, cache.MultipartUploads, error) {
	access, secret, err := s3Keys(c, getenv)
	if err != nil {
		return nil, nil, err
	}
	params := map[string]any{
		"bucket":         c.Bucket,
		"region":         c.Region,
		"regionendpoint": c.Endpoint,
		"forcepathstyle": c.ForcePathStyle,
		"rootdirectory":  c.RootDirectory,
		"secure":         !strings.HasPrefix(c.Endpoint, "http://"),
		"skipverify":     c.SkipVerify,
		"accesskey":      access,
		"secretkey":      secret,
	}
	d, err := s3.FromParameters(ctx, params)
	if err != nil {
		return nil, nil, fmt.Errorf("config: cache.s3: %w", err)
	}
	uploads, err := cache.NewS3Uploads(cache.S3Params{Bucket: c.Bucket, Region: c.Region, Endpoint: c.Endpoint,
		ForcePathStyle: c.ForcePathStyle, Secure: params["secure"].(bool), SkipVerify: c.SkipVerify,
		AccessKey: access, SecretKey: secret, RootDirectory: c.RootDirectory})
	if err != nil {
		return nil, nil, fmt.Errorf("config: cache.s3: %w", err)
	}
	return d, uploads, nil
}

// s3Keys reads the S3 keys from the files or environment variables the
// configuration names. Both empty means the AWS SDK's own chain (instance
// roles); one without the other, or a variable named but unset, is an error.
func s3Keys(c S3Config, getenv func(string) string) (access, secret string, err error) {
	if c.AccessKeyFile != "" {
		a, err := os.ReadFile(c.AccessKeyFile)
		if err != nil {
			return "", "", fmt.Errorf("config: cache.s3.accessKeyFile: %w", err)
		}
		sk, err := os.ReadFile(c.SecretKeyFile)
		if err != nil {
			return "", "", fmt.Errorf("config: cache.s3.secretKeyFile: %w", err)
		}
		access, secret = strings.TrimSpace(string(a)), strings.TrimSpace(string(sk))
		if access == "" || secret == "" {
			return "", "", errors.New("config: cache.s3.accessKeyFile: a key file is empty")
		}
		return access, secret, nil
	}
	for _, named := range []struct{ field, name string }{{"accessKeyEnv", c.AccessKeyEnv}, {"secretKeyEnv", c.SecretKeyEnv}} {
		if named.name != "" && getenv(named.name) == "" {
			return "", "", fmt.Errorf("config: cache.s3.%s: environment variable %s is empty", named.field, named.name)
		}
	}
	access, secret = getenv(firstNonEmpty(c.AccessKeyEnv, "AWS_ACCESS_KEY_ID")), getenv(firstNonEmpty(c.SecretKeyEnv, "AWS_SECRET_ACCESS_KEY"))
	if (access == "") != (secret == "") {
		return "", "", errors.New("config: cache.s3: one of the access and secret keys is set in the environment without the other")
	}
	return access, secret, nil
}

// checkResources loads everything the configuration refers to, as a start
// would, without starting: the TLS pair, CA files, passwords, the htpasswd
// and token files, the S3 keys, and the directories it writes to. With it,
// --check-config's "valid" means regnorm will start.
func checkResources(cfg Config, getenv func(string) string) error {
	var errs []error
	if _, err := buildUpstreams(cfg.Upstreams, getenv); err != nil {
		errs = append(errs, err)
	}
	if _, err := loadClientAuth(cfg.Auth); err != nil {
		errs = append(errs, err)
	}
	if _, err := loadReportTokens(cfg.Nodes); err != nil {
		errs = append(errs, err)
	}
	if cfg.TLS.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("config: tls.certFile, tls.keyFile: %w", err))
		}
	}
	switch cfg.Cache.Driver {
	case "s3":
		if _, _, err := s3Keys(cfg.Cache.S3, getenv); err != nil {
			errs = append(errs, err)
		}
	case "filesystem":
		if err := writableDir(cfg.Cache.Filesystem.RootDirectory); err != nil {
			errs = append(errs, fmt.Errorf("config: cache.filesystem.rootDirectory: %w", err))
		}
	}
	if cfg.SpoolDir != "" {
		if err := writableDir(cfg.SpoolDir); err != nil {
			errs = append(errs, fmt.Errorf("config: spoolDir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// writableDir checks a directory regnorm writes to, where it can tell: an
// existing one must be a directory this user can write to. One that does not
// exist yet is created at start (and a failure to create it stops the
// start), so a check run elsewhere (a CI lint, a laptop) does not fail on a
// path only the pod has.
func writableDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("%s is not writable: %w", dir, err)
	}
	return nil
}

// buildUpstreams reads CA files and passwords: the files and environment
// variables the configuration names.
func buildUpstreams(cfgs []UpstreamConfig, getenv func(string) string) ([]upstream.Config, error) {
	var out []upstream.Config
	for i, c := range cfgs {
		field := fmt.Sprintf("config: upstreams[%d]", i)
		u, err := url.Parse(c.URL)
		if err != nil {
			return nil, fmt.Errorf("%s.url: %w", field, err)
		}
		up := upstream.Config{Name: c.Name, URL: u, ForwardCredentials: c.ForwardCredentials, AllowPrivateRedirects: c.AllowPrivateRedirects,
			MaxDownloads: c.MaxDownloads}
		if c.MaxBlobSize != "" {
			b, _ := parseByteSize(c.MaxBlobSize) // validated
			up.MaxBlobSize = int64(b)
		}
		if c.CAFile != "" {
			pool, err := certPool(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%s.caFile: %w", field, err)
			}
			up.RootCAs = pool
		}
		switch {
		case c.PasswordFile != "":
			pw, err := readSecret(c.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("%s.passwordFile: %w", field, err)
			}
			up.Credentials = upstream.Credentials{Username: c.Username, Password: pw}
		case c.PasswordEnv != "":
			pw := getenv(c.PasswordEnv)
			if pw == "" {
				return nil, fmt.Errorf("%s.passwordEnv: environment variable %s is empty", field, c.PasswordEnv)
			}
			up.Credentials = upstream.Credentials{Username: c.Username, Password: pw}
		}
		out = append(out, up)
	}
	return out, nil
}

// warmLine says what a client gets of one image.
func warmLine(original, normalized string, changes []cache.Change) string {
	if normalized == "" {
		return "clean " + original
	}
	var kinds []string
	for _, c := range changes {
		if !slices.Contains(kinds, c.Kind) {
			kinds = append(kinds, c.Kind)
		}
	}
	return fmt.Sprintf("normalized %s -> %s (%s)", original, normalized, strings.Join(kinds, ", "))
}
