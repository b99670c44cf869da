package proxy

import "time"

// Clock is the time the server goes by: for tag freshness, token and
// confirmation lifetimes, verdict and report times, cache maintenance and
// the deadline a client waits for normalization. Tests inject a fake one,
// so no test decides pass or fail by how fast the machine is.
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
