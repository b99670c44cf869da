package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	s3 "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// serve runs the mirror with cfg until ctx ends (SIGINT, SIGTERM), then
// drains: it builds the cache and the upstreams' configuration, has wire
// build the mirror over them, and serves.
func serve(ctx context.Context, cfg Config, getenv func(string) string, stderr io.Writer) error {
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
	replicaSecret, err := loadReplicaSecret(cfg.Replicas)
	if err != nil {
		return err
	}
	signer, err := loadAttestationSigner(cfg.Attestations)
	if err != nil {
		return err
	}
	build := readBuildInfo()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoMetric(build))
	attestations := &attest.Maker{Signer: signer, Version: build.Version}
	mirror, err := wire(cfg, store, upstreams, clientAuth, reportTokens, replicaSecret, attestations, proxy.NewMetrics(reg), log)
	if err != nil {
		return err
	}
	srv := mirror.server

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := newHTTPServer(cfg, srv.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})), log)
	if cfg.TLS.CertFile != "" {
		if ln, err = tlsListener(ln, cfg.TLS.CertFile, cfg.TLS.KeyFile, "tls", log); err != nil {
			return err
		}
	}
	for _, w := range configWarnings(cfg) {
		log.Warn(w)
	}
	log.Info("regnorm listening", "version", readBuildInfo().Version, "address", ln.Addr().String(), "tls", cfg.TLS.CertFile != "", "client_auth", cfg.Auth.enabled(), "node_reports", len(reportTokens) > 0,
		"cache", cfg.Cache.Driver, "default_upstream", cfg.DefaultUpstream)

	g, gctx := errgroup.WithContext(ctx)
	servers := []*http.Server{httpSrv}
	if mirror.replicas != nil {
		rln, err := net.Listen("tcp", cfg.Replicas.Listen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen for replicas: %w", err)
		}
		log.Info("listening for replicas", "address", rln.Addr().String(), "self", cfg.Replicas.Self)
		replicaSrv := newHTTPServer(cfg, mirror.replicas, log)
		servers = append(servers, replicaSrv)
		g.Go(func() error {
			if err := replicaSrv.Serve(rln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if mirror.webhook != nil {
		wln, err := webhookListener(cfg.Webhook, time.Now, log)
		if err != nil {
			ln.Close()
			return err
		}
		log.Info("admission webhook listening", "address", wln.Addr().String(), "clients", cfg.Webhook.Clients, "timeout", cfg.Webhook.Timeout,
			"client_ca", cfg.Webhook.ClientCAFile != "", "client_names", cfg.Webhook.ClientNames)
		webhookSrv := newHTTPServer(cfg, mirror.webhook, log)
		// The API server sends a review at once: a slow body holds what it
		// sent of the webhook's reading room (webhook.MaxReading) until
		// then.
		if webhookSrv.ReadTimeout <= 0 || webhookSrv.ReadTimeout > webhook.ReadTimeout {
			webhookSrv.ReadTimeout = webhook.ReadTimeout
		}
		servers = append(servers, webhookSrv)
		g.Go(func() error {
			if err := webhookSrv.Serve(wln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	for _, run := range mirror.run {
		g.Go(func() error {
			run(gctx)
			return nil
		})
	}
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
		var errs []error
		for _, srv := range servers {
			errs = append(errs, srv.Shutdown(sctx))
		}
		return errors.Join(errs...)
	})
	return g.Wait()
}

// tlsListener serves HTTPS on ln with the pair in certFile and keyFile,
// read again when they change (reloaded); TLS 1.2 at least. field names
// the pair's setting in errors. ln is closed when the pair does not load.
func tlsListener(ln net.Listener, certFile, keyFile, field string, log *slog.Logger) (net.Listener, error) {
	return tlsListenerAt(ln, certFile, keyFile, field, time.Now, log)
}

// tlsListenerAt is tlsListener on the clock now.
func tlsListenerAt(ln net.Listener, certFile, keyFile, field string, now func() time.Time, log *slog.Logger) (net.Listener, error) {
	cfg, err := serverTLS(certFile, keyFile, field, now, log)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return tls.NewListener(ln, cfg), nil
}

// serverTLS serves the pair in certFile and keyFile, reloaded on renewal;
// TLS 1.2 at least.
func serverTLS(certFile, keyFile, field string, now func() time.Time, log *slog.Logger) (*tls.Config, error) {
	certs, err := newCertReloader(certFile, keyFile, now, log)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", field, err)
	}
	return &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get(), nil }, MinVersion: tls.VersionTLS12}, nil
}

// webhookListener is the admission webhook's HTTPS listener (webhook.listen),
// its pair checked for renewal on the clock now. With webhook.clientCAFile,
// a caller without a client certificate that CA signed (and, with
// webhook.clientNames, naming one of them) fails the handshake: nothing it
// sends is read (webhookCallers).
func webhookListener(c WebhookConfig, now func() time.Time, log *slog.Logger) (net.Listener, error) {
	cfg, err := serverTLS(c.CertFile, c.KeyFile, "webhook.certFile, webhook.keyFile", now, log)
	if err != nil {
		return nil, err
	}
	callers, err := newWebhookCallers(c, now, log)
	if err != nil {
		return nil, err
	}
	if callers != nil {
		cfg = callers.require(cfg)
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen for the webhook: %w", err)
	}
	return tls.NewListener(ln, cfg), nil
}

// readHeaderTimeout bounds how long a client may take to send a request's
// headers.
const readHeaderTimeout = 10 * time.Second

// newHTTPServer is the server serve serves h with. Its limits bound what a
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

func retryPolicy(attempts int) upstream.RetryPolicy {
	p := upstream.DefaultRetryPolicy()
	p.Attempts = attempts
	return p
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

// The environment variables the S3 keys come from when the configuration
// names none: the AWS SDK's own.
const (
	awsAccessKeyEnv = "AWS_ACCESS_KEY_ID"
	awsSecretKeyEnv = "AWS_SECRET_ACCESS_KEY"
)

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
	access, secret = getenv(firstNonEmpty(c.AccessKeyEnv, awsAccessKeyEnv)), getenv(firstNonEmpty(c.SecretKeyEnv, awsSecretKeyEnv))
	if (access == "") != (secret == "") {
		return "", "", errors.New("config: cache.s3: one of the access and secret keys is set in the environment without the other")
	}
	return access, secret, nil
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
		allow, err := upstream.ParseAllowList(c.AllowRedirectsTo)
		if err != nil {
			return nil, fmt.Errorf("%s.allowRedirectsTo: %w", field, err)
		}
		up := upstream.Config{Name: c.Name, URL: u, ForwardCredentials: c.ForwardCredentials, AllowRedirectsTo: allow,
			MaxBlobSize: int64(c.MaxBlobSize), MaxDownloads: c.MaxDownloads}
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
