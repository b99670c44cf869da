//go:build e2e

package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestReplicasShareAnS3Cache: two regnorm processes on one bucket of a real
// S3-compatible server act as one mirror, for containerd 1.6.8 and 2.3.4,
// and attest each variant with the same bytes.
func TestReplicasShareAnS3Cache(t *testing.T) {
	registryURL, registry := startRegistry(t)
	bucket := startS3Bucket(t)
	cacheYAML := bucket.cacheYAML("regnorm")

	img := pushXattrImage(t, registryURL, "library/both", "v1", legacyConfig)
	// Both sign attestations with one key: ECDSA, deterministic.
	keys := t.TempDir()
	writeAttestationKey(t, keys, "regnorm")
	cacheYAML += "attestations:\n  keyFile: " + filepath.Join(keys, "regnorm.key") + "\n"
	a, _ := startRegnorm(t, registryURL, cacheYAML)
	b, _ := startRegnorm(t, registryURL, cacheYAML)

	// Both replicas normalize the same cold image at the same moment, for
	// a node that needs both rules (1.6.8) and one that needs the config
	// rule only (2.3.4): one variant each, the same on both replicas.
	variants := map[string][]string{"containerd/1.6.8": make([]string, 2), "containerd/2.3.4": make([]string, 2)}
	var wg sync.WaitGroup
	for ua, digests := range variants {
		for i, replica := range []string{a, b} {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodHead, replica+"/v2/library/both/manifests/v1", nil)
				req.Header.Set("User-Agent", ua)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("replica %d, %s: %d", i, ua, resp.StatusCode)
				}
				digests[i] = resp.Header.Get("Docker-Content-Digest")
			})
		}
	}
	wg.Wait()
	for ua, d := range variants {
		if d[0] == "" || d[0] != d[1] || d[0] == img.ManifestDigest.String() {
			t.Fatalf("%s: replicas answered %q and %q (original %s)", ua, d[0], d[1], img.ManifestDigest)
		}
	}
	digests, modern := variants["containerd/1.6.8"], variants["containerd/2.3.4"]
	if digests[0] == modern[0] {
		t.Fatalf("1.6.8 and 2.3.4 got the same variant %s", digests[0])
	}

	// A node pulls through replica A and runs the image.
	nodeA := startContainerdBin(t, oldContainerdBin, a)
	if _, err := nodeA.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("pull through replica A: %v", err)
	}
	if got := nodeA.run(t, "docker.io/library/both:v1"); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q", got)
	}

	// With the upstream gone, another node pulls through replica B: every
	// answer comes from the shared cache, with the same digests.
	registry.stop()
	upstreamBefore := metric(t, b, "regnorm_upstream_requests_total")
	nodeB := startContainerdBin(t, oldContainerdBin, b)
	if _, err := nodeB.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("pull through replica B from the shared cache: %v", err)
	}
	if got := nodeB.repoDigest(t, "docker.io/library/both:v1"); got != digests[0] {
		t.Fatalf("replica B served %s, replica A %s", got, digests[0])
	}
	// A containerd 2.3.4 node (transfer service) too.
	node2 := startContainerdVersion(t, containerd234, containerdOptions{Mirror: b})
	if _, err := node2.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("containerd 2.3.4 through replica B from the shared cache: %v", err)
	}
	if got := node2.repoDigest(t, "docker.io/library/both:v1"); got != modern[0] {
		t.Fatalf("replica B served %s to containerd 2.3.4, both replicas made %s for it", got, modern[0])
	}
	if got := node2.run(t, "docker.io/library/both:v1"); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q on containerd 2.3.4", got)
	}
	if n := metric(t, b, "regnorm_upstream_requests_total") - upstreamBefore; n != 0 {
		t.Fatalf("replica B sent %v requests upstream", n)
	}

	// The bucket is consistent: no temporary object left, and every blob
	// is whole and named by its digest.
	blobs, uploads := cacheVerifies(t, bucket.dir("regnorm"))
	if uploads != 0 {
		t.Errorf("%d temporary objects left in the bucket", uploads)
	}
	// Original config and two layers, the repackaged layer and new config,
	// and each variant's attestation (its config, envelope, and the bundle
	// of the same envelope): both replicas attested each variant, signed,
	// and wrote the same bytes.
	if blobs != 11 {
		t.Fatalf("%d blobs in the bucket, want 11", blobs)
	}
}

