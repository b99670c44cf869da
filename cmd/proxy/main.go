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
	"gopkg.in/yaml.v3"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
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
			return runNodeConfig(ctx, args[1:], stdout, stderr)
		}
	}
	cfg, err := loadConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	if cfg.CheckOnly {
		out, _ := yaml.Marshal(cfg)
		fmt.Fprintf(stdout, "# configuration is valid\n%s", out)
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
	maxBytes, _ := cfg.Cache.maxBytes() // validated
	maxLayer, _ := parseByteSize(cfg.Normalize.MaxLayerSize)
	spoolMax, _ := parseByteSize(cfg.SpoolMaxSize)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(proxy.Options{
		Store:               store,
		Upstreams:           upstreams,
		DefaultUpstream:     cfg.DefaultUpstream,
		TagTTL:              cfg.TagTTL,
		SpoolDir:            cfg.SpoolDir,
		FetchTimeout:        cfg.FetchTimeout,
		StallTimeout:        cfg.StallTimeout,
		Retry:               retryPolicy(cfg.UpstreamAttempts),
		Rules:               &proxy.Rules{ConfigMediaType: cfg.Normalize.ConfigMediaType, SymlinkXattrs: cfg.Normalize.SymlinkXattrs},
		Deadline:            cfg.Normalize.Deadline,
		PatientDeadline:     cfg.Normalize.PatientDeadline,
		MaxLayerSize:        int64(maxLayer),
		ClientAuth:          clientAuth,
		Eviction:            cache.EvictionPolicy{MaxBytes: maxBytes, MaxAge: cfg.Cache.MaxAge, Grace: cfg.Cache.evictionGrace()},
		MaintenanceInterval: cfg.Cache.maintenanceInterval(),
		Fetches:             proxy.FetchLimits{Downloads: cfg.MaxDownloads, Queued: cfg.MaxQueuedDownloads, SpoolBytes: int64(spoolMax)},
		Metrics:             proxy.NewMetrics(reg),
		Logger:              log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := &http.Server{
		Handler:           srv.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.TLS.CertFile != "" {
		certs, err := newCertReloader(cfg.TLS.CertFile, cfg.TLS.KeyFile, log)
		if err != nil {
			ln.Close()
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12})
	}
	log.Info("regnorm listening", "address", ln.Addr().String(), "tls", cfg.TLS.CertFile != "", "client_auth", cfg.Auth.enabled(),
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

// runWarm is `regnorm warm [--server URL] IMAGE...`: it asks a running
// regnorm to normalize images ahead of time and prints what it did.
func runWarm(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm warm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", firstNonEmpty(getenv("REGNORM_SERVER"), "http://127.0.0.1:5000"), "regnorm to warm (env REGNORM_SERVER)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: regnorm warm [--server URL] IMAGE...")
	}
	results, err := proxy.Warm(ctx, *server, fs.Args())
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		switch {
		case r.Error != "":
			failed++
			fmt.Fprintf(stdout, "%s\terror: %s\n", r.Image, r.Error)
		case r.NormalizedDigest != "":
			fmt.Fprintf(stdout, "%s\tnormalized %s -> %s (%d changes)\n", r.Image, r.OriginalDigest, r.NormalizedDigest, len(r.Changes))
		default:
			fmt.Fprintf(stdout, "%s\tclean %s\n", r.Image, r.OriginalDigest)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed", failed, len(results))
	}
	return nil
}

func retryPolicy(attempts int) proxy.RetryPolicy {
	p := proxy.DefaultRetryPolicy()
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
	access, secret := getenv(firstNonEmpty(c.AccessKeyEnv, "AWS_ACCESS_KEY_ID")), getenv(firstNonEmpty(c.SecretKeyEnv, "AWS_SECRET_ACCESS_KEY"))
	if c.AccessKeyFile != "" {
		a, err := os.ReadFile(c.AccessKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("config: cache.s3.accessKeyFile: %w", err)
		}
		sk, err := os.ReadFile(c.SecretKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("config: cache.s3.secretKeyFile: %w", err)
		}
		access, secret = strings.TrimSpace(string(a)), strings.TrimSpace(string(sk))
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

// buildUpstreams reads CA files and passwords: the files and environment
// variables the configuration names.
func buildUpstreams(cfgs []UpstreamConfig, getenv func(string) string) ([]proxy.UpstreamConfig, error) {
	var out []proxy.UpstreamConfig
	for i, c := range cfgs {
		field := fmt.Sprintf("config: upstreams[%d]", i)
		u, err := url.Parse(c.URL)
		if err != nil {
			return nil, fmt.Errorf("%s.url: %w", field, err)
		}
		up := proxy.UpstreamConfig{Name: c.Name, URL: u, ForwardCredentials: c.ForwardCredentials}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%s.caFile: %w", field, err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s.caFile: %s holds no PEM certificate", field, c.CAFile)
			}
			up.RootCAs = pool
		}
		switch {
		case c.PasswordFile != "":
			b, err := os.ReadFile(c.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("%s.passwordFile: %w", field, err)
			}
			up.Credentials = proxy.Credentials{Username: c.Username, Password: strings.TrimRight(string(b), "\r\n")}
		case c.PasswordEnv != "":
			pw := getenv(c.PasswordEnv)
			if pw == "" {
				return nil, fmt.Errorf("%s.passwordEnv: environment variable %s is empty", field, c.PasswordEnv)
			}
			up.Credentials = proxy.Credentials{Username: c.Username, Password: pw}
		}
		out = append(out, up)
	}
	return out, nil
}
