package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// testReplicaSecret is the secret the replicas of a test share.
const testReplicaSecret = "a secret the replicas of this test share"

// replica is one of several servers on one cache that share its work.
type replica struct {
	url      string           // the clients' listener
	internal *httptest.Server // the replicas' listener
	built    built
	asked    atomic.Int32 // requests other replicas sent its listener
}

func (r *replica) metric(t testing.TB, name, labels string) float64 {
	t.Helper()
	return metricAt(t, r.url, name, labels)
}

// startReplicas starts n replicas of h's upstream on h's cache. peerURL,
// when not nil, is the URL the others are given for replica i's listener
// (a front between replicas).
func startReplicas(t *testing.T, h *harness, n int, peerURL func(i int, internal string) string) []*replica {
	t.Helper()
	return startReplicasWith(t, h, n, peerURL, nil)
}

// startReplicasWith is startReplicas, with replica i's parts changed by
// tweak.
func startReplicasWith(t *testing.T, h *harness, n int, peerURL func(i int, internal string) string, tweak func(i int, p *serverParts)) []*replica {
	t.Helper()
	internals := make([]*httptest.Server, n)
	peers := make([]string, n)
	for i := range internals {
		internals[i] = httptest.NewUnstartedServer(nil)
		peers[i] = "http://" + internals[i].Listener.Addr().String()
		if peerURL != nil {
			peers[i] = peerURL(i, peers[i])
		}
	}
	u, _ := url.Parse(h.front.URL)
	out := make([]*replica, n)
	for i := range n {
		reg := prometheus.NewRegistry()
		parts := serverParts{harnessOptions: h.opts, store: h.store, upstreams: []upstream.Config{{Name: "docker.io", URL: u}},
			spoolDir: t.TempDir(), reg: reg, replicas: &replicas.Options{Self: peers[i], Peers: peers, Secret: []byte(testReplicaSecret)}}
		if tweak != nil {
			tweak(i, &parts)
		}
		b := buildServer(t, parts)
		out[i] = &replica{internal: internals[i], built: b}
		handler := b.srv.ReplicaHandler(b.replicas)
		internals[i].Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			out[i].asked.Add(1)
			handler.ServeHTTP(w, r)
		})
		internals[i].Start()
		t.Cleanup(internals[i].Close)
		ps := httptest.NewServer(b.srv.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
		t.Cleanup(ps.Close)
		t.Cleanup(func() { waitFor(t, "downloads to end", func() bool { return downloadsIdle(t, reg) }) })
		out[i].url = ps.URL
	}
	return out
}

// countRequests makes h's upstream count what it is asked, by method and
// path (and Range, when there is one).
func countRequests(h *harness) func() map[string]int {
	var mu sync.Mutex
	seen := map[string]int{}
	h.front.mu.Lock()
	h.front.fault = func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.Path
		if rg := r.Header.Get("Range"); rg != "" {
			key += " " + rg
		}
		mu.Lock()
		seen[key]++
		mu.Unlock()
		h.front.relay(w, r)
	}
	h.front.mu.Unlock()
	return func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range seen {
			out[k] = v
		}
		return out
	}
}

func randomLayer(t *testing.T, size int) []regtest.File {
	t.Helper()
	content := make([]byte, size)
	rand.Read(content)
	return []regtest.File{{Name: "data", Content: content}}
}

// pullImage pulls repo:tag through base as containerd does (the manifest
// by tag, then its config and layers), checks every byte against its
// digest, and returns the manifest's digest.
func pullImage(base, repo, tag, userAgent string) (digest.Digest, error) {
	get := func(path string, accept http.Header) ([]byte, http.Header, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+path, nil)
		for k, v := range accept {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", userAgent)
		resp, err := boundedClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("GET %s: %d %s %v", path, resp.StatusCode, body, err)
		}
		return body, resp.Header, nil
	}
	m, h, err := get("/manifests/"+tag, containerdAccept)
	if err != nil {
		return "", err
	}
	dgst := digest.FromBytes(m)
	if h.Get("Docker-Content-Digest") != dgst.String() {
		return "", fmt.Errorf("manifest digest %s, header %s", dgst, h.Get("Docker-Content-Digest"))
	}
	var doc struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(m, &doc); err != nil {
		return "", err
	}
	blobs := []digest.Digest{doc.Config.Digest}
	for _, l := range doc.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, b := range blobs {
		body, _, err := get("/blobs/"+b.String(), nil)
		if err != nil {
			return "", err
		}
		if got := digest.FromBytes(body); got != b {
			return "", fmt.Errorf("blob %s came as %s (%d bytes)", b, got, len(body))
		}
	}
	return dgst, nil
}

