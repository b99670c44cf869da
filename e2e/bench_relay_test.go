//go:build e2e

package e2e

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// relay stands in for the internet between a mirror and its upstream: every
// response body goes through one shared link of a fixed bandwidth, and
// every request waits a fixed latency first. It counts the bytes it relays
// and the requests it passes on, and keeps the responses still being
// relayed, with the address each came from (connOwner tells whose it is).
type relay struct {
	target  string
	latency time.Duration
	link    *link
	client  *http.Client
	bytes   atomic.Int64

	mu   sync.Mutex
	seen map[relayed]int
	open map[*flow]struct{}
}

// relayed is one kind of request the relay passed on: its method and
// path, and whether it asked for a Range.
type relayed struct {
	method, path string
	ranged       bool
}

// flow is a response being relayed, where its request came from, and how
// many body bytes have gone so far.
type flow struct {
	relayed
	remote string
	bytes  atomic.Int64
}

// newRelay relays to target at bytesPerSecond (no limit when it is 0),
// after latency.
func newRelay(target string, bytesPerSecond float64, latency time.Duration) *relay {
	return &relay{
		target:  target,
		latency: latency,
		link:    &link{rate: bytesPerSecond},
		client: &http.Client{
			Transport:     &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		seen: map[relayed]int{},
		open: map[*flow]struct{}{},
	}
}

func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := &flow{relayed: relayed{method: r.Method, path: r.URL.Path, ranged: r.Header.Get("Range") != ""}, remote: r.RemoteAddr}
	rl.mu.Lock()
	rl.seen[f.relayed]++
	rl.open[f] = struct{}{}
	rl.mu.Unlock()
	defer func() {
		rl.mu.Lock()
		delete(rl.open, f)
		rl.mu.Unlock()
	}()
	time.Sleep(rl.latency)
	req, err := http.NewRequestWithContext(r.Context(), r.Method, rl.target+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := rl.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			rl.link.wait(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			rl.bytes.Add(int64(n))
			f.bytes.Add(int64(n))
		}
		if err == io.EOF || err != nil {
			return
		}
	}
}

// requests returns how many requests of each kind the relay has passed on.
func (rl *relay) requests() map[relayed]int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	out := make(map[relayed]int, len(rl.seen))
	for k, v := range rl.seen {
		out[k] = v
	}
	return out
}

// inFlight returns the responses being relayed: what each is, where its
// request came from, and the body bytes it has sent so far.
func (rl *relay) inFlight() []inFlight {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	out := make([]inFlight, 0, len(rl.open))
	for f := range rl.open {
		out = append(out, inFlight{relayed: f.relayed, remote: f.remote, bytes: f.bytes.Load()})
	}
	return out
}

// inFlight is a response being relayed (relay.inFlight).
type inFlight struct {
	relayed
	remote string
	bytes  int64
}

// link is a shared bandwidth budget: each chunk books its transmission time
// after the previous chunk's, across all connections.
type link struct {
	mu   sync.Mutex
	rate float64 // bytes per second; 0 is no limit
	next time.Time
}

func (l *link) wait(n int) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.next
	l.mu.Unlock()
	time.Sleep(time.Until(until))
}
