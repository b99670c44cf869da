package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// nodeConfigMarker starts every hosts.toml that node-config writes, so it
// only ever replaces or removes its own files.
const nodeConfigMarker = "# Written by regnorm node-config; removed when it stops.\n"

// runNodeConfig is `regnorm node-config [--config-path DIR] --mirror URL
// [--config FILE] [REGISTRY=SERVER...]`, run by the Helm chart's DaemonSet
// on every node: it writes <DIR>/<REGISTRY>/hosts.toml sending containerd
// to the mirror (pull and resolve) with SERVER as the fallback, for every
// pair given and every upstream of the regnorm configuration FILE, waits
// until it is told to stop, then removes what it wrote. A hosts.toml it did
// not write is left alone.
func runNodeConfig(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm node-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config-path", "/etc/containerd/certs.d", "containerd's registry config_path on the node")
	mirror := fs.String("mirror", "", "URL the nodes reach regnorm at, e.g. http://10.96.0.50:5000 (required)")
	configFile := fs.String("config", getenv("REGNORM_CONFIG"), "regnorm's configuration file: every upstream in it is mirrored (env REGNORM_CONFIG)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: regnorm node-config --mirror URL [--config-path DIR] [--config FILE] [REGISTRY=SERVER...]

Writes DIR/REGISTRY/hosts.toml for every REGISTRY=SERVER pair (for example
docker.io=https://registry-1.docker.io) and every upstream of FILE, sending
containerd to regnorm at URL with SERVER as the fallback; waits until it is
stopped (SIGTERM), then removes the files it wrote. Files it did not write
are left alone.

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
		return err
	}
	if u, err := url.Parse(*mirror); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("node-config: --mirror %q is not an http(s) URL", *mirror)
	}
	pairs := fs.Args()
	if *configFile != "" {
		cfg, err := loadConfig([]string{"--config", *configFile}, getenv)
		if err != nil {
			return fmt.Errorf("node-config: %w", err)
		}
		for _, u := range cfg.Upstreams {
			pairs = append(pairs, u.Name+"="+u.URL)
		}
	}
	if len(pairs) == 0 {
		return errors.New("node-config: nothing to mirror: give REGISTRY=SERVER pairs or --config (regnorm node-config --help)")
	}
	var written []string
	for _, arg := range pairs {
		name, server, ok := strings.Cut(arg, "=")
		if !ok || name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return fmt.Errorf("node-config: %q is not REGISTRY=SERVER", arg)
		}
		path := filepath.Join(*configPath, name, "hosts.toml")
		if old, err := os.ReadFile(path); err == nil && !bytes.HasPrefix(old, []byte(nodeConfigMarker)) {
			fmt.Fprintf(stderr, "node-config: %s was not written by regnorm; leaving it alone\n", path)
			continue
		}
		content := fmt.Sprintf("%sserver = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", nodeConfigMarker, server, *mirror)
		if err := writeFileAtomic(path, []byte(content)); err != nil {
			return fmt.Errorf("node-config: %w", err)
		}
		written = append(written, path)
		fmt.Fprintf(stdout, "node-config: wrote %s\n", path)
	}
	<-ctx.Done()
	for _, path := range written {
		if b, err := os.ReadFile(path); err == nil && bytes.HasPrefix(b, []byte(nodeConfigMarker)) {
			os.Remove(path)
			os.Remove(filepath.Dir(path)) // only if empty
			fmt.Fprintf(stdout, "node-config: removed %s\n", path)
		}
	}
	return nil
}

func writeFileAtomic(path string, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".regnorm.tmp"
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
