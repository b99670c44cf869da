// Command proxy runs regnorm, a pull-through registry mirror for containerd
// that normalizes images on the way through.
//
// It holds one program a file: main.go dispatches, serve.go runs the
// mirror, checkconfig.go is --check-config, warm.go and nodeconfig.go are
// the commands of those names, and config.go is the configuration they
// share.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "regnorm:", err)
		var e *exitError
		if errors.As(err, &e) {
			os.Exit(e.code)
		}
		os.Exit(1)
	}
}

// run is regnorm: it hands args to the program they name and returns its
// error, which main prints before it exits 1 (or the status of an
// exitError: regnorm verify's).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "warm":
			return runWarm(ctx, args[1:], getenv, stdout, stderr)
		case "verify":
			return runVerify(ctx, args[1:], getenv, stdout, stderr)
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
		return checkConfig(cfg, getenv, stdout)
	}
	return serve(ctx, cfg, getenv, stderr)
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
  regnorm verify [flags] REGISTRY/REPO@DIGEST
                                         check a variant's attestation and derive it again from its original

Run "regnorm warm --help", "regnorm node-config --help" or "regnorm verify --help" for theirs.

Flags:
`)
	fs, _, _ := configFlags(func(string) string { return "" })
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
Precedence, lowest first: defaults, the YAML file (--config), REGNORM_* environment variables, flags.
Exit status: 0 on success and after SIGTERM's drain, 1 on any error (it is printed).
`)
}

// firstNonEmpty is the first of vals that is set.
func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// parseCommand parses a subcommand's flags: help is set when --help asked
// for its usage, which is printed to stdout; an error names the command
// and where its flags are listed.
func parseCommand(fs *flag.FlagSet, args []string, stdout io.Writer) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return true, nil
		}
		name := strings.TrimPrefix(fs.Name(), "regnorm ")
		return false, fmt.Errorf("%s: %w (regnorm %s --help)", name, err, name)
	}
	return false, nil
}