// s3Bucket is a bucket of a real S3-compatible server (versitygw) that
// several caches can share, each under its own root directory.
type s3Bucket struct {
	s3   *regtest.S3Server
	data string // the server's data directory
	keys string // holds the access and secret key files
}

func startS3Bucket(t *testing.T) *s3Bucket {
	t.Helper()
	b := &s3Bucket{data: t.TempDir(), keys: t.TempDir()}
	s3, err := regtest.StartS3(versitygwBin, b.data)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3.Close)
	b.s3 = s3
	for name, v := range map[string]string{"access": s3.AccessKey, "secret": s3.SecretKey} {
		if err := os.WriteFile(filepath.Join(b.keys, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// cacheYAML is the cache section of a regnorm config on the bucket, under
// root.
func (b *s3Bucket) cacheYAML(root string) string {
	return fmt.Sprintf(`cache:
  driver: s3
  s3:
    bucket: %s
    region: %s
    endpoint: %s
    forcePathStyle: true
    rootDirectory: /%s
    accessKeyFile: %s
    secretKeyFile: %s
`, b.s3.Bucket, b.s3.Region, b.s3.Endpoint, root, filepath.Join(b.keys, "access"), filepath.Join(b.keys, "secret"))
}

// dir is where the objects under root are on disk (versitygw's posix
// backend keeps an object as a file of its key).
func (b *s3Bucket) dir(root string) string {
	return filepath.Join(b.data, b.s3.Bucket, root)
}

// replica is one regnorm process of a group that shares a cache.
type replica struct {
	url      string // what clients pull from
	internal string // what the other replicas ask it on
	proc     *process
}

// startReplicas starts one regnorm per docker.io upstream URL in upstreams,
// all on cacheYAML, each the owner of its share of the downloads (the
// replicas section, with one shared secret). A single replica gets no
// replicas section: a deployment of one.
func startReplicas(t *testing.T, upstreams []string, cacheYAML string) []replica {
	t.Helper()
	rs := make([]replica, len(upstreams))
	if len(upstreams) == 1 {
		rs[0].url, rs[0].proc = startRegnorm(t, upstreams[0], cacheYAML)
		return rs
	}
	secret := filepath.Join(t.TempDir(), "replicas-secret")
	if err := os.WriteFile(secret, []byte(hex.EncodeToString(regtest.RandomBytes(32))), 0o600); err != nil {
		t.Fatal(err)
	}
	var peers strings.Builder
	for i := range rs {
		rs[i].internal = "http://" + freeAddr(t)
		fmt.Fprintf(&peers, "  - %s\n", rs[i].internal)
	}
	for i, upstream := range upstreams {
		section := fmt.Sprintf("replicas:\n  listen: %s\n  self: %s\n  peers:\n%s  secretFile: %s\n",
			strings.TrimPrefix(rs[i].internal, "http://"), rs[i].internal, peers.String(), secret)
		rs[i].url, rs[i].proc = startRegnorm(t, upstream, cacheYAML+section)
	}
	return rs
}

// modernContainerd needs no rule for an OCI image with right diff IDs: it
// is served the upstream's bytes under the upstream's digest.
const modernContainerd = "containerd/2.3.4"

// pushColdImage pushes an OCI image (OCI config, gzip layers) of n layers
// of size random bytes each, tagged v1: nothing of it is cached anywhere.
func pushColdImage(t *testing.T, registryURL, repo string, n, size int) regtest.Image {
	t.Helper()
	layers := make([][]regtest.File, n)
	for i := range layers {
		layers[i] = []regtest.File{{Name: fmt.Sprintf("data%d", i), Content: regtest.RandomBytes(size), Mode: 0o644}}
	}
	img, err := regtest.BuildImage(regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip}, layers...)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), repo, "v1", img); err != nil {
		t.Fatal(err)
	}
	return img
}

// blobDigestsOf is the digests of img's config and layers.
func blobDigestsOf(img regtest.Image) []digest.Digest {
	var ds []digest.Digest
	for _, b := range append([][]byte{img.Config}, img.Layers...) {
		ds = append(ds, digest.FromBytes(b))
	}
	return ds
}

