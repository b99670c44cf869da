package proxy

import (
	"testing"
	"time"
)

func TestDeadlineFor(t *testing.T) {
	t.Parallel()
	s := &Server{deadline: 25 * time.Second, patientDeadline: 10 * time.Minute}
	for _, tt := range []struct {
		ua   string
		want time.Duration
	}{
		{"containerd/1.6.20~ds1", 10 * time.Minute},
		{"containerd/v1.4.13", 10 * time.Minute},
		{"containerd/v1.7.3", 50 * time.Second},
		{"containerd/v1.7.10", 270 * time.Second},
		{"containerd/2.2.1", 270 * time.Second},
		{"containerd/2.3.0", 25 * time.Second},
		{"docker/27.0", 25 * time.Second},
		{"", 25 * time.Second},
	} {
		if got := s.deadlineFor(tt.ua); got != tt.want {
			t.Errorf("%q: %s, want %s", tt.ua, got, tt.want)
		}
	}
}