// TestReplicasFetchOnce: clients of three replicas on one cache pull a
// cold image at once. The upstream is asked once for the tag and once for
// each blob, whichever replica the clients asked, and every client gets
// every byte right: the replicas that do not own a blob or the tag relay
// its owner's answer.
func TestReplicasFetchOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 3<<20), randomLayer(t, 2<<20), randomLayer(t, 1<<20))
	seen := countRequests(h)
	reps := startReplicas(t, h, 3, nil)

	const clients = 24
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			dgst, err := pullImage(reps[i%3].url, "library/app", "v1", "containerd/2.3.4")
			if err == nil && dgst != img.ManifestDigest {
				err = fmt.Errorf("got manifest %s, want the original %s", dgst, img.ManifestDigest)
			}
			if err != nil {
				errs <- fmt.Errorf("client %d on replica %d: %w", i, i%3, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	got := seen()
	want := map[string]int{"GET /v2/library/app/manifests/v1": 1}
	want["GET /v2/library/app/blobs/"+digest.FromBytes(img.Config).String()] = 1
	for _, l := range img.Layers {
		want["GET /v2/library/app/blobs/"+digest.FromBytes(l).String()] = 1
	}
	for k, n := range got {
		if want[k] != n {
			t.Errorf("upstream saw %q %d times, want %d", k, n, want[k])
		}
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("upstream saw %q %d times, want %d", k, got[k], n)
		}
	}
	var asked, served float64
	for _, r := range reps {
		asked += r.metric(t, "regnorm_replica_asks_total", `outcome="ok"`)
		served += r.metric(t, "regnorm_replica_served_total", `result="ok"`)
		if n := r.metric(t, "regnorm_replica_asks_total", `outcome="fallback"`); n != 0 {
			t.Errorf("a replica did %v owners' work itself", n)
		}
	}
	if asked == 0 || asked != served {
		t.Errorf("replicas asked owners %v times, owners served %v", asked, served)
	}
}

// TestReplicaOwnerGoneMidBlob: the owner of a blob stops answering in the
// middle of sending it to another replica. That replica goes on from the
// upstream where the owner stopped (a range request), and its client gets
// the whole blob, right.
func TestReplicaOwnerGoneMidBlob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 6<<20))
	layer := img.Layers[0]
	dgst := digest.FromBytes(layer)
	path := "/v2/library/app/blobs/" + dgst.String()

	// The upstream sends the first full GET of the layer by halves: the
	// second once released. Range requests go through.
	blocked, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	var ranges atomic.Int32
	h.front.mu.Lock()
	h.front.fault = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || r.Method != http.MethodGet {
			h.front.relay(w, r)
			return
		}
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
			h.front.relay(w, r)
			return
		}
		if !first.CompareAndSwap(false, true) {
			t.Errorf("the upstream was asked for the whole layer twice")
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(layer)))
		w.Write(layer[:len(layer)/2])
		w.(http.Flusher).Flush()
		close(blocked)
		<-release
		w.Write(layer[len(layer)/2:])
	}
	h.front.mu.Unlock()
	reps := startReplicas(t, h, 2, nil)

	pull := func(r *replica) chan error {
		done := make(chan error, 1)
		go func() {
			resp, err := boundedClient.Get(r.url + path)
			if err != nil {
				done <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil && digest.FromBytes(body) != dgst {
				err = fmt.Errorf("%d: got %d bytes that are not the layer", resp.StatusCode, len(body))
			}
			done <- err
		}()
		return done
	}
	asks := func(r *replica, outcome string) float64 {
		return r.metric(t, "regnorm_replica_asks_total", `kind="blob",outcome="`+outcome+`"`)
	}
	first0 := pull(reps[0])
	<-blocked
	asker, owner, askerDone := reps[0], reps[1], first0
	ownerDone := (chan error)(nil)
	// An asker's request reaches the owner before the owner asks the
	// upstream: with none, replica 0 is the owner.
	if reps[1].asked.Load() == 0 {
		// Replica 0 owns the layer: replica 1 asks it.
		asker, owner, ownerDone = reps[1], reps[0], first0
		askerDone = pull(reps[1])
	}
	waitFor(t, "the asker to get the owner's answer", func() bool { return asks(asker, "ok") == 1 })
	// The asker is relaying the owner's half; the owner goes away.
	owner.internal.CloseClientConnections()
	owner.internal.Close()
	if err := <-askerDone; err != nil {
		t.Fatalf("the asker's client: %v", err)
	}
	close(release)
	if ownerDone != nil {
		if err := <-ownerDone; err != nil {
			t.Fatalf("the owner's client: %v", err)
		}
	}
	if got := asks(asker, "fallback"); got != 1 {
		t.Errorf("fallbacks = %v, want 1", got)
	}
	if ranges.Load() != 1 {
		t.Errorf("the asker made %d range requests upstream, want 1", ranges.Load())
	}
}

