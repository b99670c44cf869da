package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// attackerRealm is a token service a network neighbour runs.
const attackerRealm = `Bearer realm="http://attacker.invalid/token",service="registry"`

// TestReplicaAnswerCannotCarryAChallenge: a neighbour between two replicas
// adds a WWW-Authenticate header to an owner's signed 401 (the upstream
// wants credentials this mirror does not have). The header is not among
// those an answer's MAC covers, so it must not reach the asker's client:
// a client that follows it sends its credentials to the neighbour's token
// service. The client of either replica gets the owner's 401 as it was
// signed, with no challenge but the mirror's own.
func TestReplicaAnswerCannotCarryAChallenge(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/private/") {
			// A private repository: the upstream wants credentials it
			// does not say how to get.
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.front.relay(w, r)
	})
	var injected atomic.Int32
	reps := startReplicas(t, h, 2, func(i int, internal string) string {
		u, _ := url.Parse(internal)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ModifyResponse = func(resp *http.Response) error {
			if resp.StatusCode == http.StatusUnauthorized {
				resp.Header.Set("WWW-Authenticate", attackerRealm)
				injected.Add(1)
			}
			return nil
		}
		front := httptest.NewServer(rp)
		t.Cleanup(front.Close)
		return front.URL
	})
	// One of the two replicas owns the tag; the other asks it.
	for i, r := range reps {
		req, _ := http.NewRequest(http.MethodGet, r.url+"/v2/private/app/manifests/v1", nil)
		req.Header = containerdAccept.Clone()
		req.Header.Set("User-Agent", "containerd/2.3.4")
		resp, err := boundedClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("replica %d: %d %s, want the upstream's 401", i, resp.StatusCode, body)
		}
		if c := resp.Header.Get("WWW-Authenticate"); strings.Contains(c, "attacker") {
			t.Errorf("replica %d: its client was sent to the neighbour's token service: WWW-Authenticate %q", i, c)
		}
	}
	if injected.Load() == 0 {
		t.Fatal("no owner's 401 went through the neighbour: the test tested nothing")
	}
}

// TestReplicaVariantWithAPatientDeadline: a mirror configured with a
// patient deadline past ten minutes (nothing in the configuration forbids
// it) serves an old containerd a cold image that needs a rule, through
// each of three replicas. A replica that does not own the variant asks its
// owner with the client's wait; the owner must not answer the client a 400
// about a wait the client never chose.
func TestReplicaVariantWithAPatientDeadline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, patient: 15 * time.Minute})
	reps := startReplicas(t, h, 3, nil)
	// Eight images, each pulled through replica 0 first: the others own
	// some variants (all but one in 3^8 runs), which replica 0 asks them
	// to make; a variant made is read from the cache, not asked for.
	for n := range 8 {
		tag := fmt.Sprint("v", n)
		img := h.push(t, "library/old", tag, legacy, randomLayer(t, 1<<10))
		for i, r := range reps {
			dgst, err := pullImage(r.url, "library/old", tag, "containerd/1.6.8")
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				continue
			}
			if dgst == img.ManifestDigest {
				t.Errorf("replica %d served the original, want its variant", i)
			}
		}
	}
	var asked float64
	for _, r := range reps {
		asked += r.metric(t, "regnorm_replica_asks_total", `kind="variant"`)
	}
	if asked == 0 {
		t.Fatal("no replica asked a variant's owner: the test tested nothing")
	}
}

// TestReplicaBlobOfAnotherRepository: a blob that only repository a
// holds upstream, cached by a pull of a through every replica, is asked
// for as repository b's through every replica. Every replica asks the
// upstream as b's client (or has the blob's owner ask it), and every one
// answers b's client 404: the owner's cache is not a way around
// admission.
func TestReplicaBlobOfAnotherRepository(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/a", "v1", regtest.ImageOptions{}, randomLayer(t, 1<<20))
	h.push(t, "library/b", "v1", regtest.ImageOptions{}, randomLayer(t, 1<<10))
	reps := startReplicas(t, h, 3, nil)
	layer := digest.FromBytes(img.Layers[0])
	ask := func(i int, r *replica) {
		resp, err := boundedClient.Get(r.url + "/v2/library/b/blobs/" + layer.String())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("replica %d: b's client got %d %.100q, want 404", i, resp.StatusCode, body)
		}
	}
	// Cold: nobody holds it yet.
	for i, r := range reps {
		ask(i, r)
	}
	for i, r := range reps {
		if _, err := pullImage(r.url, "library/a", "v1", "containerd/2.3.4"); err != nil {
			t.Fatalf("replica %d: pull a: %v", i, err)
		}
	}
	// Warm: in the shared cache, and known in a.
	for i, r := range reps {
		ask(i, r)
	}
}

