package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"golang.org/x/sys/unix"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/fleet"
)

// nodeConfigMarker starts every file that node-config writes, so it only
// ever replaces or removes its own files.
const nodeConfigMarker = "# Written by regnorm node-config; removed when it stops.\n"

// reportEvery is how often node-config reports an unchanged state.
const reportEvery = 5 * time.Minute

// nodeConfig is node-config's settings.
type nodeConfig struct {
	configPath, mirror        string
	reportTo                  string // regnorm's URL from the pod; default mirror
	interval                  time.Duration
	containerdConfig, socket  string
	statusFile                string
	node, address             string
	fix, report               bool
	mirrorToken, mirrorCAFile string
	reportToken               string // what regnorm takes reports with
	// once is --once: a check that changes nothing on the node.
	once bool
	// hosts are the files node-config keeps in place (hosts.toml files,
	// and the CA next to each); written those this process wrote, which
	// it removes when it stops, if they are still its own.
	hosts                    []hostFile
	written                  map[string]string // path -> content
	seen                     map[string]string // path -> what was last logged about it
	client                   *http.Client
	log                      *slog.Logger
	stderr                   io.Writer // where the lines to add are printed, as lines
	lastReport               time.Time
	lastState, reportedState string
}

// hostFile is a file node-config keeps in place.
type hostFile struct {
	path, content string
	mode          os.FileMode
	// marked files start with nodeConfigMarker: one without it is not
	// node-config's, and is left alone.
	marked bool
	// hosts is, for the CA, the hosts.toml it goes with: while that one
	// is not node-config's, the directory is the operator's, and
	// node-config writes and removes nothing in it.
	hosts string
}

// foreign reports whether the file at path is a hosts.toml that is not
// node-config's: there, not empty, and without its marker. An empty file
// (what a crash can leave of a write) is no one's: node-config's to write.
func foreign(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && len(b) > 0 && !bytes.HasPrefix(b, []byte(nodeConfigMarker))
}

// RegnormNodeHeader is the header node-config has containerd send with
// every request to regnorm (hosts.toml's [host."...".header]): the node's
// name, which tells nodes apart that pull from one address.
const RegnormNodeHeader = "Regnorm-Node"

