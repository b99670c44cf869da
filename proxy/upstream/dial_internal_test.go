package upstream

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"sync"
	"testing"
)

func TestInwardAddresses(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"169.254.169.254", true}, // AWS, GCP, Azure metadata
		{"fe80::1", true},
		{"fd00:ec2::254", true}, // AWS metadata over IPv6
		{"10.0.0.1", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"100.100.100.200", true}, // Alibaba Cloud metadata
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"::", true},
		{"224.0.0.1", true},
		{"255.255.255.255", true},
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 of 169.254.169.254
		{"8.8.8.8", false},
		{"172.32.0.1", false},
		{"104.18.121.25", false},
		{"2606:4700::6810:7919", false},
		{"::ffff:8.8.8.8", false},
	} {
		if got := inward(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("inward(%s) = %v, want %v", tt.addr, got, tt.want)
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

// TestProxyIsTrusted: behind an HTTP proxy (HTTPS_PROXY, on an address
// inside the network as proxies are), every connection is to the proxy:
// it is the operator's and is dialled; a target written as an address
// inside the network is refused before it is handed to the proxy.
func TestProxyIsTrusted(t *testing.T) {
	t.Parallel()
	var seen []string
	var mu sync.Mutex
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.String())
		mu.Unlock()
		io.WriteString(w, "via proxy")
	}))
	t.Cleanup(fwd.Close)
	proxyURL, _ := url.Parse(fwd.URL)
	base, _ := url.Parse("https://registry.example")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = func(*http.Request) (*url.URL, error) { return proxyURL, nil }
	newDialGuard(base, false).install(tr)
	client := &http.Client{Transport: tr}

	for _, tt := range []struct {
		target string
		ok     bool
	}{
		{"http://registry.example/v2/", true},
		{"http://cdn.example/blob", true},
		{"http://169.254.169.254/latest/meta-data/", false},
		{"http://localhost:8080/", false},
	} {
		resp, err := client.Get(tt.target)
		if tt.ok {
			if err != nil {
				t.Errorf("%s through the proxy: %v", tt.target, err)
				continue
			}
			resp.Body.Close()
		} else if !errors.Is(err, errInward) {
			t.Errorf("%s through the proxy: got %v, want it refused", tt.target, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Errorf("the proxy was asked for %q, want the two allowed targets", seen)
	}
}