// TestReplicaInternalListenerRefusesAltered: a neighbour who captured a
// replica's signed request sends it again with its meaning changed: the
// repository repeated or replaced, the upstream changed, the query
// reordered, the path changed, or the method. Each is refused 401 without
// a signed answer; the request as captured is answered by the replica it
// was sent to (a replay within the skew is, by design: it asks for the
// same work), and refused by another.
func TestReplicaInternalListenerRefusesAltered(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 1<<10))
	var captured atomic.Pointer[http.Request]
	reps := startReplicas(t, h, 2, func(i int, internal string) string {
		u, _ := url.Parse(internal)
		rp := httputil.NewSingleHostReverseProxy(u)
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "manifest") {
				captured.CompareAndSwap(nil, r.Clone(r.Context()))
			}
			rp.ServeHTTP(w, r)
		}))
		t.Cleanup(front.Close)
		return front.URL
	})
	// Sixteen tags, each pulled through one replica: the other owns some
	// (all but one in 2^16 runs).
	for i := range 16 {
		tag := fmt.Sprint("t", i)
		if err := h.reg.Client().PushImage(context.Background(), "library/app", tag, img); err != nil {
			t.Fatal(err)
		}
		if _, err := pullImage(reps[i%2].url, "library/app", tag, "containerd/2.3.4"); err != nil {
			t.Fatal(err)
		}
	}
	c := captured.Load()
	if c == nil {
		t.Fatal("no manifest ask was captured: the test tested nothing")
	}
	var target string
	replayed := 0 // the replicas that answered the captured request again
	for _, r := range reps {
		target = r.internal.URL // the owner is whichever answers; both refuse alike
		send := func(method, uri string) int {
			req, _ := http.NewRequest(method, target+uri, nil)
			req.Header.Set("Authorization", c.Header.Get("Authorization"))
			resp, err := boundedClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("Regnorm-Replica-Mac") != "" {
				t.Errorf("%s %s: a refusal was signed", method, uri)
			}
			return resp.StatusCode
		}
		uri := c.URL.RequestURI()
		if got := send(http.MethodGet, uri); got == http.StatusOK {
			replayed++
		}
		q := c.URL.Query()
		path := c.URL.Path
		altered := []string{
			path + "?" + c.URL.RawQuery + "&repo=library%2Fother",
			path + "?repo=library%2Fother&" + c.URL.RawQuery,
			path + "?" + strings.Replace(c.URL.RawQuery, "upstream=docker.io", "upstream=quay.io", 1),
			path + "?" + strings.Replace(c.URL.RawQuery, "library%2Fapp", "library/app", 1),
			path + "?" + strings.Replace(c.URL.RawQuery, "library%2Fapp", "library%2fapp", 1),
			path + "?" + url.Values{"upstream": q["upstream"], "repo": q["repo"], "ref": q["ref"], "accept": q["accept"]}.Encode() + "&",
			path + "/?" + c.URL.RawQuery,
			strings.Replace(path, "manifest", "blob", 1) + "?" + c.URL.RawQuery,
		}
		for _, a := range altered {
			if a == uri {
				continue
			}
			if got := send(http.MethodGet, a); got != http.StatusUnauthorized && got != http.StatusNotFound && got != http.StatusMovedPermanently {
				t.Errorf("GET %s: %d, want 401", a, got)
			}
		}
		if got := send(http.MethodPost, uri); got == http.StatusOK {
			t.Errorf("POST of the captured GET: %d", got)
		}
	}
	// A request is signed for the replica it was sent to: the one replays
	// it answers, the other refuses.
	if replayed != 1 {
		t.Errorf("%d replicas answered the captured request again, want 1 (its owner)", replayed)
	}
}
