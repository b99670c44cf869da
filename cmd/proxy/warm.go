package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
)

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
	notReady := fs.Bool("not-ready", false, "warm, besides any IMAGE, every image regnorm served whose variant for a --clients version is not ready (/api/v1/readiness): before an upgrade")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: regnorm warm [flags] IMAGE...
       regnorm warm --clients VERSION,... --not-ready [IMAGE...]

Asks the regnorm at --server to normalize each IMAGE (docker.io/library/redis:2.8.23,
quay.io/org/app@sha256:..., or a name without a registry, which is on the
default upstream) and waits until it has, for a client that names no
containerd version or, with --clients, for each containerd version named.
With --not-ready, the images are also those regnorm served whose variant
for a --clients version is not ready (GET /api/v1/readiness?containerd=2.1
lists them: not-ready or unknown), by their original digest: run it before
moving nodes to that version (--clients 2.1). They are asked for 1000 at a
time.
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
	if help, err := parseCommand(fs, args, stdout); help || err != nil {
		return err
	}
	var versions []string
	for _, v := range strings.Split(*clients, ",") {
		if v = strings.TrimSpace(v); v != "" {
			versions = append(versions, v)
		}
	}
	if *notReady && len(versions) == 0 {
		return errors.New("warm: --not-ready needs the versions to get ready for, as --clients 2.1 (regnorm warm --help)")
	}
	if fs.NArg() == 0 && !*notReady {
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
	images := fs.Args()
	if *notReady {
		more, err := client.NotReady(ctx, versions)
		if err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		images = append(slices.Clip(images), more...)
		if len(images) == 0 {
			fmt.Fprintf(stdout, "every image regnorm served is ready for containerd %s\n", strings.Join(versions, ","))
			return nil
		}
	}
	var results []proxy.WarmResult
	for batch := range slices.Chunk(images, proxy.MaxWarmImages) {
		res, err := client.Warm(ctx, batch, versions)
		if err != nil {
			return err
		}
		results = append(results, res...)
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
