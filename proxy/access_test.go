package proxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
)

func basic(user, pass string) http.Header {
	h := containerdAccept.Clone()
	h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	return h
}

func bearer(tok string) http.Header {
	h := containerdAccept.Clone()
	h.Set("Authorization", "Bearer "+tok)
	return h
}

func TestClientAuth(t *testing.T) {
	t.Parallel()
	hash, _ := bcrypt.GenerateFromPassword([]byte("alice-pass"), bcrypt.MinCost)
	h := newHarness(t, harnessOptions{clientAuth: &proxy.ClientAuth{
		Users:          map[string][]byte{"alice": hash},
		Tokens:         [][sha256.Size]byte{sha256.Sum256([]byte("robot-token"))},
		ProtectMetrics: true,
	}})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	manifest := "/v2/library/app/manifests/v1"
	tests := []struct {
		name, path string
		header     http.Header
		want       int
	}{
		{"no credentials", manifest, containerdAccept, http.StatusUnauthorized},
		{"wrong password", manifest, basic("alice", "guess"), http.StatusUnauthorized},
		{"unknown user", manifest, basic("mallory", "alice-pass"), http.StatusUnauthorized},
		{"user", manifest, basic("alice", "alice-pass"), http.StatusOK},
		{"user again (remembered)", manifest, basic("alice", "alice-pass"), http.StatusOK},
		{"token", manifest, bearer("robot-token"), http.StatusOK},
		{"token as a Basic password, any user (crane, skopeo)", manifest, basic("crane", "robot-token"), http.StatusOK},
		{"wrong token as a Basic password", manifest, basic("crane", "robot-token2"), http.StatusUnauthorized},
		{"wrong token", manifest, bearer("robot-token2"), http.StatusUnauthorized},
		{"base", "/v2/", nil, http.StatusUnauthorized},
		{"healthz stays open", "/healthz", nil, http.StatusOK},
		{"readyz stays open", "/readyz", nil, http.StatusOK},
		{"metrics protected", "/metrics", nil, http.StatusUnauthorized},
		{"metrics with a token", "/metrics", bearer("robot-token"), http.StatusOK},
		{"report left open", "/api/v1/rewrites", nil, http.StatusOK},
		{"fleet view left open, like the report", "/api/v1/nodes", nil, http.StatusOK},
		// A node report needs the report token, which only node-config
		// holds: client credentials are not enough.
		{"node report without credentials", "POST /api/v1/nodes", nil, http.StatusUnauthorized},
		{"node report with a client token", "POST /api/v1/nodes", bearer("robot-token"), http.StatusUnauthorized},
		{"node report with a user's password", "POST /api/v1/nodes", basic("alice", "alice-pass"), http.StatusUnauthorized},
		{"node report with the report token", "POST /api/v1/nodes", bearer(testReportToken), http.StatusNoContent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			if p, ok := strings.CutPrefix(tt.path, "POST "); ok {
				header := http.Header{"Content-Type": {"application/json"}}
				maps.Copy(header, tt.header)
				r = h.doBody(t, http.MethodPost, p, header, `{"node":"n","hostsDir":"/etc/containerd/certs.d"}`)
			} else {
				r = h.do(t, http.MethodGet, tt.path, tt.header)
			}
			if r.status != tt.want {
				t.Fatalf("status %d, want %d (%s)", r.status, tt.want, r.body)
			}
			if tt.want == http.StatusUnauthorized {
				if code := r.ociError(t); code != errcode.Unauthorized {
					t.Errorf("code %s", code)
				}
				want := `Basic realm="regnorm"`
				if strings.HasPrefix(tt.path, "POST /api/v1/nodes") {
					want = `Bearer realm="regnorm node reports"`
				}
				if got := r.header.Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate %q, want %q", got, want)
				}
			}
		})
	}
}

