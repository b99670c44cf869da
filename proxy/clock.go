package proxy

import "time"

// Clock is the time the server goes by (authentication failures, the
// status page's times) and, handed to each part by cmd/proxy's wire, the
// parts: tag freshness, confirmations, verdict and report times, the fleet,
// cache maintenance and the wait for normalization. It has every method any
// of them asks for. Tests inject a fake one, so no test decides pass or
// fail by how fast the machine is.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
	// AfterFunc is time.AfterFunc on this clock; stop is its Stop.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the system's time.
type SystemClock struct{}

func (SystemClock) Now() time.Time                         { return time.Now() }
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