// TestReplicasMakeAVariantOnce: old clients of three replicas ask for a
// cold image that needs a rule at once: one replica makes the variant,
// and every client gets the same one.
func TestReplicasMakeAVariantOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/old", "v1", legacy, randomLayer(t, 1<<20))
	reps := startReplicas(t, h, 3, nil)
	var wg sync.WaitGroup
	got := make([]digest.Digest, 9)
	for i := range got {
		wg.Go(func() {
			dgst, err := pullImage(reps[i%3].url, "library/old", "v1", "containerd/1.6.8")
			if err != nil {
				t.Errorf("client %d: %v", i, err)
			}
			got[i] = dgst
		})
	}
	wg.Wait()
	for _, d := range got {
		if d != got[0] || d == img.ManifestDigest {
			t.Fatalf("clients got %v; original %s", got, img.ManifestDigest)
		}
	}
	made := 0.0
	for _, r := range reps {
		made += r.metric(t, "regnorm_normalizations_total", `result="normalized"`)
	}
	if made != 1 {
		t.Errorf("the replicas made the variant %v times, want 1", made)
	}
}

// TestReplicaAnswersAreChecked: a front between the replicas that
// changes an owner's answers, and one that asks an owner without the
// secret. A changed answer is refused (the asker does the work itself and
// its client gets the right bytes); a request without the secret is
// refused.
func TestReplicaAnswersAreChecked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 1<<10))
	var tampered atomic.Int32
	reps := startReplicas(t, h, 2, func(i int, internal string) string {
		u, _ := url.Parse(internal)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ModifyResponse = func(resp *http.Response) error {
			if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Request.URL.Path, "manifest") {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			body = bytes.Replace(body, []byte(`"schemaVersion": 2`), []byte(`"schemaVersion":  2`), 1)
			tampered.Add(1)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
			resp.Header.Set("Docker-Content-Digest", digest.FromBytes(body).String())
			return nil
		}
		front := httptest.NewServer(rp)
		t.Cleanup(front.Close)
		return front.URL
	})
	// Sixteen tags, each pulled through replica 0 first: replica 1 owns
	// some (all but one in 2^16 runs), which replica 0 then asks it for.
	for i := range 16 {
		tag := fmt.Sprint("t", i)
		if err := h.reg.Client().PushImage(context.Background(), "library/app", tag, img); err != nil {
			t.Fatal(err)
		}
		for _, r := range reps {
			dgst, err := pullImage(r.url, "library/app", tag, "containerd/2.3.4")
			if err != nil || dgst != img.ManifestDigest {
				t.Fatalf("pull: %s, %v; want %s", dgst, err, img.ManifestDigest)
			}
		}
	}
	if tampered.Load() == 0 {
		t.Fatal("no answer went through the front: the test tested nothing")
	}
	var fallbacks float64
	for _, r := range reps {
		fallbacks += r.metric(t, "regnorm_replica_asks_total", `kind="manifest",outcome="fallback"`)
	}
	if fallbacks == 0 {
		t.Error("a changed answer was taken")
	}

	// Without the secret, an owner answers nothing.
	q := url.Values{"upstream": {"docker.io"}, "repo": {"library/app"}, "ref": {"v1"}}
	for _, auth := range []string{"", "RegnormReplica " + fmt.Sprint(time.Now().Unix()) + ":00", "Bearer x"} {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, reps[0].internal.URL+replicas.ManifestPath+"?"+q.Encode(), nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := boundedClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || bytes.Contains(body, []byte("schemaVersion")) {
			t.Errorf("Authorization %q: %d %s, want 401", auth, resp.StatusCode, body)
		}
	}
}

