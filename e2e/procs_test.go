//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Paths set by TestMain.
var (
	regnormBin  string
	helloBin    string
	registryBin = os.Getenv("REGNORM_REGISTRY_BIN")
	// registry2Bin is distribution v2.8.3, which stores schema 1 (v3 does not).
	registry2Bin  = os.Getenv("REGNORM_REGISTRY2_BIN")
	conformBin    = os.Getenv("REGNORM_CONFORMANCE_BIN")
	containerdBin = os.Getenv("REGNORM_CONTAINERD_BIN")
	ctrBin        = os.Getenv("REGNORM_CTR_BIN")
	// oldContainerdBin is containerd v1.6.8, the last that aborts on xattrs
	// on symlinks.
	oldContainerdBin = os.Getenv("REGNORM_OLD_CONTAINERD_BIN")
	prometheusBin    = os.Getenv("REGNORM_PROMETHEUS_BIN")
	versitygwBin     = os.Getenv("REGNORM_VERSITYGW_BIN")
	chromiumBin      = os.Getenv("REGNORM_CHROMIUM_BIN")
	// cosignBin signs in the upstream and verifies through regnorm.
	cosignBin = os.Getenv("REGNORM_COSIGN_BIN")
)

func TestMain(m *testing.M) {
	for name, v := range map[string]string{"REGNORM_REGISTRY_BIN": registryBin, "REGNORM_CONFORMANCE_BIN": conformBin,
		"REGNORM_CONTAINERD_BIN": containerdBin, "REGNORM_CTR_BIN": ctrBin, "REGNORM_OLD_CONTAINERD_BIN": oldContainerdBin,
		"REGNORM_PROMETHEUS_BIN": prometheusBin, "REGNORM_CHROMIUM_BIN": chromiumBin, "REGNORM_VERSITYGW_BIN": versitygwBin,
		"REGNORM_CONTAINERD2_DIR": containerd2Dir, "REGNORM_CONTAINERD17_DIR": containerd17Dir, "REGNORM_REGISTRY2_BIN": registry2Bin,
		"REGNORM_COSIGN_BIN": cosignBin, "REGNORM_ETCD_BIN": etcdBin, "REGNORM_KUBE_APISERVER_BIN": kubeAPIServerBin,
		"REGNORM_KYVERNO_BIN": kyvernoBin} {
		if _, err := os.Stat(v); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s=%q is not usable (%v); run scripts/test.sh, which installs it\n", name, v, err)
			os.Exit(2)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: containerd needs root")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "regnorm-e2e-bin")
	if err != nil {
		panic(err)
	}
	regnormBin, helloBin = filepath.Join(dir, "regnorm"), filepath.Join(dir, "hello")
	// The same flags as the Dockerfile's build.
	for _, b := range [][2]string{{regnormBin, "../cmd/proxy"}, {helloBin, "./testdata/hello"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", b[0], b[1])
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", b[1], err, out)
			os.Exit(2)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a child process that is stopped, by its PID, when the test ends.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func start(t *testing.T, name string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s output (last 8 KiB):\n%s", name, p.out.tail(8<<10))
		}
	})
	return p
}

// stop sends SIGTERM, then SIGKILL after 10 s, to this process only.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

func (l *lockedBuffer) tail(n int) string {
	s := l.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not come up", url)
}

// startRegistry runs the distribution registry binary on 127.0.0.1 with
// filesystem storage, and returns its URL.
func startRegistry(t *testing.T) (string, *process) {
	t.Helper()
	return startRegistryProxy(t, "")
}

// startRegistryProxy is startRegistry, in proxy mode (distribution's
// pull-through cache) for remote when it is set.
func startRegistryProxy(t *testing.T, remote string) (string, *process) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := start(t, "registry", registryBin, "serve", registryConfig(t, dir, addr, remote, "", ""))
	waitHTTP(t, "http://"+addr+"/v2/")
	return "http://" + addr, p
}

// registryConfig writes the distribution registry's config into dir and
// returns its path: listening on addr, over TLS with cert and key when
// they are set, a pull-through cache of remote when it is set.
func registryConfig(t *testing.T, dir, addr, remote, cert, key string) string {
	t.Helper()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: regnorm-e2e
`, filepath.Join(dir, "data"), addr)
	if cert != "" {
		cfg += fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	}
	if remote != "" {
		cfg += fmt.Sprintf("proxy:\n  remoteurl: %s\n", remote)
	}
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startRegnorm runs the built binary with a config whose docker.io upstream
// is upstreamURL, and returns its URL. extraYAML follows the upstream list:
// more upstream entries, then other settings; without a cache section, the
// cache is a filesystem cache in a temporary directory.
func startRegnorm(t *testing.T, upstreamURL string, extraYAML string) (string, *process) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	if !regexp.MustCompile(`(?m)^cache:`).MatchString(extraYAML) {
		extraYAML += fmt.Sprintf("cache:\n  driver: filesystem\n  filesystem:\n    rootDirectory: %s\n", filepath.Join(dir, "cache"))
	}
	cfg := fmt.Sprintf(`listen: %s
logFormat: json
tagTTL: 1h
spoolDir: %s
upstreams:
- name: docker.io
  url: %s
%s`, addr, dir, upstreamURL, extraYAML)
	path := filepath.Join(dir, "regnorm.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	p := start(t, "regnorm", regnormBin, "--config", path)
	waitUp(t, "http://"+addr+"/healthz", p)
	return "http://" + addr, p
}

// waitUp is waitHTTP for p's server: if p exits first (a refused config),
// the test fails at once with what it printed.
func waitUp(t *testing.T, url string, p *process) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		select {
		case <-p.done:
			t.Fatalf("%s exited before %s answered: %v\n%s", p.name, url, p.cmd.ProcessState, p.out.tail(4<<10))
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not come up", url)
}

// metric sums the samples of name whose labels contain every want label. A
// metric that is not exported, or no series with those labels, fails the
// test: a renamed metric must not read as 0.
func metric(t *testing.T, base, name string, want ...string) float64 {
	t.Helper()
	return metricIn(t, scrape(t, base), name, want...)
}

// scrape reads base's /metrics once: metricIn reads several values of one
// moment from it.
func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	return string(body)
}

// metricIn is metric on a scrape.
func metricIn(t *testing.T, scraped, name string, want ...string) float64 {
	t.Helper()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `(?:\{([^}]*)\})? (\S+)$`)
	total, matched := 0.0, 0
	sc := bufio.NewScanner(strings.NewReader(scraped))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(m[1], w)
		}
		if ok {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatalf("metric %s{%s}: %v", name, m[1], err)
			}
			total += v
			matched++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	if matched == 0 {
		t.Fatalf("metric %s%v is not exported", name, want)
	}
	return total
}

func run(t *testing.T, ctx context.Context, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}