// mirrorPull pulls repo:tag with the requests containerd makes (HEAD the
// manifest by tag, GET it by the digest that answered, GET the config, GET
// the layers three at a time), with userAgent, every body checked against
// its digest. Each request goes to hosts in turn, as containerd goes down
// a registry's mirror list: a request that fails on one (refused, cut
// off, an error status) is sent again to the next; a body with the wrong
// content fails the pull at once. It returns the manifest digest it got
// and how many requests it sent again.
func mirrorPull(ctx context.Context, userAgent string, hosts []string, repo, tag string) (digest.Digest, int64, error) {
	var retries atomic.Int64
	try := func(what string, do func(base string) error) error {
		var errs []error
		for i, base := range hosts {
			if i > 0 {
				retries.Add(1)
			}
			err := do(base)
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s via %s: %w", what, base, err))
			if errors.Is(err, errWrongContent) {
				break
			}
		}
		return errors.Join(errs...)
	}
	getVerified := func(what, path string, want digest.Digest) ([]byte, error) {
		var body []byte
		err := try(what, func(base string) error {
			var err error
			body, err = getAs(ctx, userAgent, base+path, want, &pullResult{})
			return err
		})
		return body, err
	}

	var dgst digest.Digest
	err := try("HEAD "+repo+":"+tag, func(base string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, base+"/v2/"+repo+"/manifests/"+tag, nil)
		req.Header.Set("Accept", acceptAll)
		req.Header.Set("User-Agent", userAgent)
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		dgst, err = digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		return err
	})
	if err != nil {
		return "", retries.Load(), err
	}
	body, err := getVerified("manifest", "/v2/"+repo+"/manifests/"+dgst.String(), dgst)
	if err != nil {
		return dgst, retries.Load(), err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return dgst, retries.Load(), fmt.Errorf("manifest %s: %w", dgst, err)
	}
	if _, err := getVerified("config", "/v2/"+repo+"/blobs/"+m.Config.Digest.String(), m.Config.Digest); err != nil {
		return dgst, retries.Load(), err
	}
	var g errgroup.Group
	g.SetLimit(3)
	for _, l := range m.Layers {
		g.Go(func() error {
			_, err := getVerified("layer", "/v2/"+repo+"/blobs/"+l.Digest.String(), l.Digest)
			return err
		})
	}
	err = g.Wait()
	return dgst, retries.Load(), err
}

// byPath sums the relay's requests of method by path, whatever listener
// they came in on and whether they asked for a range.
func byPath(reqs map[relayed]int, method string) map[string]int {
	out := map[string]int{}
	for r, n := range reqs {
		if r.method == method {
			out[r.path] += n
		}
	}
	return out
}

// checkOneGETEach fails the test unless the upstream saw exactly one GET
// of each blob of img in repo, of no other blob, and exactly one manifest
// GET: by the tag. (A replica that fetches the tag caches the manifest
// under its digest, so the GET by digest that follows is answered from the
// shared cache.)
func checkOneGETEach(t *testing.T, rl *relay, repo string, img regtest.Image) {
	t.Helper()
	gets := byPath(rl.requests(), http.MethodGet)
	want := map[string]bool{}
	for _, d := range blobDigestsOf(img) {
		want["/v2/"+repo+"/blobs/"+d.String()] = true
	}
	manifestGETs := map[string]int{}
	for path, n := range gets {
		switch {
		case strings.Contains(path, "/manifests/"):
			manifestGETs[path] = n
		case want[path] && n != 1:
			t.Errorf("upstream saw %d GETs of %s, want 1", n, path)
		case !want[path]:
			t.Errorf("upstream saw %d GETs of %s, no blob of the image", n, path)
		}
	}
	for path := range want {
		if gets[path] == 0 {
			t.Errorf("upstream never saw a GET of %s", path)
		}
	}
	if tag := "/v2/" + repo + "/manifests/v1"; len(manifestGETs) != 1 || manifestGETs[tag] != 1 {
		t.Errorf("upstream saw manifest GETs %v, want one, of %s", manifestGETs, tag)
	}
}

// replicaMetrics sums a replica metric over scrapes, by label selector.
func replicaMetrics(t *testing.T, scrapes []string, name string, want ...string) float64 {
	t.Helper()
	total := 0.0
	for _, s := range scrapes {
		total += metricIn(t, s, name, want...)
	}
	return total
}

// logReplicaMetrics logs each replica's asks by kind and outcome, and what
// it served as an owner.
func logReplicaMetrics(t *testing.T, names []string, scrapes []string) {
	t.Helper()
	for i, s := range scrapes {
		var line strings.Builder
		for _, kind := range []string{"blob", "manifest", "variant"} {
			fmt.Fprintf(&line, " %s:", kind)
			for _, outcome := range []string{"ok", "answer", "fallback"} {
				fmt.Fprintf(&line, " %s=%v", outcome, metricIn(t, s, "regnorm_replica_asks_total", `kind="`+kind+`"`, `outcome="`+outcome+`"`))
			}
			fmt.Fprintf(&line, " served=%v;", metricIn(t, s, "regnorm_replica_served_total", `kind="`+kind+`"`))
		}
		t.Logf("%s asked%s", names[i], line.String())
	}
}

