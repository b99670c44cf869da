package replicas

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
)

// MaxMembers bounds the replicas a Set knows: what a service name resolves
// to beyond it is ignored (and logged).
const MaxMembers = 256

// MinSecretLength is the shortest shared secret a Set accepts.
const MinSecretLength = 32

// downFor is how long a replica that failed to answer is passed over: its
// work goes to the next owner, which every replica picks alike.
const downFor = 30 * time.Second

// Options configure a Set.
type Options struct {
	// Self is this replica's URL as the others reach it (http://host:port).
	Self string
	// Peers is every replica's URL, Self included: a fixed membership.
	Peers []string
	// Service is a DNS name and port (host:port) whose addresses are the
	// replicas (a Kubernetes headless Service), resolved every Refresh:
	// each address A is the replica http://A:port.
	Service string
	// Refresh is how often Service is resolved. Default 10s.
	Refresh time.Duration
	// Secret proves a replica: at least MinSecretLength bytes, the same on
	// every replica.
	Secret []byte
	// StallTimeout abandons an owner that sends nothing for this long; the
	// asker then does the work itself. Default 30s.
	StallTimeout time.Duration
	// Client is what the owners are asked with. Default: one of its own.
	Client  *http.Client
	Clock   Clock
	Metrics *Metrics
	Log     *slog.Logger
	// Resolver looks Service up. Default net.DefaultResolver.
	Resolver interface {
		LookupHost(ctx context.Context, host string) ([]string, error)
	}
}

// Clock is the time a Set goes by: request stamps and how long a replica
// that failed stays passed over.
type Clock interface{ Now() time.Time }

// Set is the replicas of one cache, as this one sees them.
type Set struct {
	opts     Options
	self     string
	selfHost string // self's host:port, what a request to this replica is sent to

	mu      sync.Mutex
	members []string             // sorted; self always among them
	down    map[string]time.Time // replica → until when it is passed over
}

// New is the Set opts describe. With a Service, it knows only itself until
// Run has resolved the name.
func New(opts Options) (*Set, error) {
	if len(opts.Secret) < MinSecretLength {
		return nil, fmt.Errorf("replicas: the shared secret must be at least %d bytes", MinSecretLength)
	}
	self, err := canonical(opts.Self)
	if err != nil {
		return nil, fmt.Errorf("replicas: self: %w", err)
	}
	if (len(opts.Peers) == 0) == (opts.Service == "") {
		return nil, errors.New("replicas: give either peers or a service name")
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 10 * time.Second
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 30 * time.Second
	}
	if opts.Client == nil {
		// No header timeout: each kind of ask has its own (an owner makes
		// a variant before it answers). No redirect is followed: an owner
		// answers itself.
		opts.Client = &http.Client{
			Transport: &http.Transport{
				Proxy:               nil, // replicas talk directly
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     90 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		return nil, errors.New("replicas: a clock is required")
	}
	s := &Set{opts: opts, self: self, selfHost: strings.TrimPrefix(self, "http://"), down: map[string]time.Time{}}
	if opts.Service != "" {
		if _, _, err := net.SplitHostPort(opts.Service); err != nil {
			return nil, fmt.Errorf("replicas: service %q: want host:port: %w", opts.Service, err)
		}
		// The others know this replica by the address the name resolves
		// to: a name here would be a member nobody else knows.
		if host, _, _ := net.SplitHostPort(s.selfHost); net.ParseIP(host) == nil {
			return nil, fmt.Errorf("replicas: self %s: with a service name, give this replica's IP address", self)
		}
		s.setMembers(nil)
		return s, nil
	}
	members := make([]string, 0, len(opts.Peers))
	for _, p := range opts.Peers {
		c, err := canonical(p)
		if err != nil {
			return nil, fmt.Errorf("replicas: peer: %w", err)
		}
		members = append(members, c)
	}
	if !slices.Contains(members, self) {
		return nil, fmt.Errorf("replicas: self %s is not among the peers", self)
	}
	if len(members) > MaxMembers {
		return nil, fmt.Errorf("replicas: %d peers, at most %d", len(members), MaxMembers)
	}
	s.setMembers(members)
	return s, nil
}

// CheckURL checks a replica's URL as New does: http://host:port.
func CheckURL(raw string) error {
	_, err := canonical(raw)
	return err
}

// canonical is a replica's URL as the Set compares it: scheme and host
// only.
func canonical(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("%q: want http://host:port", raw)
	}
	if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
		return "", fmt.Errorf("%q: want http://host:port", raw)
	}
	return "http://" + u.Host, nil
}

func (s *Set) setMembers(members []string) {
	if !slices.Contains(members, s.self) {
		members = append(members, s.self) // alive, whatever a name says
	}
	slices.Sort(members)
	members = slices.Compact(members)
	s.opts.Metrics.members.Set(float64(len(members)))
	s.mu.Lock()
	s.members = members
	for m := range s.down {
		if !slices.Contains(members, m) {
			delete(s.down, m)
		}
	}
	s.mu.Unlock()
}

// Run resolves the service name at once and every Refresh until ctx ends;
// with a fixed list of peers it returns at once.
func (s *Set) Run(ctx context.Context) {
	if s.opts.Service == "" {
		return
	}
	s.resolve(ctx)
	t := time.NewTicker(s.opts.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.resolve(ctx)
		}
	}
}

// resolve takes the service name's addresses as the members. A failed
// look-up keeps the members known: a replica that is gone is passed over
// once it fails to answer.
func (s *Set) resolve(ctx context.Context) {
	host, port, _ := net.SplitHostPort(s.opts.Service)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := s.opts.Resolver.LookupHost(ctx, host)
	if err != nil {
		s.opts.Log.Warn("resolving the replicas failed; keeping those known", "service", s.opts.Service, "error", err)
		return
	}
	if len(addrs) > MaxMembers {
		s.opts.Log.Warn("the replicas' service name has too many addresses; using the first", "service", s.opts.Service,
			"addresses", len(addrs), "limit", MaxMembers)
		slices.Sort(addrs)
		addrs = addrs[:MaxMembers]
	}
	members := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if net.ParseIP(a) == nil {
			continue
		}
		members = append(members, "http://"+net.JoinHostPort(a, port))
	}
	s.setMembers(members)
}

// Members is every replica known, this one included, sorted.
func (s *Set) Members() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.members)
}

// Owner is the replica that does the work key names, or nil when it is
// this one. Every replica that knows the same members picks the same
// owner (rendezvous hashing: the member whose hash with key is highest),
// and a member joining or leaving moves only the keys it wins or won.
// A replica that failed within downFor is passed over.
func (s *Set) Owner(key string) *Peer {
	now := s.opts.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	best, bestScore := "", uint64(0)
	for _, m := range s.members {
		if until, ok := s.down[m]; ok {
			if now.Before(until) {
				continue
			}
			delete(s.down, m)
		}
		if score := xxhash.Sum64String(m + "\x00" + key); best == "" || score > bestScore {
			best, bestScore = m, score
		}
	}
	if best == "" || best == s.self {
		return nil
	}
	return &Peer{set: s, url: best}
}

// failed passes peer over for downFor: it did not answer.
func (s *Set) failed(peer string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.down[peer]; !ok {
		s.opts.Log.Warn("replica did not answer; doing its work here for a while", "replica", peer, "for", downFor, "error", err)
	}
	s.down[peer] = s.opts.Clock.Now().Add(downFor)
}

// retryAfter parses a Retry-After in seconds; 0 when there is none.
func retryAfter(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(min(n, 3600)) * time.Second
}