// TestForwardedCredentials: with credential forwarding, each client reads
// upstream with its own rights, and cached private content reaches only the
// clients the upstream confirms. No password or token ever shows in logs,
// metrics, the report, the status page or error bodies.
func TestForwardedCredentials(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private", "team/shared"}},
			{Username: "bob", Password: "bob-secret-pw", Repos: []string{"team/shared"}},
		}},
		forward: true,
	})
	private := h.push(t, "team/private", "v1", regtest.ImageOptions{}, oneFile)
	h.push(t, "team/shared", "v1", regtest.ImageOptions{}, oneFile)
	alice, bob := basic("alice", "alice-secret-pw"), basic("bob", "bob-secret-pw")
	configPath := "/v2/team/private/blobs/" + mustConfigDigest(t, private.Manifest)
	var bodies []string
	check := func(method, path string, header http.Header, want int) {
		t.Helper()
		r := h.do(t, method, path, header)
		bodies = append(bodies, string(r.body))
		if r.status != want {
			t.Fatalf("%s %s: %d, want %d (%s)", method, path, r.status, want, r.body)
		}
		if want == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") != `Basic realm="regnorm"` {
			t.Fatalf("%s %s: 401 without a Basic challenge: containerd would never send its credentials", method, path)
		}
	}

	// Alice pulls her private image: it is now in the cache.
	check("GET", "/v2/team/private/manifests/v1", alice, http.StatusOK)
	check("GET", configPath, alice, http.StatusOK)
	// Bob and anonymous clients are refused, cached or not.
	check("GET", "/v2/team/private/manifests/v1", bob, http.StatusUnauthorized)
	check("GET", configPath, bob, http.StatusUnauthorized)
	check("HEAD", configPath, bob, http.StatusUnauthorized)
	check("GET", configPath, containerdAccept, http.StatusUnauthorized)
	check("GET", "/v2/team/private/manifests/"+private.ManifestDigest.String(), bob, http.StatusUnauthorized)
	// What Bob may read, he gets.
	check("GET", "/v2/team/shared/manifests/v1", bob, http.StatusOK)
	// Credentials that are not Basic cannot be forwarded.
	check("GET", "/v2/team/shared/manifests/v1", bearer("whatever"), http.StatusUnauthorized)

	secrets := append([]string{"alice-secret-pw", "bob-secret-pw",
		base64.StdEncoding.EncodeToString([]byte("alice:alice-secret-pw")),
		base64.StdEncoding.EncodeToString([]byte("bob:bob-secret-pw"))}, h.reg.Issued.All()...)
	if len(secrets) < 6 {
		t.Fatalf("only %d secrets to look for: the token server issued nothing?", len(secrets))
	}
	places := map[string]string{
		"log":     h.logs.String(),
		"metrics": string(h.do(t, "GET", "/metrics", nil).body),
		"report":  string(h.do(t, "GET", "/api/v1/rewrites", nil).body),
		"status":  string(h.do(t, "GET", "/status", nil).body),
		"errors":  strings.Join(bodies, "\n"),
	}
	for place, text := range places {
		for _, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("the %s holds a secret (%.12s...)", place, secret)
			}
		}
	}
}

func mustConfigDigest(t *testing.T, manifest []byte) string {
	t.Helper()
	i := strings.Index(string(manifest), `"config"`)
	j := strings.Index(string(manifest[i:]), "sha256:")
	if i < 0 || j < 0 {
		t.Fatal("no config digest in manifest")
	}
	return string(manifest[i+j : i+j+71])
}