// plainText reports whether s is valid UTF-8 without control characters:
// text that a TOML string and a header line can carry as it is.
func plainText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// runNodeConfig is `regnorm node-config`, run by the Helm chart's DaemonSet
// on every node (see usage below).
func runNodeConfig(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "probe" {
		return runNodeConfigProbe(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("regnorm node-config", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints to stdout
	nc := &nodeConfig{}
	fs.StringVar(&nc.configPath, "config-path", "/etc/containerd/certs.d", "containerd's registry config_path on the node: where hosts.toml files go")
	fs.StringVar(&nc.mirror, "mirror", "", "URL the nodes reach regnorm at, e.g. http://10.96.0.50:5000 (required)")
	configFile := fs.String("config", getenv("REGNORM_CONFIG"), "regnorm's configuration file: every upstream in it is mirrored (env REGNORM_CONFIG)")
	fs.StringVar(&nc.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's main configuration file (its imports are read too)")
	fs.StringVar(&nc.socket, "containerd-socket", "/run/containerd/containerd.sock", "containerd's socket, asked for its version (read-only is enough)")
	fs.BoolVar(&nc.fix, "fix", false, "when containerd will not read the hosts.toml files, write a drop-in where its configuration imports them (containerd must then be restarted)")
	fs.StringVar(&nc.statusFile, "status-file", "", "write the node's state here as JSON, for `regnorm node-config probe`")
	fs.StringVar(&nc.node, "node-name", getenv("NODE_NAME"), "this node's name (env NODE_NAME): sent by containerd with each request to regnorm (header "+RegnormNodeHeader+"), and in the report")
	fs.StringVar(&nc.address, "node-address", getenv("NODE_IP"), "the address this node's pulls come from, for the report (env NODE_IP)")
	fs.BoolVar(&nc.report, "report", true, "send what node-config finds to regnorm (POST /api/v1/nodes), for its fleet view")
	fs.StringVar(&nc.reportTo, "report-to", "", "regnorm's URL as node-config reaches it, when it differs from --mirror (a pod does not reach a NodePort at 127.0.0.1)")
	fs.DurationVar(&nc.interval, "interval", time.Minute, "how often containerd is checked again")
	fs.BoolVar(&nc.once, "once", false, "check once and print the node's state as JSON; changes nothing on the node (no hosts.toml, drop-in or status file written or removed)")
	tokenFile := fs.String("mirror-token-file", getenv("REGNORM_TOKEN_FILE"), "token for regnorm's client authentication, written into hosts.toml for containerd")
	reportTokenFile := fs.String("report-token-file", getenv("REGNORM_REPORT_TOKEN_FILE"), "token regnorm takes node reports with (one of its nodes.reportTokenFile); without it, nothing is reported (env REGNORM_REPORT_TOKEN_FILE)")
	fs.StringVar(&nc.mirrorCAFile, "mirror-ca-file", getenv("REGNORM_CA_FILE"), "CA that signed regnorm's TLS certificate: copied next to each hosts.toml node-config writes, for containerd, and trusted for reports")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: regnorm node-config --mirror URL [flags] [REGISTRY=SERVER...]
       regnorm node-config probe --status-file FILE

Writes DIR/REGISTRY/hosts.toml (DIR is --config-path) for every REGISTRY=SERVER
pair (for example docker.io=https://registry-1.docker.io) and every upstream of
--config, sending containerd to regnorm at URL with SERVER as the fallback. Then
it checks, every minute, whether containerd will read those files: its version
(from its socket) and the config_path it really uses (its configuration file,
the drop-ins it imports, and that version's default). When it will not, it logs
why and the exact lines to add, and with --fix writes a drop-in where the
configuration imports them (then restart containerd: systemctl restart
containerd). It reports to regnorm for its fleet view (with the token of
--report-token-file, which regnorm's nodes.reportTokenFile holds; regnorm's
nodes.hostsDir must be --config-path), and writes --status-file
for the readiness probe ("probe" exits 0 only when containerd reads the files).
At each check it puts back a file that was removed; one that was changed
(by another node-config on the same directory, or by hand) it leaves alone,
and says so: delete it to have it written again.
On SIGTERM it removes the hosts.toml files it wrote; the drop-in stays (removing
it would undo the fix at containerd's next restart): delete it to undo. Files it
did not write are left alone, and so is the directory of a hosts.toml it did not
write (no CA is written there). An empty file counts as missing. With --node-name, each hosts.toml has containerd
send the node's name to regnorm (header Regnorm-Node).

With --once it checks once, prints the node's state as JSON on stdout (the log
goes to stderr), and changes nothing on the node: it writes and removes no file
(with --fix it says what --fix would do; --status-file is not written), and
says whether the hosts.toml files are in place. It still reports to regnorm
(with --report-token-file and a node name): until the node's running
node-config reports again (within 5 minutes), regnorm's fleet view shows
that report for the node; --report=false sends none.

Flags:
`)
		fs.PrintDefaults()
	}
	if help, err := parseCommand(fs, args, stdout); help || err != nil {
		return err
	}
	if nc.reportTo == "" {
		nc.reportTo = nc.mirror
	}
	// These paths go into TOML (config_path in the advice and the
	// drop-in, the CA's path in hosts.toml) and into regnorm's report,
	// which takes them as fleet.ValidDir says: the same rule here.
	for _, p := range []struct {
		flag string
		path *string
	}{{"--config-path", &nc.configPath}, {"--containerd-config", &nc.containerdConfig}} {
		if abs, err := filepath.Abs(*p.path); err == nil {
			*p.path = abs
		}
		if !fleet.ValidDir(*p.path) {
			return fmt.Errorf("node-config: %s %q must be a clean absolute path of at most 1024 bytes: no ':' (one directory, not a list), no quote, backslash or control character", p.flag, *p.path)
		}
	}
	// In this order: --report-to defaults to --mirror, whose name the
	// operator then needs.
	for _, f := range []struct{ flag, v string }{{"--mirror", nc.mirror}, {"--report-to", nc.reportTo}} {
		if u, err := url.Parse(f.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !plainText(f.v) {
			return fmt.Errorf("node-config: %s %q is not an http(s) URL (in valid UTF-8, without control characters)", f.flag, f.v)
		}
	}
	if nc.node != "" && !fleet.ValidNodeName(nc.node) {
		return fmt.Errorf("node-config: --node-name %q is not a node name (lowercase letters, digits, '-' and '.', as Kubernetes names nodes)", nc.node)
	}
	if nc.interval < time.Second {
		return fmt.Errorf("node-config: --interval %v is under a second", nc.interval)
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
	if *tokenFile != "" {
		tok, err := readSecret(*tokenFile)
		if err != nil {
			return fmt.Errorf("node-config: --mirror-token-file: %w", err)
		}
		nc.mirrorToken = tok
	}
	if *reportTokenFile != "" {
		tok, err := readSecret(*reportTokenFile)
		if err != nil {
			return fmt.Errorf("node-config: --report-token-file: %w", err)
		}
		nc.reportToken = tok
	}
	// Tokens are sent as a header, and the client token is written into
	// hosts.toml: neither can hold a control character or invalid UTF-8.
	for flag, tok := range map[string]string{"--mirror-token-file": nc.mirrorToken, "--report-token-file": nc.reportToken} {
		if !plainText(tok) {
			return fmt.Errorf("node-config: %s: the token holds a control character or invalid UTF-8", flag)
		}
	}
	nc.client = http.DefaultClient
	if nc.mirrorCAFile != "" {
		pool, err := certPool(nc.mirrorCAFile)
		if err != nil {
			return fmt.Errorf("node-config: --mirror-ca-file: %w", err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		nc.client = &http.Client{Transport: t, Timeout: 30 * time.Second}
	}
	nc.log, nc.stderr = slog.New(slog.NewTextHandler(stderr, nil)), stderr
	switch {
	case !nc.report:
	case nc.reportToken == "":
		// regnorm refuses reports without its token: sending them would
		// only fill both logs.
		nc.log.Warn("not reporting to regnorm: give --report-token-file (a token of regnorm's nodes.reportTokenFile), or --report=false")
		nc.report = false
	case nc.node == "":
		nc.log.Warn("not reporting to regnorm: no node name (--node-name, or NODE_NAME as the DaemonSet sets it)")
		nc.report = false
	}
	if nc.once && nc.statusFile != "" {
		nc.log.Info("--once changes nothing on the node: --status-file is not written")
		nc.statusFile = ""
	}
	for _, arg := range pairs {
		name, server, ok := strings.Cut(arg, "=")
		if !ok || name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return fmt.Errorf("node-config: %q is not REGISTRY=SERVER (flags go before the pairs)", arg)
		}
		// Both are written into hosts.toml (the registry in the CA's path).
		if !plainText(name) || !plainText(server) {
			return fmt.Errorf("node-config: %q is not REGISTRY=SERVER: registry %q or server %q holds a control character or invalid UTF-8", arg, name, server)
		}
	}
	if err := nc.planHosts(pairs); err != nil {
		return err
	}
	if nc.once {
		nc.checkHosts()
		b, _ := json.MarshalIndent(nc.check(ctx), "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	defer nc.cleanUp() // also what a failed first keepHosts wrote
	if err := nc.keepHosts(true); err != nil {
		return err
	}
	for {
		nc.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(nc.interval):
		}
		// A file removed (by an operator, another node-config stopping,
		// --once of an older release) is put back; one changed is not.
		if err := nc.keepHosts(false); err != nil {
			nc.log.Warn("restoring the hosts.toml files failed", "error", err)
		}
	}
}

// planHosts makes the hosts.toml (and the CA, when given) of each
// registry, without writing them.
func (nc *nodeConfig) planHosts(pairs []string) error {
	var ca []byte
	if nc.mirrorCAFile != "" {
		var err error
		if ca, err = os.ReadFile(nc.mirrorCAFile); err != nil {
			return fmt.Errorf("node-config: %w", err)
		}
	}
	for _, arg := range pairs {
		name, server, _ := strings.Cut(arg, "=") // checked by runNodeConfig
		dir := filepath.Join(nc.configPath, name)
		var host strings.Builder
		// containerdcfg.String, not %q: Go's escapes are not all TOML's.
		fmt.Fprintf(&host, "%sserver = %s\n\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", nodeConfigMarker, containerdcfg.String(server), containerdcfg.String(nc.mirror))
		if ca != nil {
			caPath := filepath.Join(dir, "regnorm-ca.crt")
			nc.hosts = append(nc.hosts, hostFile{path: caPath, content: string(ca), mode: 0o644, hosts: filepath.Join(dir, "hosts.toml")})
			fmt.Fprintf(&host, "  ca = %s\n", containerdcfg.String(caPath))
		}
		if nc.mirrorToken != "" || nc.node != "" {
			// containerd sends these with every request to the host.
			fmt.Fprintf(&host, "  [host.%s.header]\n", containerdcfg.String(nc.mirror))
			if nc.mirrorToken != "" {
				fmt.Fprintf(&host, "    Authorization = [%s]\n", containerdcfg.String("Bearer "+nc.mirrorToken))
			}
			if nc.node != "" {
				fmt.Fprintf(&host, "    %s = [%s]\n", RegnormNodeHeader, containerdcfg.String(nc.node))
			}
		}
		mode := os.FileMode(0o644)
		if nc.mirrorToken != "" {
			mode = 0o600 // the token is a credential: root's alone, as containerd runs
		}
		nc.hosts = append(nc.hosts, hostFile{path: filepath.Join(dir, "hosts.toml"), content: host.String(), mode: mode, marked: true})
	}
	return nil
}

// keepHosts writes the files node-config keeps in place.
//
// At start it writes each that is not as this node-config writes it: a
// marked hosts.toml of an older release, or of a node-config with other
// flags, it takes over. After that, at each check, it writes only a file
// that is missing (removed by --once of an older release, a node-config
// stopping, an operator): a file that is there and differs was written
// since by someone else (another node-config on the same directory, an
// operator who edited it), and writing it back at every check would fight
// them for good. It says so once for each new content, and leaves it. A
// hosts.toml without node-config's marker is never node-config's, and
// neither is anything in its directory: the CA beside it is not written
// (nor removed). An empty file is missing: a crash can leave one, and
// containerd skips the mirror of an empty hosts.toml.
func (nc *nodeConfig) keepHosts(start bool) error {
	if nc.written == nil {
		nc.written, nc.seen = map[string]string{}, map[string]string{}
	}
	var errs []error
	for _, f := range nc.hosts {
		if f.hosts != "" && foreign(f.hosts) {
			// Not node-config's any more, if it was: never removed.
			delete(nc.written, f.path)
			nc.seen[f.path] = "foreign"
			continue
		}
		old, err := os.ReadFile(f.path)
		missing := errors.Is(err, os.ErrNotExist) || (err == nil && len(old) == 0)
		switch {
		case err == nil && string(old) == f.content:
			// Its own (another node-config's, before a rollout, say):
			// removed when this one stops, like one it wrote.
			nc.written[f.path], nc.seen[f.path] = f.content, "in place"
			continue
		case f.marked && foreign(f.path):
			if nc.seen[f.path] != "foreign" {
				nc.log.Warn("a hosts.toml that regnorm did not write is in the way; leaving it alone, and its directory", "path", f.path)
				nc.seen[f.path] = "foreign"
			}
			delete(nc.written, f.path)
			continue
		case !start && err != nil && !missing:
			if nc.seen[f.path] != "unreadable" {
				nc.log.Warn("cannot read a file node-config keeps; leaving it alone", "path", f.path, "error", err)
				nc.seen[f.path] = "unreadable"
			}
			continue
		case !start && !missing:
			if seen := "differs:" + string(old); nc.seen[f.path] != seen {
				nc.log.Warn("a file node-config keeps differs from what this node-config writes (another node-config's on this directory, or edited): left alone; delete it to have it written again", "path", f.path)
				nc.seen[f.path] = seen
			}
			continue
		}
		if err := writeFileAtomic(f.path, []byte(f.content), f.mode); err != nil {
			errs = append(errs, fmt.Errorf("node-config: %w", err))
			continue
		}
		nc.written[f.path] = f.content
		if _, wrote := nc.seen[f.path]; wrote && missing {
			nc.log.Warn("put back a file that was removed (or left empty)", "path", f.path)
		} else {
			nc.log.Info("wrote", "path", f.path)
		}
		nc.seen[f.path] = "in place"
	}
	return errors.Join(errs...)
}

// checkHosts says, for --once, whether each file is as node-config writes
// it, and changes nothing.
func (nc *nodeConfig) checkHosts() {
	for _, f := range nc.hosts {
		if f.hosts != "" && foreign(f.hosts) {
			nc.log.Info("beside a hosts.toml not written by regnorm: node-config writes nothing there", "path", f.path)
			continue
		}
		old, err := os.ReadFile(f.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			nc.log.Warn("missing: the running node-config writes it (--once writes nothing)", "path", f.path)
		case err != nil:
			nc.log.Warn("unreadable", "path", f.path, "error", err)
		case len(old) == 0:
			nc.log.Warn("empty, as if missing (containerd skips such a mirror): the running node-config writes it (--once writes nothing)", "path", f.path)
		case string(old) == f.content:
			nc.log.Info("in place, as node-config writes it", "path", f.path)
		case f.marked && foreign(f.path):
			nc.log.Warn("not written by regnorm: node-config leaves it alone, and its directory", "path", f.path)
		default:
			nc.log.Warn("differs from what node-config writes with these flags (another node-config's, or edited): the running node-config leaves it alone; delete it to have it written again", "path", f.path)
		}
	}
}

// check finds out whether containerd reads the hosts.toml files, fixes it
// when asked to and it can, and says so: in the log when the state changes,
// in the status file, and to regnorm. It returns what it found.
func (nc *nodeConfig) check(ctx context.Context) cache.NodeReport {
	rep := nc.inspect(ctx)
	rep.Reason = containerdcfg.Explain(rep.Reasons, rep.ConfigPath, nc.configPath)
	rep.ReportedAt = time.Now().UTC()
	state := fmt.Sprintf("%v|%s|%s|%s", rep.ReadsHostsToml, rep.Reason, rep.DropIn, rep.Fix)
	if state != nc.lastState {
		nc.lastState = state
		if rep.ReadsHostsToml {
			nc.log.Info("containerd reads regnorm's hosts.toml files", "containerd", rep.ContainerdVersion, "config_path", rep.ConfigPath)
		} else {
			nc.log.Warn("containerd will not use regnorm: "+rep.Reason, "containerd", rep.ContainerdVersion, "config_path", rep.ConfigPath, "drop_in", rep.DropIn)
			if rep.Fix != "" {
				// As lines, to be read and followed: a log attribute
				// would quote them into one.
				fmt.Fprintf(nc.stderr, "%s\nThen restart containerd (systemctl restart containerd).\n", rep.Fix)
			}
		}
	}
	if nc.statusFile != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := writeFileAtomic(nc.statusFile, b, 0o644); err != nil {
			nc.log.Warn("writing the status file failed", "error", err)
		}
	}
	// Report a new state at once (again at the next check if that fails),
	// an unchanged one every reportEvery, so that regnorm keeps the node.
	if nc.report && (state != nc.reportedState || time.Since(nc.lastReport) >= reportEvery) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		regnorm := proxy.Client{Server: nc.reportTo, HTTP: nc.client, Token: nc.reportToken}
		sent := rep
		fleet.Fit(&sent) // no words: regnorm makes its own
		if err := regnorm.ReportNode(rctx, sent); err != nil {
			nc.log.Warn("reporting to regnorm failed", "error", err, "regnorm", nc.reportTo)
		} else {
			nc.lastReport, nc.reportedState = time.Now(), state
			if nc.once {
				// regnorm keeps one report a node: this one, until the
				// node's running node-config reports again.
				nc.log.Info(fmt.Sprintf("sent this node's report to regnorm: its fleet view shows it for the node until the node's running node-config (the DaemonSet's) reports again, within %v; --report=false to send none", reportEvery), "node", nc.node, "regnorm", nc.reportTo)
			}
		}
	}
	return rep
}

// inspect reads containerd's version and configuration and says whether
// it reads the hosts.toml files, writing the drop-in with --fix.
//
// The drop-in is judged by the files alone, so that any node-config pod
// (a new one after a rollout, say) judges alike: it is containerd's once
// containerd started after it was written (its socket is newer), and until
// then containerd runs on the configuration without it. node-config leaves
// it in place when it stops: removing it would undo the fix at the next
// containerd restart, and a rollout would ask for another restart.
func (nc *nodeConfig) inspect(ctx context.Context) cache.NodeReport {
	rep := cache.NodeReport{Node: nc.node, Address: nc.address, HostsDir: nc.configPath}
	version, started, verr := containerdInfo(ctx, nc.socket)
	rep.ContainerdVersion = version
	cfg, err := containerdcfg.Load(nc.containerdConfig)
	if err != nil {
		rep.Reasons = []containerdcfg.Reason{{Code: containerdcfg.ConfigUnreadable, Detail: err.Error()}}
		return rep
	}
	v := containerdcfg.ParseVersion(version)
	dropIn, written := nc.ownDropIn(cfg)
	loaded := dropIn != "" && started.After(written)
	var unsafe *containerdcfg.Reason // why our drop-in should no longer be there
	if dropIn != "" && v.Known {
		// The configuration may have changed since the drop-in was
		// written (on 1.x, CRI settings in the main file it would hide).
		var refused *containerdcfg.Refusal
		if _, _, err := containerdcfg.DropIn(cfg.Without(dropIn), v, nc.configPath); errors.As(err, &refused) {
			unsafe = &refused.Reason
			if !loaded && !nc.once {
				// It never took effect: take it back.
				if rmErr := os.Remove(dropIn); rmErr == nil {
					nc.log.Warn("removed the drop-in: it is no longer a safe fix", "path", dropIn, "reason", err)
					cfg, dropIn, unsafe = cfg.Without(dropIn), "", nil
				}
			}
		}
	}
	running := cfg // the configuration containerd runs on
	if dropIn != "" && !loaded {
		running = cfg.Without(dropIn)
	}
	verdict := containerdcfg.Check(running, v, nc.configPath)
	rep.ConfigVersion = cfg.PluginsVersion(v)
	rep.ConfigPath, rep.TransferService, rep.ReadsHostsToml, rep.Reasons, rep.Fix =
		verdict.ConfigPath, verdict.TransferService, verdict.Reads, verdict.Reasons, verdict.Fix
	if verr != nil {
		for i := range rep.Reasons {
			if rep.Reasons[i].Code == containerdcfg.VersionAssumed {
				rep.Reasons[i].Detail = verr.Error()
			}
		}
	}
	if !verdict.Reads && nc.fix {
		base := cfg
		if dropIn != "" {
			base = cfg.Without(dropIn)
		}
		path, content, err := containerdcfg.DropIn(base, v, nc.configPath)
		old, _ := os.ReadFile(path)
		var refused *containerdcfg.Refusal
		switch {
		case errors.As(err, &refused):
			rep.Reasons = append(rep.Reasons, because(containerdcfg.FixRefused, "", refused.Reason))
		case err != nil:
			rep.Reasons = append(rep.Reasons, containerdcfg.Reason{Code: containerdcfg.FixWriteFailed, Path: path, Detail: err.Error()})
		case path != dropIn && fileExists(path):
			rep.Reasons = append(rep.Reasons, containerdcfg.Reason{Code: containerdcfg.FixForeignFile, Path: path})
		case !bytes.Equal(old, content) && nc.once:
			nc.log.Info("--fix would write a containerd drop-in (--once writes nothing)", "path", path)
		case !bytes.Equal(old, content):
			if err := writeFileAtomic(path, content, 0o644); err != nil {
				rep.Reasons = append(rep.Reasons, containerdcfg.Reason{Code: containerdcfg.FixWriteFailed, Path: path, Detail: err.Error()})
				break
			}
			nc.log.Warn("wrote a containerd drop-in: restart containerd to apply it (systemctl restart containerd)", "path", path)
			dropIn, loaded = path, false
			if cfg, err = containerdcfg.Load(nc.containerdConfig); err != nil {
				rep.Reasons = append(rep.Reasons, containerdcfg.Reason{Code: containerdcfg.ConfigUnreadable, Detail: err.Error()})
				return rep
			}
		}
	}
	if dropIn == "" {
		return rep
	}
	rep.DropIn = dropIn
	if unsafe != nil {
		rep.Reasons = append(rep.Reasons, because(containerdcfg.DropInUnsafe, dropIn, *unsafe))
	}
	if !loaded && !verdict.Reads && unsafe == nil {
		if after := containerdcfg.Check(cfg, v, nc.configPath); after.Reads {
			rep.Reasons = append(rep.Reasons, containerdcfg.Reason{Code: containerdcfg.DropInWritten, Path: dropIn})
			rep.Fix = "" // done: what is left is the restart
		} else {
			rep.Reasons = append(rep.Reasons, because(containerdcfg.DropInNoFix, dropIn, after.Reasons[len(after.Reasons)-1]))
		}
	}
	return rep
}

// because is a reason of code about the drop-in at path, explained by why.
func because(code containerdcfg.Code, path string, why containerdcfg.Reason) containerdcfg.Reason {
	r := why
	r.Code, r.Why, r.Path = code, why.Code, path
	return r
}

// ownDropIn finds a drop-in node-config wrote (by any pod) where the
// configuration imports drop-ins, and when it was written.
func (nc *nodeConfig) ownDropIn(cfg *containerdcfg.Config) (string, time.Time) {
	for _, f := range cfg.Files {
		if filepath.Base(f) != containerdcfg.DropInName {
			continue
		}
		b, err := os.ReadFile(f)
		fi, serr := os.Stat(f)
		if err == nil && serr == nil && bytes.HasPrefix(b, []byte(containerdcfg.DropInMarker)) {
			return f, fi.ModTime()
		}
	}
	return "", time.Time{}
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// containerdInfo asks containerd's socket for its version, and says when
// this containerd started: when it made its socket (a restarted containerd
// makes it anew; containerd 1.6's API has no start time or PID).
func containerdInfo(ctx context.Context, socket string) (version string, started time.Time, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var st unix.Stat_t
	if err := unix.Stat(socket, &st); err != nil {
		return "", time.Time{}, fmt.Errorf("containerd socket %s: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("containerd socket %s: %w", socket, err)
	}
	defer conn.Close()
	v, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("containerd socket %s: %w", socket, err)
	}
	return v.Version, socketBorn(socket, st), nil
}

// socketBorn is when the socket file was made: its birth time where the
// filesystem keeps one (a chmod or chown does not move it), else its
// change time.
func socketBorn(socket string, st unix.Stat_t) time.Time {
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, socket, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME, &sx); err == nil && sx.Mask&unix.STATX_BTIME != 0 {
		return time.Unix(sx.Btime.Sec, int64(sx.Btime.Nsec))
	}
	return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
}

// cleanUp removes every file this process wrote, if it is still its own
// (and, for the CA, its hosts.toml is not the operator's by now).
func (nc *nodeConfig) cleanUp() {
	beside := map[string]string{}
	for _, f := range nc.hosts {
		beside[f.path] = f.hosts
	}
	for path, content := range nc.written {
		if hosts := beside[path]; hosts != "" && foreign(hosts) {
			continue
		}
		if b, err := os.ReadFile(path); err == nil && string(b) == content {
			os.Remove(path)
			os.Remove(filepath.Dir(path)) // only if empty
			nc.log.Info("removed", "path", path)
		}
	}
	if nc.statusFile != "" {
		os.Remove(nc.statusFile)
	}
}

// runNodeConfigProbe is `regnorm node-config probe --status-file FILE`, the
// DaemonSet's readiness probe: it exits 0 only when the last check found
// that containerd reads regnorm's hosts.toml files.
func runNodeConfigProbe(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("regnorm node-config probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	statusFile := fs.String("status-file", "", "the file node-config writes (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*statusFile)
	if err != nil {
		return fmt.Errorf("node-config probe: %w", err)
	}
	var rep cache.NodeReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("node-config probe: %w", err)
	}
	if !rep.ReadsHostsToml {
		if rep.Fix == "" { // a drop-in is written: the reason says to restart
			return fmt.Errorf("containerd will not use regnorm: %s", rep.Reason)
		}
		return fmt.Errorf("containerd will not use regnorm: %s\n%s\nThen restart containerd (systemctl restart containerd)", rep.Reason, rep.Fix)
	}
	fmt.Fprintf(stdout, "containerd %s reads %s\n", rep.ContainerdVersion, rep.HostsDir)
	return nil
}

// writeFileAtomic writes path through a temporary file in its directory,
// so that a reader never sees it half written, and a crash leaves the old
// file or the new one: the temporary file is synced before the rename,
// the directory after it (without, a crash could leave a hosts.toml of
// zero bytes). Each call has a temporary file of its own: two writers
// never write one.
func writeFileAtomic(path string, content []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".regnorm-*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil // written; only its durability is unsure
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
