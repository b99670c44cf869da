package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxRedirects bounds the redirects followed for one request. Registries
// redirect a blob once, to a CDN or a signed storage URL; a chain longer
// than this is a loop or a trap.
const maxRedirects = 5

var (
	// errInward refuses a connection that an upstream's redirect or token
	// realm would have regnorm open inside the network.
	errInward = errors.New("refused: the address is inside the network (allowPrivateRedirects is off for this upstream)")
	// errRedirects refuses a chain of redirects longer than maxRedirects.
	errRedirects = fmt.Errorf("refused: more than %d redirects", maxRedirects)
)

// refusedHop reports whether err is a redirect or realm regnorm refused to
// follow: sending the request again would be refused again.
func refusedHop(err error) bool {
	return errors.Is(err, errInward) || errors.Is(err, errRedirects)
}

// dialGuard keeps one upstream's connections out of the network regnorm
// runs in, except where the operator sent them.
//
// The operator chose the upstream's own URL, and a registry inside the
// cluster is an ordinary one: connections to exactly that host and port
// (and to the HTTP proxy the environment names, which is the operator's
// too) are never checked. Every other connection exists only because the
// upstream said so, in a redirect or in the realm of a bearer challenge:
// its resolved addresses are checked when each is dialled, in the dialer's
// Control hook, so that a name that resolves outward when looked at and
// inward when dialled (DNS rebinding) is caught. The transport pools
// connections by host and port, so a connection dialled unchecked for the
// upstream's own host is never reused for another one.
//
// allowPrivate (upstreams[].allowPrivateRedirects) turns the check off, for
// a registry whose CDN or token service is itself inside the network.
type dialGuard struct {
	allowPrivate bool
	own          string // the upstream's host:port, as the transport dials it

	mu      sync.Mutex
	proxies map[string]bool // host:port of proxies the environment named

	plain, checked net.Dialer
}

func newDialGuard(base *url.URL, allowPrivate bool) *dialGuard {
	g := &dialGuard{allowPrivate: allowPrivate, own: dialAddr(base), proxies: map[string]bool{}}
	// As http.DefaultTransport's dialer.
	g.plain = net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	g.checked = g.plain
	g.checked.ControlContext = g.control
	return g
}

// install makes t dial through g, and wraps t's proxy selection so that
// the proxy's address is trusted and a target it would reach for regnorm
// is checked as far as it can be from here.
func (g *dialGuard) install(t *http.Transport) {
	t.DialContext = g.dial
	envProxy := t.Proxy
	if envProxy == nil {
		return
	}
	t.Proxy = func(req *http.Request) (*url.URL, error) {
		p, err := envProxy(req)
		if err != nil || p == nil {
			return p, err
		}
		g.mu.Lock()
		if len(g.proxies) < 16 { // the environment names a few at most
			g.proxies[dialAddr(p)] = true
		}
		g.mu.Unlock()
		// Through a proxy, the proxy resolves the name and connects: only
		// an address written in the URL can be checked here.
		if !g.allowPrivate && !strings.EqualFold(dialAddr(req.URL), g.own) && inwardHost(req.URL.Hostname()) {
			return nil, fmt.Errorf("proxy to %s: %w", req.URL.Host, errInward)
		}
		return p, nil
	}
}

func (g *dialGuard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if g.allowPrivate || strings.EqualFold(addr, g.own) || g.isProxy(addr) {
		return g.plain.DialContext(ctx, network, addr)
	}
	return g.checked.DialContext(ctx, network, addr)
}

func (g *dialGuard) isProxy(addr string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.proxies[strings.ToLower(addr)]
}

// control runs after the name is resolved, before each address is
// connected to: address is the IP and port about to be dialled.
func (g *dialGuard) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, errInward) // not an IP: nothing to vouch for it
	}
	if inward(ap.Addr()) {
		return fmt.Errorf("dial %s: %w", address, errInward)
	}
	return nil
}

// inward reports whether a is an address regnorm must not be sent to by an
// upstream: loopback, link-local (the cloud metadata services),
// private (RFC 1918, fc00::/7 unique local, which holds AWS's fd00:ec2::254),
// shared (RFC 6598's 100.64.0.0/10, where Alibaba Cloud's metadata service
// and many cluster networks live), unspecified or "this network", and
// multicast or broadcast.
func inward(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() ||
		a.IsMulticast() || a.IsPrivate() || a.IsUnspecified() {
		return true
	}
	for _, p := range inwardPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

var inwardPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("255.255.255.255/32"),
	// IPv4 addresses embedded in IPv6 (NAT64, the deprecated compatible
	// form) reach the IPv4 network behind them.
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("::/96"),
}

// inwardHost is inward for a host written in a URL: an IP literal, or a
// name that always means this machine.
func inwardHost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && inward(a)
}

// dialAddr is the host:port the transport dials for u (net/http's
// canonicalAddr): the port defaults by scheme.
func dialAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "https":
			port = "443"
		case "socks5", "socks5h":
			port = "1080"
		default:
			port = "80"
		}
	}
	return strings.ToLower(net.JoinHostPort(u.Hostname(), port))
}

// checkRedirect bounds how many redirects one request follows. Where they
// lead is the dialGuard's to check.
func checkRedirect(_ *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return errRedirects
	}
	return nil
}