// TestThreeReplicasOneUpstreamFetch: three regnorm processes on one bucket
// of a real S3-compatible server, forty clients spread evenly over them
// pulling one cold image at the same moment: the upstream sees one GET per
// blob and one manifest GET, every client gets every byte right, and the
// replicas that do not own a download ask its owner for it.
func TestThreeReplicasOneUpstreamFetch(t *testing.T) {
	registryURL, _ := startRegistry(t)
	// 50 MB/s and 5 ms a request: each download lasts while the clients
	// of the other replicas arrive.
	rl := newRelay(registryURL, 50e6, 5*time.Millisecond)
	upstream := serveLocal(t, rl)
	bucket := startS3Bucket(t)
	const repo = "library/cold"
	img := pushColdImage(t, registryURL, repo, 5, 3<<20)
	replicas := startReplicas(t, []string{upstream, upstream, upstream}, bucket.cacheYAML("regnorm"))

	const clients = 40
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type outcome struct {
		dgst    digest.Digest
		retries int64
		err     error
	}
	got := make([]outcome, clients)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			<-release
			var o outcome
			o.dgst, o.retries, o.err = mirrorPull(ctx, modernContainerd, []string{replicas[i%3].url}, repo, "v1")
			got[i] = o
		})
	}
	close(release)
	wg.Wait()
	for i, o := range got {
		switch {
		case o.err != nil:
			t.Errorf("client %d (replica %d): %v", i, i%3, o.err)
		case o.dgst != img.ManifestDigest:
			t.Errorf("client %d (replica %d) got manifest %s, want the original %s", i, i%3, o.dgst, img.ManifestDigest)
		}
	}

	checkOneGETEach(t, rl, repo, img)
	t.Logf("upstream HEADs by path (admission, not counted by upstreams' budgets): %v", byPath(rl.requests(), http.MethodHead))
	scrapes := make([]string, len(replicas))
	for i, r := range replicas {
		scrapes[i] = scrape(t, r.url)
	}
	logReplicaMetrics(t, []string{"replica 0", "replica 1", "replica 2"}, scrapes)
	if n := replicaMetrics(t, scrapes, "regnorm_replica_asks_total", `outcome="ok"`); n < 1 {
		t.Errorf("no replica asked an owner: asks with outcome ok sum to %v", n)
	}
	if n := replicaMetrics(t, scrapes, "regnorm_replica_asks_total", `outcome="fallback"`); n != 0 {
		t.Errorf("%v asks fell back to the upstream, with every replica up", n)
	}

	blobs, uploads := cacheVerifies(t, bucket.dir("regnorm"))
	if uploads != 0 {
		t.Errorf("%d temporary objects left in the bucket", uploads)
	}
	if want := len(img.Layers) + 1; blobs != want {
		t.Errorf("%d blobs in the bucket, want %d (the config and the layers)", blobs, want)
	}
}

