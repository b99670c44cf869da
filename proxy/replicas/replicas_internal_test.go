package replicas

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const secret = "0123456789abcdef0123456789abcdef"

func newSet(t *testing.T, self string, peers []string, c *clock) *Set {
	t.Helper()
	s, err := New(Options{Self: self, Peers: peers, Secret: []byte(secret), Clock: c})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func owner(s *Set, key string) string {
	if p := s.Owner(key); p != nil {
		return p.url
	}
	return s.self
}

// TestEveryReplicaPicksTheSameOwner: replicas that know the same members
// agree on every key's owner, whatever order they were given them in; the
// keys spread over all; and when a member leaves, only its keys move.
func TestEveryReplicaPicksTheSameOwner(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1e9, 0)}
	peers := []string{"http://10.0.0.1:5001", "http://10.0.0.2:5001", "http://10.0.0.3:5001"}
	sets := []*Set{newSet(t, peers[0], peers, c), newSet(t, peers[1], []string{peers[2], peers[1], peers[0]}, c), newSet(t, peers[2], peers, c)}
	spread := map[string]int{}
	for i := range 3000 {
		key := fmt.Sprint("blob docker.io sha256:", i)
		o := owner(sets[0], key)
		for _, s := range sets[1:] {
			if got := owner(s, key); got != o {
				t.Fatalf("%s: replicas disagree: %s and %s", key, o, got)
			}
		}
		spread[o]++
	}
	for _, p := range peers {
		if spread[p] < 800 {
			t.Errorf("%s owns %d of 3000 keys", p, spread[p])
		}
	}
	two := newSet(t, peers[0], peers[:2], c)
	for i := range 3000 {
		key := fmt.Sprint("blob docker.io sha256:", i)
		before, after := owner(sets[0], key), owner(two, key)
		if before != peers[2] && before != after {
			t.Fatalf("%s moved from %s to %s when %s left", key, before, after, peers[2])
		}
	}
}

// TestAFailedOwnerIsPassedOver: an owner that did not answer is passed
// over for downFor, by the next owner every replica would pick, then asked
// again.
func TestAFailedOwnerIsPassedOver(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1e9, 0)}
	peers := []string{"http://10.0.0.1:5001", "http://10.0.0.2:5001", "http://10.0.0.3:5001"}
	s := newSet(t, peers[0], peers, c)
	var key string
	for i := 0; ; i++ {
		if key = fmt.Sprint("k", i); owner(s, key) == peers[1] {
			break
		}
	}
	s.failed(peers[1], fmt.Errorf("refused"))
	next := owner(s, key)
	if next == peers[1] {
		t.Fatal("a failed owner was asked again at once")
	}
	without := newSet(t, peers[0], []string{peers[0], peers[2]}, c)
	if want := owner(without, key); next != want {
		t.Fatalf("passed over to %s, want %s (the owner without it)", next, want)
	}
	c.advance(downFor)
	if got := owner(s, key); got != peers[1] {
		t.Fatalf("after %s the owner is %s, want %s again", downFor, got, peers[1])
	}
}

type resolver struct{ addrs []string }

func (r resolver) LookupHost(context.Context, string) ([]string, error) { return r.addrs, nil }

