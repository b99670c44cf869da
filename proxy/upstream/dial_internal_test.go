package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

func TestAddressesOutsideTheNetwork(t *testing.T) {
	t.Parallel()
	none := AllowList{}
	list := func(entries ...string) AllowList {
		l, err := ParseAllowList(entries)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, tt := range []struct {
		allow AllowList
		addr  string
		want  bool
	}{
		{none, "127.0.0.1", false},
		{none, "127.8.9.10", false},
		{none, "::1", false},
		{none, "::ffff:127.0.0.1", false},
		{none, "169.254.169.254", false}, // AWS, GCP, Azure metadata
		{none, "fe80::1", false},
		{none, "fd00:ec2::254", false}, // AWS metadata over IPv6
		{none, "10.0.0.1", false},
		{none, "172.16.0.1", false},
		{none, "172.31.255.255", false},
		{none, "192.168.1.1", false},
		{none, "100.100.100.200", false}, // Alibaba Cloud metadata
		{none, "0.0.0.0", false},
		{none, "0.1.2.3", false},
		{none, "::", false},
		{none, "224.0.0.1", false},
		{none, "255.255.255.255", false},
		// Special-purpose blocks a deny-list of the usual ranges let through.
		{none, "240.0.0.1", false},
		{none, "198.18.0.1", false},
		{none, "192.0.0.170", false},
		{none, "192.0.2.1", false},
		{none, "fec0::1", false},
		{none, "2001:db8::1", false},
		{none, "2001::1", false},       // Teredo
		{none, "::7f00:1", false},      // IPv4-compatible (deprecated)
		{none, "ff02::1", false},       // multicast
		{none, "fc00::1", false},       // unique local
		{none, "100::1", false},        // discard-only
		{none, "2002:7f00:1::", false}, // 6to4 of 127.0.0.1
		{none, "2002:a9fe:a9fe::1", false},
		{none, "2002:808:808::1", true}, // 6to4 of 8.8.8.8
		// NAT64 (DNS64 in an IPv6-only cluster): the IPv4 address behind.
		{none, "64:ff9b::a9fe:a9fe", false}, // 169.254.169.254
		{none, "64:ff9b::a00:1", false},     // 10.0.0.1
		{none, "64:ff9b::6812:7919", true},  // 104.18.121.25
		{none, "64:ff9b:1::6812:7919", true},
		{none, "64:ff9b:1:1::6812:7919", false}, // not the /96 form
		{none, "8.8.8.8", true},
		{none, "172.32.0.1", true},
		{none, "104.18.121.25", true},
		{none, "2606:4700::6810:7919", true},
		{none, "::ffff:8.8.8.8", true},
		// What the operator lists, and no more.
		{list("10.0.0.0/8"), "10.1.2.3", true},
		{list("10.0.0.0/8"), "172.16.0.1", false},
		{list("10.0.0.0/8"), "64:ff9b::a01:203", true}, // NAT64 of 10.1.2.3
		{list("::/0"), "64:ff9b::a9fe:a9fe", false},    // the metadata service behind NAT64
		{list("2002::/16"), "2002:7f00:1::", false},    // loopback behind 6to4
		{list("127.0.0.0/8"), "127.0.0.1", true},
		{list("127.0.0.0/8"), "169.254.169.254", false},
		{list("0.0.0.0/0"), "169.254.169.254", false}, // metadata only when listed as such
		{list("0.0.0.0/0"), "10.0.0.1", true},
		{list("169.254.169.254"), "169.254.169.254", true},
		{list("169.254.0.0/16"), "169.254.170.2", true},
		{list("100.64.0.0/10"), "100.100.100.200", false},
		{list("100.64.0.0/10"), "100.64.0.1", true},
		{list("fd00::/8"), "fd00:ec2::254", false},
		{list("fd00::/8"), "fd00::1234", true},
		{list("fd00:ec2::254"), "fd00:ec2::254", true},
		{list("registry-auth.internal"), "10.0.0.1", false},
	} {
		if got := tt.allow.permits(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("%v permits %s: %v, want %v", tt.allow, tt.addr, got, tt.want)
		}
	}
}

func TestParseAllowList(t *testing.T) {
	t.Parallel()
	l, err := ParseAllowList([]string{"10.0.0.0/8", "10.1.2.3/8", "192.168.0.7", "::ffff:10.0.0.1", "Registry-Auth.Internal.", "*.storage.internal"})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Prefixes; len(got) != 4 || got[1] != netip.MustParsePrefix("10.0.0.0/8") || got[2] != netip.MustParsePrefix("192.168.0.7/32") ||
		got[3] != netip.MustParsePrefix("10.0.0.1/32") {
		t.Errorf("prefixes %v", got)
	}
	for host, want := range map[string]bool{"registry-auth.internal": true, "REGISTRY-AUTH.internal.": true, "a.storage.internal": true,
		"storage.internal": false, "evil-registry-auth.internal": false, "registry-auth.internal.evil.example": false} {
		if got := l.names(host); got != want {
			t.Errorf("names(%s) = %v, want %v", host, got, want)
		}
	}
	for _, bad := range []string{"https://auth.internal", "auth.internal:443", "*", "a..b", "10.0.0.0/33", "fe80::1%eth0", "", "*.*.x"} {
		if _, err := ParseAllowList([]string{bad}); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

func TestDialAddrMatchesTheTransport(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://Registry-1.Docker.io":      "registry-1.docker.io:443",
		"http://127.0.0.1:5000/v2":          "127.0.0.1:5000",
		"http://[::1]/":                     "[::1]:80",
		"socks5://proxy.internal":           "proxy.internal:1080",
		"https://registry.internal:8443/x/": "registry.internal:8443",
	} {
		u, _ := url.Parse(in)
		if got := dialAddr(u); got != want {
			t.Errorf("dialAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// forwardProxy is an HTTP proxy (HTTPS_PROXY), on an address inside the
// network as proxies are, that records what it is asked for: the target of
// each request (the request line's host, or CONNECT's) and its Host
// header. It resolves nothing and fetches nothing: a GET is answered "via
// proxy", and a CONNECT is tunnelled to tunnelTo whatever its target.
type forwardProxy struct {
	URL      *url.URL
	tunnelTo string

	mu   sync.Mutex
	seen []string // "target Host"
}

func newForwardProxy(t *testing.T, tunnelTo string) *forwardProxy {
	p := &forwardProxy{tunnelTo: tunnelTo}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		if r.Method == http.MethodConnect {
			p.seen = append(p.seen, "CONNECT "+r.Host)
		} else {
			p.seen = append(p.seen, r.URL.Host+" "+r.Host)
		}
		p.mu.Unlock()
		if r.Method != http.MethodConnect {
			io.WriteString(w, "via proxy")
			return
		}
		backend, err := net.Dial("tcp", p.tunnelTo)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer backend.Close()
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go io.Copy(backend, buf)
		io.Copy(conn, backend)
	}))
	t.Cleanup(srv.Close)
	p.URL, _ = url.Parse(srv.URL)
	return p
}

func (p *forwardProxy) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// guardedClient is an upstream's client behind proxy, with lookup as the
// names regnorm resolves, and roots as its trusted CAs.
func guardedClient(proxy *url.URL, allow AllowList, lookup map[string]string, roots *tls.Config) *http.Client {
	base, _ := url.Parse("http://registry.example")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = func(*http.Request) (*url.URL, error) { return proxy, nil }
	tr.TLSClientConfig = roots
	g := newDialGuard(base, allow)
	g.lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
		a, ok := lookup[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return []netip.Addr{netip.MustParseAddr(a)}, nil
	}
	return &http.Client{Transport: g.wrap(tr), CheckRedirect: checkRedirect}
}

// TestProxyGetsTheCheckedAddress: behind an HTTP proxy, every connection
// is to the proxy: it is the operator's and is dialled. A target the
// upstream names is resolved by regnorm and checked, and the proxy is sent
// that address, never the name it would resolve again: a name that
// resolves inside the network (vm, in /etc/hosts) is refused before the
// proxy is asked, and one that resolves outside is sent as the address
// regnorm checked: for HTTPS, CONNECT names the address while the Host
// header and the TLS server name (the certificate is checked against it)
// keep the name; for plain HTTP, the request line and Host header both
// carry the address. The upstream's own host, and a name allowRedirectsTo
// lists, go by name.
func TestProxyGetsTheCheckedAddress(t *testing.T) {
	t.Parallel()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tls:"+r.Host)
	}))
	t.Cleanup(tlsSrv.Close)
	roots := &tls.Config{RootCAs: tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	_, tlsPort, _ := net.SplitHostPort(tlsSrv.Listener.Addr().String())
	proxy := newForwardProxy(t, tlsSrv.Listener.Addr().String())
	allow, _ := ParseAllowList([]string{"auth.internal"})
	client := guardedClient(proxy.URL, allow, map[string]string{
		"vm":          "127.0.0.1",
		"localhost":   "::1",
		"rebind.test": "203.0.114.7", // outside when regnorm looks; the proxy's DNS may say otherwise
		"example.com": "104.18.121.25",
		"metadata":    "169.254.169.254",
	}, roots)

	for _, tt := range []struct {
		target string
		want   string // the proxy's record, or "" for refused before the proxy
		body   string
	}{
		{"http://registry.example/v2/", "registry.example registry.example", "via proxy"},
		{"http://vm:5400/latest/meta-data/", "", ""},
		{"http://metadata/latest/meta-data/", "", ""},
		{"http://169.254.169.254/latest/meta-data/", "", ""},
		{"http://localhost:8080/", "", ""},
		{"http://unknown.test/", "", ""},
		{"http://rebind.test/blob", "203.0.114.7 203.0.114.7", "via proxy"},
		{"https://example.com:" + tlsPort + "/blob", "CONNECT 104.18.121.25:" + tlsPort, "tls:example.com:" + tlsPort},
		{"http://auth.internal/token", "auth.internal auth.internal", "via proxy"},
	} {
		before := len(proxy.asked())
		resp, err := client.Get(tt.target)
		asked := proxy.asked()[before:]
		if tt.want == "" {
			if err == nil {
				resp.Body.Close()
				t.Errorf("%s through the proxy: got %d, want it refused", tt.target, resp.StatusCode)
			} else if tt.target != "http://unknown.test/" && !errors.Is(err, errInward) {
				t.Errorf("%s through the proxy: %v, want it refused as inward", tt.target, err)
			}
			if len(asked) != 0 {
				t.Errorf("%s: the proxy was asked for %q, want nothing", tt.target, asked)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s through the proxy: %v", tt.target, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != tt.body {
			t.Errorf("%s: got %q, want %q", tt.target, body, tt.body)
		}
		if len(asked) != 1 || asked[0] != tt.want {
			t.Errorf("%s: the proxy was asked for %q, want %q", tt.target, asked, tt.want)
		}
	}
}

// TestRedirectThroughTheProxyIsChecked: the hop an upstream's redirect
// makes through the proxy is checked as any other.
func TestRedirectThroughTheProxyIsChecked(t *testing.T) {
	t.Parallel()
	var secret = "AKIA-SECRET"
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, secret) }))
	t.Cleanup(internal.Close)
	_, port, _ := net.SplitHostPort(internal.Listener.Addr().String())
	// A plain forward proxy that does fetch, resolving vm as its /etc/hosts
	// does.
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := *r.URL
		if target.Hostname() == "registry.example" {
			http.Redirect(w, r, "http://vm:"+port+"/latest/meta-data/", http.StatusTemporaryRedirect)
			return
		}
		if target.Hostname() == "vm" {
			target.Host = "127.0.0.1:" + target.Port()
		}
		resp, err := http.Get(target.String())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(fwd.Close)
	proxyURL, _ := url.Parse(fwd.URL)
	client := guardedClient(proxyURL, AllowList{}, map[string]string{"vm": "127.0.0.1"}, nil)
	resp, err := client.Get("http://registry.example/v2/library/app/blobs/sha256:x")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), secret) {
			t.Fatalf("the redirect through the proxy reached the address inside the network: %q", body)
		}
		t.Fatalf("the redirect was followed: %d %q", resp.StatusCode, body)
	}
	if !errors.Is(err, errInward) {
		t.Errorf("got %v, want the redirect refused as inward", err)
	}
}
