package upstream

import (
	"context"
	"crypto/tls"
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
	errInward = errors.New("refused: the address is inside the network and not in this upstream's allowRedirectsTo")
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
// too) are never checked, nor are those to a host the upstream's
// allowRedirectsTo names. Every other connection exists only because the
// upstream said so, in a redirect or in the realm of a bearer challenge,
// and goes only to an address outside the network (see AllowList.permits)
// or in a range allowRedirectsTo lists.
//
// Dialled directly, the resolved addresses are checked as each is dialled,
// in the dialer's Control hook, so that a name that resolves outward when
// looked at and inward when dialled (DNS rebinding) is caught. The
// transport pools connections by host and port, so a connection dialled
// unchecked for the upstream's own host is never reused for another one.
//
// Through an HTTP proxy, the proxy would resolve the name and connect: so
// regnorm resolves it first, checks the address, and sends the proxy that
// address (CONNECT 203.0.113.7:443, or GET http://203.0.113.7/...), with
// the name still in the Host header and the TLS server name, so that the
// certificate is checked against the name. The proxy connects where
// regnorm checked, whatever its own DNS says. A host allowRedirectsTo
// names goes to the proxy by name, for a proxy that allows destinations by
// name only.
type dialGuard struct {
	allow AllowList
	own   string // the upstream's host:port, as the transport dials it
	// lookup resolves a name for a target sent through a proxy.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	base     *http.Transport
	envProxy func(*http.Request) (*url.URL, error) // the environment's choice of proxy; nil: none

	mu      sync.Mutex
	proxies map[string]bool            // host:port of proxies the environment named
	pinned  map[string]*http.Transport // by proxy and host name, for targets sent to a proxy by address

	plain, checked net.Dialer
}

// maxPinned bounds the transports kept for targets sent through a proxy by
// address (one per proxy and host name: a registry's token service and
// CDN, a few at most); beyond it they start over.
const maxPinned = 16

func newDialGuard(base *url.URL, allow AllowList) *dialGuard {
	g := &dialGuard{allow: allow, own: dialAddr(base), proxies: map[string]bool{}, pinned: map[string]*http.Transport{},
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}}
	// As http.DefaultTransport's dialer.
	g.plain = net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	g.checked = g.plain
	g.checked.ControlContext = g.control
	return g
}

// wrap makes t dial through g, and returns the round tripper that sends
// requests to hosts other than the upstream's own through a proxy by
// checked address (see dialGuard).
func (g *dialGuard) wrap(t *http.Transport) http.RoundTripper {
	t.DialContext = g.dial
	g.base = t
	g.envProxy = t.Proxy
	if g.envProxy == nil {
		return t
	}
	t.Proxy = func(req *http.Request) (*url.URL, error) {
		p, err := g.envProxy(req)
		if err != nil || p == nil {
			return p, err
		}
		g.trustProxy(p)
		// RoundTrip sends every other target by address; one that gets
		// here by name would be resolved by the proxy, unchecked.
		if !g.trusted(req.URL) {
			a, err := netip.ParseAddr(req.URL.Hostname())
			if err != nil || !g.allow.permits(a) {
				return nil, fmt.Errorf("proxy to %s: %w", req.URL.Host, errInward)
			}
		}
		return p, nil
	}
	return g
}

// RoundTrip sends req: through the transport as it is, unless the
// environment names a proxy for a target the operator did not choose;
// then through that proxy, to the address regnorm resolved and checked.
func (g *dialGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if g.trusted(req.URL) {
		return g.base.RoundTrip(req)
	}
	p, err := g.envProxy(req)
	if err != nil || p == nil {
		return g.base.RoundTrip(req) // direct: checked as it is dialled
	}
	g.trustProxy(p)
	host := req.URL.Hostname()
	addr, err := g.resolve(req.Context(), host)
	if err != nil {
		return nil, err
	}
	out := req.Clone(req.Context())
	out.URL.Host = addr.String()
	if addr.Is6() {
		out.URL.Host = "[" + out.URL.Host + "]"
	}
	if port := req.URL.Port(); port != "" {
		out.URL.Host = net.JoinHostPort(addr.String(), port)
	}
	if out.URL.Scheme == "https" {
		// CONNECT names the address; the Host header and the TLS server
		// name (pinnedTransport) keep the name.
		if out.Host == "" {
			out.Host = req.URL.Host
		}
	} else {
		// A proxied plain-HTTP request names its target once, in the
		// request line, which net/http writes from the Host header: both
		// carry the address. Registries redirect and name realms over
		// HTTPS; a plain-HTTP host that needs its name (signed storage
		// URLs) is listed in allowRedirectsTo by name.
		out.Host = out.URL.Host
	}
	resp, err := g.pinnedTransport(p, host).RoundTrip(out)
	if resp != nil {
		resp.Request = req
	}
	return resp, err
}

// resolve is the first address of host that the guard lets the upstream
// send regnorm to.
func (g *dialGuard) resolve(ctx context.Context, host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		if !g.allow.permits(a) {
			return netip.Addr{}, fmt.Errorf("proxy to %s: %w", host, errInward)
		}
		return a, nil
	}
	addrs, err := g.lookup(ctx, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s to check it before the proxy connects (list it in allowRedirectsTo to send it to the proxy by name): %w", host, err)
	}
	for _, a := range addrs {
		if g.allow.permits(a) {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("proxy to %s: %w", host, errInward)
}

// pinnedTransport is the transport that sends requests for host through
// proxy p by address: the TLS server name is host, so the certificate is
// checked against the name, not the address.
func (g *dialGuard) pinnedTransport(p *url.URL, host string) *http.Transport {
	key := p.String() + " " + host
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.pinned[key]; ok {
		return t
	}
	if len(g.pinned) >= maxPinned {
		for _, t := range g.pinned {
			t.CloseIdleConnections()
		}
		clear(g.pinned)
	}
	t := g.base.Clone()
	t.Proxy = http.ProxyURL(p)
	if t.TLSClientConfig == nil {
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	t.TLSClientConfig.ServerName = host
	g.pinned[key] = t
	return t
}

// trusted reports whether u is where the operator sent regnorm: the
// upstream's own host and port, or a host allowRedirectsTo names.
func (g *dialGuard) trusted(u *url.URL) bool {
	return strings.EqualFold(dialAddr(u), g.own) || g.allow.names(u.Hostname())
}

func (g *dialGuard) trustProxy(p *url.URL) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.proxies) < 16 { // the environment names a few at most
		g.proxies[dialAddr(p)] = true
	}
}

func (g *dialGuard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(addr)
	if strings.EqualFold(addr, g.own) || g.allow.names(host) || g.isProxy(addr) {
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
	if !g.allow.permits(ap.Addr()) {
		return fmt.Errorf("dial %s: %w", address, errInward)
	}
	return nil
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