// TestServiceMembers: a service name's addresses are the members, bounded,
// with this replica among them whatever the name says.
func TestServiceMembers(t *testing.T) {
	t.Parallel()
	var addrs []string
	for i := range MaxMembers + 50 {
		addrs = append(addrs, fmt.Sprintf("10.0.%d.%d", i/250, i%250))
	}
	addrs = append(addrs, "not-an-ip")
	s, err := New(Options{Self: "http://10.9.9.9:5001", Service: "regnorm-replicas.ns.svc:5001", Secret: []byte(secret),
		Clock: &clock{now: time.Unix(1e9, 0)}, Resolver: resolver{addrs}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Members(); !slices.Equal(got, []string{"http://10.9.9.9:5001"}) {
		t.Fatalf("before resolving: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Run(ctx) // resolves once, then sees ctx done
	got := s.Members()
	if len(got) != MaxMembers+1 || !slices.Contains(got, "http://10.9.9.9:5001") || !slices.Contains(got, "http://10.0.0.0:5001") {
		t.Fatalf("%d members: %v", len(got), got[:3])
	}
	if slices.ContainsFunc(got, func(m string) bool { return m == "http://not-an-ip:5001" }) {
		t.Fatal("a name that is not an address became a member")
	}
}

// TestOptionsRefused: what New refuses.
func TestOptionsRefused(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1e9, 0)}
	for name, o := range map[string]Options{
		"short secret":    {Self: "http://a:1", Peers: []string{"http://a:1"}, Secret: []byte("short"), Clock: c},
		"self not a peer": {Self: "http://a:1", Peers: []string{"http://b:1"}, Secret: []byte(secret), Clock: c},
		"both":            {Self: "http://a:1", Peers: []string{"http://a:1"}, Service: "s:1", Secret: []byte(secret), Clock: c},
		"a named self":    {Self: "http://a:1", Service: "s:1", Secret: []byte(secret), Clock: c},
		"neither":         {Self: "http://a:1", Secret: []byte(secret), Clock: c},
		"https":           {Self: "https://a:1", Peers: []string{"https://a:1"}, Secret: []byte(secret), Clock: c},
		"no port":         {Self: "http://a", Peers: []string{"http://a"}, Secret: []byte(secret), Clock: c},
		"a path":          {Self: "http://a:1/x", Peers: []string{"http://a:1/x"}, Secret: []byte(secret), Clock: c},
		"user":            {Self: "http://u:p@a:1", Peers: []string{"http://u:p@a:1"}, Secret: []byte(secret), Clock: c},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRequestsAndAnswersAreSigned: a request verifies under the secret it
// was signed with, within maxSkew, and not once changed; an answer
// verifies only for its request, status, headers and body.
func TestRequestsAndAnswersAreSigned(t *testing.T) {
	t.Parallel()
	c := &clock{now: time.Unix(1e9, 0)}
	a := newSet(t, "http://a:1", []string{"http://a:1", "http://b:1"}, c)
	b := newSet(t, "http://b:1", []string{"http://a:1", "http://b:1"}, c)
	other, err := New(Options{Self: "http://b:1", Peers: []string{"http://b:1"}, Secret: []byte(secret + "!"), Clock: c})
	if err != nil {
		t.Fatal(err)
	}
	signed := func(uri string) *http.Request {
		req := httptest.NewRequest(http.MethodGet, "http://b:1"+uri, nil)
		a.sign(req)
		req.RequestURI = uri // as the server reads it
		return req
	}
	req := signed("/internal/v1/blob?digest=sha256:1&repo=x&upstream=u")
	reqMAC, err := b.Verify(req)
	if err != nil {
		t.Fatalf("a replica's request refused: %v", err)
	}
	if _, err := other.Verify(req); err == nil {
		t.Error("verified under another secret")
	}
	third := newSet(t, "http://c:1", []string{"http://a:1", "http://b:1", "http://c:1"}, c)
	if _, err := third.Verify(req); err == nil {
		t.Error("a request sent to replica b verified on replica c")
	}
	changed := signed("/internal/v1/blob?digest=sha256:1&repo=x&upstream=u")
	changed.RequestURI = "/internal/v1/blob?digest=sha256:1&repo=y&upstream=u"
	if _, err := b.Verify(changed); err == nil {
		t.Error("a changed request verified")
	}
	post := signed("/internal/v1/blob?digest=sha256:1&repo=x&upstream=u")
	post.Method = http.MethodPost
	if _, err := b.Verify(post); err == nil {
		t.Error("a request with another method verified")
	}
	old := signed("/x")
	c.advance(maxSkew + time.Second)
	if _, err := b.Verify(old); err == nil {
		t.Error("a request older than maxSkew verified")
	}

	h := http.Header{"Content-Type": {"application/json"}, "Docker-Content-Digest": {"sha256:1"}}
	body := []byte(`{"x":1}`)
	b.SignAnswer(h, reqMAC, http.StatusOK, body)
	resp := &http.Response{StatusCode: http.StatusOK, Header: h}
	if err := a.checkAnswer(resp, reqMAC, body); err != nil {
		t.Fatalf("an answer refused: %v", err)
	}
	for name, check := range map[string]func() error{
		"another request": func() error { return a.checkAnswer(resp, reqMAC+"0", body) },
		"another body":    func() error { return a.checkAnswer(resp, reqMAC, []byte(`{"x":2}`)) },
		"another status": func() error {
			return a.checkAnswer(&http.Response{StatusCode: http.StatusNotFound, Header: h}, reqMAC, body)
		},
		"another digest": func() error {
			h2 := h.Clone()
			h2.Set("Docker-Content-Digest", "sha256:2")
			return a.checkAnswer(&http.Response{StatusCode: http.StatusOK, Header: h2}, reqMAC, body)
		},
		"another secret": func() error { return other.checkAnswer(resp, reqMAC, body) },
	} {
		if check() == nil {
			t.Errorf("%s: the answer verified", name)
		}
	}
}