// TestTokenOnlyAuthChallengesBasic: with tokens only, the challenge is
// still Basic, which generic clients answer (with the token as password).
func TestTokenOnlyAuthChallengesBasic(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clientAuth: &proxy.ClientAuth{Tokens: [][sha256.Size]byte{sha256.Sum256([]byte("robot-token"))}}})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	r := h.do(t, http.MethodGet, "/v2/", nil)
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Basic realm="regnorm"` {
		t.Fatalf("challenge: %d %q", r.status, r.header.Get("WWW-Authenticate"))
	}
	for _, header := range []http.Header{bearer("robot-token"), basic("anyone", "robot-token")} {
		if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", header); r.status != http.StatusOK {
			t.Fatalf("with the token: %d", r.status)
		}
	}
}

// TestUnknownUsersCostWhatKnownOnesDo: a Basic attempt with an unknown
// user name runs one bcrypt comparison, as a wrong password of a known
// user does, so that neither the time of an answer nor the CPU spent
// tells which user names exist. A remembered pair costs none.
func TestUnknownUsersCostWhatKnownOnesDo(t *testing.T) {
	t.Parallel()
	hash, _ := bcrypt.GenerateFromPassword([]byte("alice-pass"), bcrypt.MinCost)
	h := newHarness(t, harnessOptions{clientAuth: &proxy.ClientAuth{Users: map[string][]byte{"alice": hash}}})
	checks := h.srv.CountPasswordChecks()
	for _, tt := range []struct {
		name       string
		user, pass string
		want       int
		comparison int64
	}{
		{"a known user, a wrong password", "alice", "guess", http.StatusUnauthorized, 1},
		{"an unknown user", "mallory", "alice-pass", http.StatusUnauthorized, 1},
		{"another unknown user", "bob", "guess", http.StatusUnauthorized, 1},
		{"a known user, her password", "alice", "alice-pass", http.StatusOK, 1},
		{"the same again (remembered)", "alice", "alice-pass", http.StatusOK, 0},
	} {
		before := checks.Load()
		if r := h.do(t, http.MethodGet, "/v2/", basic(tt.user, tt.pass)); r.status != tt.want {
			t.Fatalf("%s: %d, want %d", tt.name, r.status, tt.want)
		}
		if got := checks.Load() - before; got != tt.comparison {
			t.Errorf("%s: %d bcrypt comparisons, want %d", tt.name, got, tt.comparison)
		}
	}
}

// TestFailedAttemptsAreLimited: past its allowance of failed attempts, an
// address gets 429 TOOMANYREQUESTS with Retry-After to what would cost a
// bcrypt comparison (which is not run), until the allowance refills. A
// success costs none of it. Wrong tokens cost no comparison: they have an
// allowance of their own, past which they get 429 too, and which spends
// nothing of the allowance of comparisons.
func TestFailedAttemptsAreLimited(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clk, authFailures: 3, clientAuth: &proxy.ClientAuth{
		Users:  map[string][]byte{"alice": mustHash(t, "alice-pass"), "carol": mustHash(t, "carol-pass"), "dave": mustHash(t, "dave-pass")},
		Tokens: [][sha256.Size]byte{sha256.Sum256([]byte(robotToken))}}})
	checks := h.srv.CountPasswordChecks()
	try := func(header http.Header, want int, comparisons int64) response {
		t.Helper()
		before := checks.Load()
		r := h.do(t, http.MethodGet, "/v2/", header)
		if r.status != want {
			t.Fatalf("%d, want %d (%s)", r.status, want, r.body)
		}
		if got := checks.Load() - before; got != comparisons {
			t.Fatalf("%d bcrypt comparisons, want %d", got, comparisons)
		}
		return r
	}
	tooMany := func(header http.Header, retryAfter string) {
		t.Helper()
		r := try(header, http.StatusTooManyRequests, 0)
		if code := r.ociError(t); code != errcode.TooManyRequests || r.header.Get("Retry-After") != retryAfter {
			t.Fatalf("past the allowance: %s, Retry-After %q; want TOOMANYREQUESTS, %s", code, r.header.Get("Retry-After"), retryAfter)
		}
	}
	// Successes and requests without credentials (a client's first,
	// answered with the challenge) cost nothing.
	try(basic("alice", "alice-pass"), http.StatusOK, 1)
	try(nil, http.StatusUnauthorized, 0)
	try(bearer(robotToken), http.StatusOK, 0)
	// Three wrong tokens: their allowance (3 a minute); then 429, the
	// report token too (it is no client token).
	for range 3 {
		try(bearer("wrong-token-0123456789"), http.StatusUnauthorized, 0)
	}
	tooMany(bearer("wrong-token-0123456789"), "20")
	tooMany(bearer(testReportToken), "20")
	// The allowance of comparisons is whole: a new pair is compared.
	try(basic("dave", "dave-pass"), http.StatusOK, 1)
	// Three failed comparisons: that allowance. Past it, right or wrong,
	// a pair not verified before gets 429 and no comparison.
	try(basic("alice", "guess-1"), http.StatusUnauthorized, 1)
	try(basic("mallory", "guess-2"), http.StatusUnauthorized, 1)
	try(basic("alice", "guess-3"), http.StatusUnauthorized, 1)
	tooMany(basic("alice", "guess-4"), "20")
	tooMany(basic("carol", "carol-pass"), "20")

	// One attempt back every 20 s; a success gives it back.
	clk.Advance(20 * time.Second)
	try(basic("carol", "carol-pass"), http.StatusOK, 1)
	try(basic("alice", "guess-4"), http.StatusUnauthorized, 1)
	try(basic("alice", "guess-5"), http.StatusTooManyRequests, 0)
	clk.Advance(time.Minute)
	for i := range 3 {
		try(basic("alice", fmt.Sprint("guess-", 6+i)), http.StatusUnauthorized, 1)
	}
	try(basic("alice", "guess-9"), http.StatusTooManyRequests, 0)
}

// serveFrom answers a request to handler as if it came from addr (an
// address and port), within a minute: a request that waits longer fails.
func serveFrom(handler http.Handler, addr, method, path string, header http.Header) response {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, path, nil)
	req.RemoteAddr = addr
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// TestChurnedAddressesDoNotLockOutANewcomer: wrong tokens from more
// addresses than regnorm remembers (an IPv6 client taking a new /64 for
// each) cost no comparison and take nothing from anyone's allowance of
// comparisons: a new address with a right password, never verified
// before, still gets its comparison and gets in.
func TestChurnedAddressesDoNotLockOutANewcomer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clock: newFakeClock(), clientAuth: &proxy.ClientAuth{
		Users:  map[string][]byte{"alice": mustHash(t, "alice-pass")},
		Tokens: [][sha256.Size]byte{sha256.Sum256([]byte(robotToken))}}})
	handler := h.srv.Handler(http.NotFoundHandler())
	checks := h.srv.CountPasswordChecks()
	for i := range 10010 {
		addr := fmt.Sprintf("[2001:db8:%x:%x::1]:4000", i>>16, i&0xffff)
		if r := serveFrom(handler, addr, http.MethodGet, "/v2/", bearer("stale-token-0123456789")); r.status != http.StatusUnauthorized {
			t.Fatalf("a wrong token from address %d: %d, want 401", i, r.status)
		}
	}
	if r := serveFrom(handler, "[2001:db8:ffff:1::1]:4000", http.MethodGet, "/v2/", basic("alice", "alice-pass")); r.status != http.StatusOK {
		t.Fatalf("a new address with the right password: %d, want 200 (%s)", r.status, r.body)
	}
	if got := checks.Load(); got != 1 {
		t.Fatalf("%d bcrypt comparisons, want 1", got)
	}
}

// TestPasswordChecksAreBoundedForAll: however many addresses guess, at
// most half of GOMAXPROCS (at least one) bcrypt comparisons run at once and
// 64 more wait for a turn; past that, a guess gets 503 UNAVAILABLE with
// Retry-After at once, and no comparison. Meanwhile a token and a
// remembered pair get in without waiting for a turn.
func TestPasswordChecksAreBoundedForAll(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clientAuth: &proxy.ClientAuth{
		Users:  map[string][]byte{"alice": mustHash(t, "alice-pass")},
		Tokens: [][sha256.Size]byte{sha256.Sum256([]byte(robotToken))}}})
	handler := h.srv.Handler(http.NotFoundHandler())
	if r := serveFrom(handler, "10.1.0.1:4000", http.MethodGet, "/v2/", basic("alice", "alice-pass")); r.status != http.StatusOK {
		t.Fatalf("alice's first request: %d", r.status)
	}
	running, most, release := h.srv.HoldPasswordChecks()
	t.Cleanup(release)
	turns := max(1, runtime.GOMAXPROCS(0)/2)
	const queued = 64
	statuses := make(chan int, turns+queued)
	for i := range turns + queued {
		go func() {
			addr := fmt.Sprintf("10.2.%d.%d:4000", i>>8, i&255)
			statuses <- serveFrom(handler, addr, http.MethodGet, "/v2/", basic("alice", fmt.Sprint("guess-", i))).status
		}()
	}
	waitFor(t, "the guesses to compare and wait for a turn", func() bool {
		if n := most(); n > int64(turns) {
			t.Fatalf("%d comparisons ran at once, want at most %d", n, turns)
		}
		return running() == int64(turns) && h.metric(t, "regnorm_password_checks_queued", "") == queued
	})

	r := serveFrom(handler, "10.3.0.1:4000", http.MethodGet, "/v2/", basic("alice", "one-more-guess"))
	if r.status != http.StatusServiceUnavailable || r.ociError(t) != errcode.Unavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("a guess past the bound: %d %s, Retry-After %q; want 503 UNAVAILABLE with Retry-After", r.status, r.body, r.header.Get("Retry-After"))
	}
	if got := h.metric(t, "regnorm_password_checks_rejected_total", ""); got != 1 {
		t.Errorf("regnorm_password_checks_rejected_total = %v, want 1", got)
	}
	for name, header := range map[string]http.Header{"a token": bearer(robotToken), "a remembered pair": basic("alice", "alice-pass")} {
		if r := serveFrom(handler, "10.2.0.1:4000", http.MethodGet, "/v2/", header); r.status != http.StatusOK {
			t.Errorf("%s while the comparisons are taken: %d, want 200 (%s)", name, r.status, r.body)
		}
	}

	release()
	for range turns + queued {
		if got := <-statuses; got != http.StatusUnauthorized {
			t.Errorf("a guess: %d, want 401", got)
		}
	}
	if got := most(); got != int64(turns) {
		t.Errorf("%d comparisons ran at once, want %d", got, turns)
	}
}

// robotToken is a client token of the tests, as long as a token file
// must hold (proxy.MinTokenLength).
const robotToken = "robot-token-0123456789"

func mustHash(t *testing.T, password string) []byte {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return hash
}

// TestSharedAddressIsNotLockedOut: nodes behind one address (SNAT through
// a NodePort, an ingress or a load balancer) share its allowances of
// failures, but one client that spends them (a stale token after a
// rotation) locks out none of them: a right bearer token, a token as a
// Basic password and a remembered user:password pair still get in, and so
// does a node report with the report token. A wrong token costs no
// comparison and spends nothing of the allowance of comparisons: a pair
// not verified before still gets its comparison. Failed node reports spend
// an allowance of their own: they lock out no pull.
func TestSharedAddressIsNotLockedOut(t *testing.T) {
	t.Parallel()
	auth := func() *proxy.ClientAuth {
		return &proxy.ClientAuth{Users: map[string][]byte{"alice": mustHash(t, "alice-pass"), "carol": mustHash(t, "carol-pass")},
			Tokens: [][sha256.Size]byte{sha256.Sum256([]byte(robotToken))}}
	}
	report := cache.NodeReport{Node: "worker-1", HostsDir: fleet.DefaultHostsDir}
	reportToken := http.Header{"Authorization": {"Bearer " + testReportToken}}
	wrongReportToken := http.Header{"Authorization": {"Bearer wrong-report-token-0123"}}

	t.Run("client failures", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{clock: newFakeClock(), authFailures: 3, clientAuth: auth()})
		h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		checks := h.srv.CountPasswordChecks()
		if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", basic("alice", "alice-pass")); r.status != http.StatusOK {
			t.Fatalf("alice's first pull: %d", r.status)
		}
		// The stale client, from the same address, spends the allowance.
		for i := range 5 {
			want := http.StatusUnauthorized
			if i >= 3 {
				want = http.StatusTooManyRequests
			}
			if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", bearer("stale-token-0123456789")); r.status != want {
				t.Fatalf("stale token, attempt %d: %d, want %d", i+1, r.status, want)
			}
		}
		before := checks.Load()
		for name, header := range map[string]http.Header{
			"a bearer token":         bearer(robotToken),
			"a token as password":    basic("anyone", robotToken),
			"a remembered user pair": basic("alice", "alice-pass"),
		} {
			if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", header); r.status != http.StatusOK {
				t.Errorf("%s from the locked-out address: %d, want 200 (%s)", name, r.status, r.body)
			}
		}
		if r := h.postReport(t, report, reportToken); r.status != http.StatusNoContent {
			t.Errorf("a node report with the report token from the locked-out address: %d, want 204 (%s)", r.status, r.body)
		}
		if got := checks.Load() - before; got != 0 {
			t.Errorf("%d bcrypt comparisons for tokens and a remembered pair, want 0", got)
		}
		// A pair not verified before costs a comparison, which the wrong
		// tokens took nothing from.
		if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", basic("carol", "carol-pass")); r.status != http.StatusOK {
			t.Errorf("a new, right Basic pair after failing tokens: %d, want 200", r.status)
		}
		if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", basic("alice", "guess")); r.status != http.StatusUnauthorized {
			t.Errorf("a wrong Basic pair after failing tokens: %d, want 401", r.status)
		}
		if got := checks.Load() - before; got != 2 {
			t.Errorf("%d bcrypt comparisons for two new pairs, want 2", got)
		}
	})

	t.Run("report failures", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{clock: newFakeClock(), authFailures: 3, clientAuth: auth()})
		for i := range 5 {
			want := http.StatusUnauthorized
			if i >= 3 {
				want = http.StatusTooManyRequests
			}
			if r := h.postReport(t, report, wrongReportToken); r.status != want {
				t.Fatalf("wrong report token, attempt %d: %d, want %d", i+1, r.status, want)
			}
		}
		if r := h.postReport(t, report, reportToken); r.status != http.StatusNoContent {
			t.Errorf("a node report with the report token: %d, want 204 (%s)", r.status, r.body)
		}
		// The client allowance is whole: a pair never verified gets its
		// comparison, and failures are still counted from the first.
		if r := h.do(t, http.MethodGet, "/v2/", basic("carol", "carol-pass")); r.status != http.StatusOK {
			t.Errorf("a new, right Basic pair after failed reports: %d, want 200", r.status)
		}
		for i := range 3 {
			if r := h.do(t, http.MethodGet, "/v2/", basic("alice", fmt.Sprint("guess-", i))); r.status != http.StatusUnauthorized {
				t.Errorf("guess %d after failed reports: %d, want 401", i+1, r.status)
			}
		}
	})
}