// TestThreeReplicasOwnerKilled: three replicas on one bucket pull a cold
// image over a slow upstream link for clients spread over them; the
// replica that is downloading a layer is killed (SIGKILL) midway. Its
// clients finish through another replica, as containerd would down its
// mirror list; the clients of the others finish without a retry, their
// replicas fetching from the upstream what the dead owner left undone; and
// every client gets every byte right.
func TestThreeReplicasOwnerKilled(t *testing.T) {
	registryURL, _ := startRegistry(t)
	// 8 MB/s for 16 MiB of layers: the download lasts seconds. One
	// upstream URL for all (an upstream configured otherwise on one
	// replica is not shared); whose a download is, the kernel says.
	rl := newRelay(registryURL, 8e6, 5*time.Millisecond)
	upstream := serveLocal(t, rl)
	bucket := startS3Bucket(t)
	const repo = "library/killed"
	img := pushColdImage(t, registryURL, repo, 4, 4<<20)
	replicas := startReplicas(t, []string{upstream, upstream, upstream}, bucket.cacheYAML("regnorm"))
	pids := []int{replicas[0].proc.cmd.Process.Pid, replicas[1].proc.cmd.Process.Pid, replicas[2].proc.cmd.Process.Pid}
	urls := []string{replicas[0].url, replicas[1].url, replicas[2].url}

	const clients = 15
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type outcome struct {
		retries int64
		err     error
	}
	got := make([]outcome, clients)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		// Its replica first, then the others.
		hosts := append(slices.Clone(urls[i%3:]), urls[:i%3]...)
		wg.Go(func() {
			<-release
			var o outcome
			var dgst digest.Digest
			dgst, o.retries, o.err = mirrorPull(ctx, modernContainerd, hosts, repo, "v1")
			if o.err == nil && dgst != img.ManifestDigest {
				o.err = fmt.Errorf("got manifest %s, want the original %s", dgst, img.ManifestDigest)
			}
			got[i] = o
		})
	}
	close(release)

	// The victim is a replica a layer is coming down to from the upstream,
	// once 1 MiB of it has: the owner of that layer, with clients of every
	// replica waiting on it.
	var midway inFlight
	victim := -1
	for deadline := time.Now().Add(time.Minute); victim < 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no layer download from the upstream reached 1 MiB; the relay passed on %v", rl.requests())
		}
		for _, f := range rl.inFlight() {
			if f.method == http.MethodGet && strings.Contains(f.path, "/blobs/") && f.bytes >= 1<<20 {
				if i, err := connOwner(f.remote, pids); err == nil {
					midway, victim = f, i
					break
				}
			}
		}
	}
	replicas[victim].proc.cmd.Process.Kill() // SIGKILL, by PID
	<-replicas[victim].proc.done
	t.Logf("killed replica %d while it downloaded %s", victim, midway.path)
	wg.Wait()

	var victimRetries int64
	for i, o := range got {
		if o.err != nil {
			t.Errorf("client %d (replica %d, %d requests sent again): %v", i, i%3, o.retries, o.err)
		}
		switch {
		case i%3 == victim:
			victimRetries += o.retries
		case o.retries != 0:
			t.Errorf("client %d of replica %d, which stayed up, sent %d requests again", i, i%3, o.retries)
		}
	}
	t.Logf("the killed replica's clients sent %d requests again to another replica", victimRetries)
	if victimRetries == 0 {
		t.Errorf("no client of the killed replica had to go elsewhere: the kill landed after its clients were done")
	}

	var names, scrapes []string
	for i, r := range replicas {
		if i != victim {
			names = append(names, fmt.Sprintf("replica %d", i))
			scrapes = append(scrapes, scrape(t, r.url))
		}
	}
	logReplicaMetrics(t, names, scrapes)
	if n := replicaMetrics(t, scrapes, "regnorm_replica_asks_total", `outcome="ok"`); n < 1 {
		t.Errorf("the replicas that stayed up never had an owner's answer: they shared nothing")
	}
	if n := replicaMetrics(t, scrapes, "regnorm_replica_asks_total", `outcome="fallback"`); n < 1 {
		t.Errorf("the replicas that stayed up never fell back to the upstream (asks with outcome fallback: %v), though the owner of %s died midway", n, midway.path)
	}
	reqs := rl.requests()
	var fetched []string
	for r, n := range reqs {
		if r.method == http.MethodGet {
			fetched = append(fetched, fmt.Sprintf("%s (range %v) ×%d", r.path, r.ranged, n))
		}
	}
	slices.Sort(fetched)
	t.Logf("upstream GETs:\n%s", strings.Join(fetched, "\n"))

	blobs, uploads := cacheVerifies(t, bucket.dir("regnorm"))
	if uploads != 0 {
		t.Errorf("%d temporary objects left in the bucket", uploads)
	}
	if want := len(img.Layers) + 1; blobs != want {
		t.Errorf("%d blobs in the bucket, want %d (the config and the layers)", blobs, want)
	}
}

// connOwner is which of pids holds the TCP connection whose far end, as a
// server on this machine saw it, is remote: the socket is found in
// /proc/net/tcp by its port, then among each process's descriptors (the
// e2e tests run as root).
func connOwner(remote string, pids []int) (int, error) {
	_, port, err := net.SplitHostPort(remote)
	if err != nil {
		return -1, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return -1, err
	}
	local := fmt.Sprintf(":%04X", p)
	inode := ""
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			return -1, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 9 && strings.HasSuffix(f[1], local) && f[9] != "0" {
				inode = f[9]
			}
		}
	}
	if inode == "" {
		return -1, fmt.Errorf("no socket of local port %d", p)
	}
	for i, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); link == "socket:["+inode+"]" {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("the socket of local port %d is none of %v's", p, pids)
}
