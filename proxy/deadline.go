package proxy

import (
	"time"

	"github.com/regnorm/regnorm/proxy/ruleset"
)

// deadlineFor is how long a client may wait for a manifest answer, from
// what its User-Agent says of its timeouts (docs/containerd.md):
//
//	containerd 1.4 – 1.6     no limit on response headers          patient deadline
//	1.7.0 – 1.7.9            CRI gives up after 1 min without progress   at most 50 s
//	1.7.10+, 2.0 – 2.2       the same after 5 min                       at most 4.5 min
//	2.3+, anything else      30 s response header timeout              the deadline (25 s)
func (s *Server) deadlineFor(userAgent string) time.Duration {
	v, ok := ruleset.Containerd(userAgent)
	if !ok {
		return s.deadline
	}
	major, minor, patch := v.Major, v.Minor, v.Patch
	switch {
	case major == 1 && minor < 7:
		return s.patientDeadline
	case major == 1 && minor == 7 && patch < 10:
		return min(s.patientDeadline, 50*time.Second)
	case major == 1 || (major == 2 && minor < 3):
		return min(s.patientDeadline, 4*time.Minute+30*time.Second)
	}
	return s.deadline
}
