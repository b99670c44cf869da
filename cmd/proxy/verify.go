package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/verify"
)

// Exit statuses of regnorm verify; 1 is any other error (main's).
const (
	exitInvalid = 2 // no attestation, a bad signature, a statement that does not hold
	exitDiffers = 3 // derived again, the variant is other bytes
	// exitOriginal: with --original-key, the original the attestation
	// names has no cosign signature that verifies with it. Its own status:
	// the attestation held, the vendor's signature did not.
	exitOriginal = 4
)

// exitError is an error that ends regnorm with its own status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// hubEndpoint is where docker.io's registry API answers.
const hubEndpoint = "https://registry-1.docker.io"

// runVerify is `regnorm verify [flags] REGISTRY/REPO@DIGEST`: it checks a
// variant's derivation attestation and derives the variant again from its
// original (proxy/verify), and prints what it checked.
func runVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	keyFile := fs.String("key", getenv("REGNORM_VERIFY_KEY"), "PEM public key that signs the attestations (attestations.keyFile's; env REGNORM_VERIFY_KEY)")
	skipSignature := fs.Bool("insecure-skip-signature", false, "go on without --key: the attestation's signature is not checked")
	upstreamURL := fs.String("upstream", "", "endpoint of the upstream the attestation names (default: "+hubEndpoint+" for docker.io, else https://NAME)")
	originalKey := fs.String("original-key", getenv("REGNORM_VERIFY_ORIGINAL_KEY"), "PEM public key the original must be signed with by cosign (the vendor's cosign.pub; env REGNORM_VERIFY_ORIGINAL_KEY)")
	original := fs.String("original", "", "digest the variant must be made from (the original you trust, e.g. the vendor's signed one)")
	platforms := fs.String("platforms", strings.Join(normalize.DefaultPlatformNames(), ","), "the mirror's normalize.platforms, comma-separated: an index's variant is made reading those")
	plainHTTP := fs.Bool("plain-http", false, "reach REGISTRY over http, not https")
	caFile := fs.String("ca-file", getenv("REGNORM_CA_FILE"), "PEM bundle to trust for REGISTRY and the upstream, besides the system roots (env REGNORM_CA_FILE)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: regnorm verify [flags] REGISTRY/REPO@DIGEST

Verifies a variant regnorm made without trusting regnorm: reads its
derivation attestation from REGISTRY (the mirror, or any registry holding a
copy: the referrers API, else cosign's sha256-<hex>.att tag), checks its
signature with --key, checks that its statement is about DIGEST, with
--original-key checks the vendor's cosign signature of the original it
names (cosign v3's bundle or the classic .sig, key only, offline), then
fetches that original from its upstream, derives the variant again under
its rules in memory, and compares the digests. Prints one line a
check (OK, FAIL or SKIP); --json prints the report.

Exit status: 0 verified, the bytes identical; 1 a usage or other error
(a registry that does not answer); 2 no attestation, a signature that does
not verify, or a statement or predicate that does not hold; 3 the variant
derived again is other bytes; 4 (--original-key) the original has no cosign
signature that verifies with that key and names its digest.

Flags:
`)
		fs.PrintDefaults()
	}
	if help, err := parseCommand(fs, args, stdout); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("verify: give one REGISTRY/REPO@DIGEST (regnorm verify --help)")
	}
	named, err := reference.ParseNamed(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("verify: %q: %w: name it as REGISTRY/REPO@DIGEST", fs.Arg(0), err)
	}
	canonical, ok := named.(reference.Canonical)
	if !ok {
		return fmt.Errorf("verify: %q names no digest: REGISTRY/REPO@DIGEST", fs.Arg(0))
	}
	opts := verify.Options{}
	switch {
	case *keyFile != "":
		pem, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("verify: --key: %w", err)
		}
		if opts.Key, err = attest.ParsePublicKey(pem); err != nil {
			return fmt.Errorf("verify: --key %s: %w", *keyFile, err)
		}
	case !*skipSignature:
		return errors.New("verify: no --key: without the public key the attestation proves nothing of who made it; give --insecure-skip-signature to go on unsigned")
	}
	if *originalKey != "" {
		pem, err := os.ReadFile(*originalKey)
		if err != nil {
			return fmt.Errorf("verify: --original-key: %w", err)
		}
		if opts.OriginalKey, err = cosign.ParsePublicKey(pem); err != nil {
			return fmt.Errorf("verify: --original-key %s: %w", *originalKey, err)
		}
	}
	if *original != "" {
		if opts.Original, err = digest.Parse(*original); err != nil {
			return fmt.Errorf("verify: --original: %w", err)
		}
	}
	if opts.Platforms, err = normalize.ParsePlatforms(strings.Split(*platforms, ",")); err != nil {
		return fmt.Errorf("verify: --platforms: %w", err)
	}
	var roots *x509.CertPool
	if *caFile != "" {
		if roots, err = certPool(*caFile); err != nil {
			return fmt.Errorf("verify: --ca-file: %w", err)
		}
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	metrics := proxy.NewMetrics(prometheus.NewRegistry())
	client := func(name, endpoint string) (*upstream.Registry, error) {
		u, err := url.Parse(endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("verify: %q is not an http(s) endpoint", endpoint)
		}
		return upstream.New(upstream.Config{Name: name, URL: u, RootCAs: roots},
			upstream.Options{Metrics: metrics.Upstream(), Log: log}), nil
	}
	host := reference.Domain(named)
	endpoint := "https://" + host
	switch {
	case *plainHTTP:
		endpoint = "http://" + host
	case host == "docker.io":
		endpoint = hubEndpoint
	}
	holder, err := client(host, endpoint)
	if err != nil {
		return err
	}
	opts.Holder = holder.Repository(reference.Path(named))
	opts.Origin = func(name string) (*upstream.Registry, error) {
		switch {
		case *upstreamURL != "":
			return client(name, *upstreamURL)
		case name == "docker.io":
			return client(name, hubEndpoint)
		}
		return client(name, "https://"+name)
	}
	opts.Metrics = verify.Metrics{Engine: metrics.Engine(), Mirror: metrics.Mirror(), Fetch: metrics.Fetch()}
	opts.Log = log

	rep, err := verify.Verify(ctx, opts, canonical.Digest())
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		for _, c := range rep.Checks {
			fmt.Fprintf(stdout, "%-12s %-4s %s\n", c.Name, c.Status, c.Detail)
		}
	}
	switch rep.Outcome {
	case verify.Identical:
		if !*asJSON {
			fmt.Fprintf(stdout, "verified: %s is what regnorm's rules make of its original\n", canonical.Digest())
		}
		return nil
	case verify.OriginalUnsigned:
		return &exitError{code: exitOriginal, err: fmt.Errorf("verify: the original that the attestation of %s names is not signed with --original-key", canonical.Digest())}
	case verify.Differs:
		return &exitError{code: exitDiffers, err: fmt.Errorf("verify: derived again from its original, %s is other bytes (%s)", canonical.Digest(), rep.Rederived)}
	default:
		return &exitError{code: exitInvalid, err: fmt.Errorf("verify: the attestation of %s does not hold", canonical.Digest())}
	}
}
