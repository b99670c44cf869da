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
	fmt.Fprintf(stdout, "# configuration is valid: everything it refers to loads\n")
	for _, w := range configWarnings(cfg) {
		fmt.Fprintf(stdout, "# warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s", out)
	return nil
}

// configWarnings are what a valid configuration leaves open that an
// operator should know of; serve logs them at start, --check-config prints
// them.
func configWarnings(cfg Config) []string {
	var ws []string
	if cfg.Webhook.enabled() && cfg.Webhook.ClientCAFile == "" && cfg.Auth.enabled() {
		// Not refused: managed control planes (GKE, EKS, AKS) give no way
		// to hand the API server a client certificate for a webhook, and
		// the webhook is worth having there, behind a NetworkPolicy.
		ws = append(ws, "auth makes the registry port ask clients for credentials, but the admission webhook (webhook.listen) answers any caller "+
			"that reaches it: it has regnorm read images with its upstream credentials, make and pin their variants, and tells their digests. "+
			"Set webhook.clientCAFile (the API server's client certificate), or let a NetworkPolicy admit only the API server to that port (docs/security.md)")
	}
	if cfg.Webhook.ClientCAFile != "" && len(cfg.Webhook.ClientNames) == 0 {
		ws = append(ws, "webhook.clientCAFile without webhook.clientNames: the webhook answers any client certificate that CA signed, "+
			"and the CA that signed the API server's usually signs others too (a kubeadm cluster's signs every kubelet's). "+
			"Set webhook.clientNames to the API server's certificate names")
	}
	if cfg.Webhook.enabled() && cfg.Cache.MaxAge > 0 && cfg.Cache.MaxPinnedSize == 0 {
		ws = append(ws, "cache.maxAge without cache.maxSize or cache.maxPinnedSize: the webhook's pins keep blobs from eviction "+
			"for webhook.pinFor with no bound on their bytes. Set cache.maxPinnedSize")
	}
	return ws
}

// checkResources loads everything the configuration refers to, as a start
// would, without starting: the TLS pairs (the mirror's, the webhook's), CA files (the webhook's client CA too), passwords, the htpasswd
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
		if cfg.Webhook.ClientCAFile != "" {
			if _, err := clientCAPool(cfg.Webhook.ClientCAFile); err != nil {
				errs = append(errs, fmt.Errorf("config: webhook.clientCAFile: %w", err))
			}
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
