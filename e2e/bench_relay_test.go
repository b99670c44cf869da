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
// every request waits a fixed latency first. It counts the bytes it relays.
type relay struct {
	target  string
	latency time.Duration
	link    *link
	client  *http.Client
	bytes   atomic.Int64
}

func newRelay(target string, bytesPerSecond float64, latency time.Duration) *relay {
	return &relay{
		target:  target,
		latency: latency,
		link:    &link{rate: bytesPerSecond},
		client: &http.Client{
			Transport:     &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
		}
		if err == io.EOF || err != nil {
			return
		}
	}
}

// link is a shared bandwidth budget: each chunk books its transmission time
// after the previous chunk's, across all connections.
type link struct {
	mu   sync.Mutex
	rate float64 // bytes per second
	next time.Time
}

func (l *link) wait(n int) {
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
