package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

// checkConfig is --check-config: it loads everything cfg refers to and
// prints cfg, or says what does not load.
func checkConfig(cfg Config, getenv func(string) string, stdout io.Writer) error {
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

// checkResources loads everything the configuration refers to, as a start
// would, without starting: the TLS pairs (the mirror's, the webhook's), CA files, passwords, the htpasswd
// and token files, the replicas' secret, the attestation key, the S3 keys, and the directories it writes to. With it,
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
	if _, err := loadReplicaSecret(cfg.Replicas); err != nil {
		errs = append(errs, err)
	}
	if _, err := loadAttestationSigner(cfg.Attestations); err != nil {
		errs = append(errs, err)
	}
	if cfg.TLS.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("config: tls.certFile, tls.keyFile: %w", err))
		}
	}
	if cfg.Webhook.enabled() {
		if _, err := tls.LoadX509KeyPair(cfg.Webhook.CertFile, cfg.Webhook.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("config: webhook.certFile, webhook.keyFile: %w", err))
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