// TestReplicasConfiguredOtherwiseDoNotShare: two replicas whose upstream
// is configured otherwise (another maxBlobSize: what one may download, the
// other may not) answer each other's asks 421, and each does its own
// work: a client is never answered what the other replica's configuration
// allows.
func TestReplicasConfiguredOtherwiseDoNotShare(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 2<<20))
	reps := startReplicasWith(t, h, 2, nil, func(i int, p *serverParts) {
		if i == 1 {
			p.upstreams[0].MaxBlobSize = 1 << 20 // the layer is larger
		}
	})
	layer := "/v2/library/app/blobs/" + digest.FromBytes(img.Layers[0]).String()
	// Replica 1 first: once cached, the layer is any replica's to serve.
	for _, i := range []int{1, 0} {
		resp, err := boundedClient.Get(reps[i].url + layer)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case i == 0 && (resp.StatusCode != http.StatusOK || digest.FromBytes(body) != digest.FromBytes(img.Layers[0])):
			t.Errorf("replica 0: %d, %d bytes; want the layer", resp.StatusCode, len(body))
		case i == 1 && resp.StatusCode == http.StatusOK:
			t.Errorf("replica 1, whose maxBlobSize the layer passes, served it")
		}
	}
	for i := range 16 {
		tag := fmt.Sprint("t", i)
		if err := h.reg.Client().PushImage(context.Background(), "library/app", tag, img); err != nil {
			t.Fatal(err)
		}
		if _, _, err := getManifest(reps[i%2].url, "library/app", tag); err != nil {
			t.Fatal(err)
		}
	}
	var asked, refused float64
	for _, r := range reps {
		asked += r.metric(t, "regnorm_replica_asks_total", `outcome="ok"`)
		refused += r.metric(t, "regnorm_replica_asks_total", `outcome="fallback"`)
	}
	if asked != 0 || refused == 0 {
		t.Errorf("asks answered %v, refused %v: want none answered, some refused", asked, refused)
	}
}

// getManifest GETs repo:ref through base as containerd 2.3.4.
func getManifest(base, repo, ref string) ([]byte, http.Header, error) {
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header = containerdAccept.Clone()
	req.Header.Set("User-Agent", "containerd/2.3.4")
	resp, err := boundedClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%d %s", resp.StatusCode, body)
	}
	return body, resp.Header, err
}

// TestReplicaBlobThatDoesNotVerify: a front between the replicas flips a
// byte of every blob an owner sends. No client ever gets a whole body
// that is not the blob; the owner is passed over, so the client's retry
// is served from the upstream, right.
func TestReplicaBlobThatDoesNotVerify(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	var flipped atomic.Int32
	reps := startReplicas(t, h, 2, func(i int, internal string) string {
		u, _ := url.Parse(internal)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ModifyResponse = func(resp *http.Response) error {
			if resp.StatusCode == http.StatusOK && strings.Contains(resp.Request.URL.Path, "blob") {
				resp.Body = &flipping{ReadCloser: resp.Body}
				flipped.Add(1)
			}
			return nil
		}
		front := httptest.NewServer(rp)
		t.Cleanup(front.Close)
		return front.URL
	})
	// Layers until one is owned by the replica its client does not ask.
	for n := 0; flipped.Load() == 0; n++ {
		if n == 16 {
			t.Fatal("no blob went through the front: the test tested nothing")
		}
		layer := make([]byte, 1<<20)
		rand.Read(layer)
		dgst := h.pushBlob(t, "library/app", layer)
		get := func() (int, []byte, error) { return getBody(reps[0].url + "/v2/library/app/blobs/" + dgst.String()) }
		status, body, err := get()
		if err == nil && status == http.StatusOK && digest.FromBytes(body) != dgst {
			t.Fatalf("a client got a whole body that is not the blob (%d bytes)", len(body))
		}
		if flipped.Load() == 0 {
			continue
		}
		if status, body, err = get(); err != nil || status != http.StatusOK || digest.FromBytes(body) != dgst {
			t.Fatalf("the retry: %d, %d bytes, %v; want the blob", status, len(body), err)
		}
		if got := reps[0].metric(t, "regnorm_replica_asks_total", `kind="blob",outcome="fallback"`); got != 1 {
			t.Errorf("fallbacks = %v, want 1", got)
		}
	}
}

// flipping flips one bit of the first byte it passes.
type flipping struct {
	io.ReadCloser
	done bool
}

func (f *flipping) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if n > 0 && !f.done {
		p[0] ^= 1
		f.done = true
	}
	return n, err
}

// getBody GETs url: its status and whole body.
func getBody(url string) (int, []byte, error) {
	resp, err := boundedClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
