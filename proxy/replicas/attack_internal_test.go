package replicas

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/ruleset"
)

// systemClock is the time of the test's bubble.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// pipeListener serves connections that its dial makes, in memory.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5001} }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestAVariantLongerThanTheStallTimeoutLeavesItsOwnerUp: a replica asks
// a variant's owner with a client's wait of 4.5 minutes (containerd 2.0 to
// 2.2), through the Set's own client, as serve wires it. The owner works
// on it for 40 s, longer than the stall timeout but well within the wait,
// and answers that it is made. The ask succeeds, and the owner is not
// passed over: it was working, not gone.
func TestAVariantLongerThanTheStallTimeoutLeavesItsOwnerUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		asker, peer := pipeOwner(t, func(owner *Set, mac string, w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(40 * time.Second): // making the variant
			case <-r.Context().Done():
				return
			}
			owner.SignAnswer(w.Header(), mac, http.StatusNoContent, []byte{})
			w.WriteHeader(http.StatusNoContent)
		})
		err := peer.MakeVariant(t.Context(), Ask{Kind: KindVariant, Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("m"),
			Rules: ruleset.Default().Key(), Wait: 4*time.Minute + 30*time.Second})
		if err != nil {
			t.Errorf("the ask of an owner at work for 40 s of a 4.5 min wait: %v", err)
		}
		asker.mu.Lock()
		down := len(asker.down)
		asker.mu.Unlock()
		if down != 0 {
			t.Errorf("the owner is passed over for %s: it was working, not gone", downFor)
		}
	})
}
