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
// REGISTRY=SERVER...`, run by the Helm chart's DaemonSet on every node: it
// writes <DIR>/<REGISTRY>/hosts.toml sending containerd to the mirror (pull
// and resolve) with SERVER as the fallback, waits until it is told to stop,
// then removes what it wrote. A hosts.toml it did not write is left alone.
func runNodeConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm node-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config-path", "/etc/containerd/certs.d", "containerd's registry config_path on the node")
	mirror := fs.String("mirror", "", "URL the nodes reach regnorm at, e.g. http://10.96.0.50:5000")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if u, err := url.Parse(*mirror); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("node-config: --mirror %q is not an http(s) URL", *mirror)
	}
	if fs.NArg() == 0 {
		return errors.New("usage: regnorm node-config [--config-path DIR] --mirror URL REGISTRY=SERVER...")
	}
	var written []string
	for _, arg := range fs.Args() {
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
