package upstream

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// AllowList is where one upstream's redirects and token realm may lead
// besides the addresses outside the network (upstreams[].allowRedirectsTo):
// for a registry whose storage or token service is inside the network too.
// The zero value allows nothing more.
type AllowList struct {
	// Prefixes are address ranges inside the network the upstream may send
	// regnorm to, checked on the address each connection dials. A
	// link-local or cloud metadata address is allowed only by a prefix
	// inside its own range (169.254.169.254/32, 169.254.0.0/16), never by
	// one that merely holds it (10.0.0.0/8 does not, nor 0.0.0.0/0).
	Prefixes []netip.Prefix
	// Hosts are names the upstream may send regnorm to, wherever they
	// resolve: the operator vouches for them as for the upstream's own. A
	// name "*.example.com" stands for every name under example.com. Through
	// an HTTP proxy they are sent by name.
	Hosts []string
}

var hostName = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ParseAllowList reads allowRedirectsTo's entries: each a CIDR prefix
// (10.0.0.0/8), an address (one of the prefix's length) or a host name
// (registry-auth.internal, *.storage.internal), without scheme or port.
func ParseAllowList(entries []string) (AllowList, error) {
	var l AllowList
	for _, e := range entries {
		if p, err := netip.ParsePrefix(e); err == nil {
			l.Prefixes = append(l.Prefixes, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(e); err == nil && a.Zone() == "" {
			a = a.Unmap()
			l.Prefixes = append(l.Prefixes, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(e, "."))
		if len(name) > 253 || !hostName.MatchString(name) {
			return AllowList{}, fmt.Errorf("%q is neither a CIDR prefix, an address nor a host name (without scheme or port)", e)
		}
		l.Hosts = append(l.Hosts, name)
	}
	return l, nil
}

// names reports whether host is one of the names the list vouches for.
func (l AllowList) names(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return slices.ContainsFunc(l.Hosts, func(h string) bool {
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			return strings.HasSuffix(host, suffix)
		}
		return h == host
	})
}

// permits reports whether an upstream may send regnorm to a: an address
// outside the network (see global), or in one of the list's prefixes.
// Behind an IPv6 translation prefix, the IPv4 address it reaches is what
// is checked, and only it: a listed IPv6 range that holds the translated
// address (::/0) does not open the metadata service behind it.
func (l AllowList) permits(a netip.Addr) bool {
	a = a.Unmap()
	if v4, ok := embeddedIPv4(a); ok {
		return l.permits(v4)
	}
	for _, p := range l.Prefixes {
		if p.Contains(a) && !beyond(p, a) {
			return true
		}
	}
	return global(a)
}

// metadataRanges hold the cloud metadata services (169.254.169.254 and
// AWS's 169.254.170.2; AWS's fd00:ec2::254, GCP's fd20:ce::254, Alibaba's
// 100.100.100.200) and the link-local ranges around them.
var metadataRanges = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("fd20:ce::254/128"),
	netip.MustParsePrefix("100.100.100.200/32"),
}

// beyond reports whether p holds a only by being wider than the metadata
// range a is in: such an address must be listed on its own.
func beyond(p netip.Prefix, a netip.Addr) bool {
	for _, m := range metadataRanges {
		if m.Contains(a) && p.Bits() < m.Bits() {
			return true
		}
	}
	return false
}

// global reports whether a is an address outside the network: for IPv6,
// one of 2000::/3, the range global unicast addresses are allocated from;
// for IPv4, a unicast address (1.0.0.0 to 223.255.255.255). Minus, in
// both, the private ranges (RFC 1918, fc00::/7) and the special-purpose
// blocks the IANA registries say are not globally reachable. So loopback,
// link-local (the metadata services), unique local and site-local,
// shared (100.64.0.0/10), benchmarking, documentation, reserved (240/4)
// and multicast addresses are all outside it.
func global(a netip.Addr) bool {
	if a.Is4() {
		b := a.As4()
		if b[0] == 0 || b[0] >= 224 || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsPrivate() {
			return false
		}
		return !slices.ContainsFunc(notGlobal4, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	return global6.Contains(a) && !slices.ContainsFunc(notGlobal6, func(p netip.Prefix) bool { return p.Contains(a) })
}

var (
	notGlobal4 = []netip.Prefix{
		netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (RFC 6598): carrier NAT, many cluster networks
		netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
		netip.MustParsePrefix("192.0.2.0/24"),    // documentation
		netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast (deprecated)
		netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
		netip.MustParsePrefix("198.51.100.0/24"), // documentation
		netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	}
	global6    = netip.MustParsePrefix("2000::/3")
	notGlobal6 = []netip.Prefix{
		netip.MustParsePrefix("2001::/23"),     // IETF protocol assignments: Teredo, benchmarking, ORCHID
		netip.MustParsePrefix("2001:db8::/32"), // documentation
		netip.MustParsePrefix("3fff::/20"),     // documentation
	}
)

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052's well-known prefix
	nat64Own  = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215's, for a network's own translator
	sixToFour = netip.MustParsePrefix("2002::/16")      // RFC 3056
)

// embeddedIPv4 is the IPv4 address behind an IPv6 address that reaches
// one (ok): NAT64, where DNS64 gives an IPv6-only cluster an address for
// every IPv4-only host (RFC 6052, the address in the last 32 bits), and
// 6to4 (the address in bits 16 to 48). Under 64:ff9b:1::/48 only the /96
// form is understood; any other is answered with 0.0.0.0, which nothing
// permits.
func embeddedIPv4(a netip.Addr) (v4 netip.Addr, ok bool) {
	b := a.As16()
	switch {
	case !a.Is6():
		return netip.Addr{}, false
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case nat64Own.Contains(a):
		if b[6]|b[7]|b[8]|b[9]|b[10]|b[11] != 0 {
			return netip.IPv4Unspecified(), true
		}
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}
