package replicas

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// pipeOwner is an owner at peers[1], served in memory by handle, asked by
// the Set it returns (peers[0]) through its own client, as serve wires it.
func pipeOwner(t *testing.T, handle func(owner *Set, mac string, w http.ResponseWriter, r *http.Request)) (*Set, *Peer) {
	peers := []string{"http://10.0.0.1:5001", "http://10.0.0.2:5001"}
	asker, err := New(Options{Self: peers[0], Peers: peers, Secret: []byte(secret), Clock: systemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	owner, err := New(Options{Self: peers[1], Peers: peers, Secret: []byte(secret), Clock: systemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	ln := newPipeListener()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mac, err := owner.Verify(r)
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		handle(owner, mac, w, r)
	})}
	go srv.Serve(ln)
	tr := asker.opts.Client.Transport.(*http.Transport)
	tr.DialContext = ln.dial
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		ln.Close()
	})
	return asker, &Peer{set: asker, url: peers[1]}
}

func isDown(s *Set, peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.down[peer]
	return ok
}

// TestAnOwnerErrorWhoseBodyNeverComesIsBounded: an owner (hung, or a
// neighbour between two replicas that holds an answer back) sends the
// headers of a signed 404 at once, then nothing of its body. The headers
// came within the stall timeout, and the ask's timer is stopped; the body
// of an answer that is not a success is read (Peer.answer) with no timer
// at all. The asker's client request has no deadline of its own (as a
// blob download's detached context, or a client that waits): the ask must
// still end, a failure to answer, within the stall timeout, and the owner
// be passed over; not wait as long as the client.
func TestAnOwnerErrorWhoseBodyNeverComesIsBounded(t *testing.T) {
	for _, kind := range []string{KindManifest, KindBlob} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				asker, peer := pipeOwner(t, func(owner *Set, mac string, w http.ResponseWriter, r *http.Request) {
					body := []byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
					w.Header().Set("Content-Type", "application/json")
					w.Header().Set("Content-Length", strconv.Itoa(len(body)))
					owner.SignAnswer(w.Header(), mac, http.StatusNotFound, body)
					w.WriteHeader(http.StatusNotFound)
					w.(http.Flusher).Flush()
					<-r.Context().Done() // the body never comes
				})
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				done := make(chan error, 1)
				go func() {
					a := Ask{Kind: kind, Upstream: "docker.io", Repo: "library/app", Ref: "v1", Digest: digest.FromString("b")}
					if kind == KindManifest {
						_, _, err := peer.GetManifest(ctx, a)
						done <- err
						return
					}
					rc, _, err := peer.GetBlob(ctx, a)
					if rc != nil {
						rc.Close()
					}
					done <- err
				}()
				time.Sleep(asker.opts.StallTimeout + time.Second)
				select {
				case err := <-done:
					if err == nil || standing(err) {
						t.Errorf("the ask ended with %v; want a failure to answer", err)
					}
					if !isDown(asker, peer.url) {
						t.Error("the owner that did not send its answer is not passed over")
					}
				default:
					t.Errorf("the ask still waits for the owner's error body %s after its headers (stall timeout %s)",
						asker.opts.StallTimeout+time.Second, asker.opts.StallTimeout)
					cancel()
					<-done
				}
			})
		})
	}
}

// standing is what mirror tells an owner's answer by: an *errcode.Error.
func standing(err error) bool {
	var answer *errcode.Error
	return errors.As(err, &answer)
}

// TestAnOwnerThatTricklesAManifestIsPassedOver: an owner sends a
// manifest's headers at once, then a byte every 10 s. The ask gives up
// after the stall timeout (the body's timer), and the client's request
// goes on here. The owner did not answer within its time, as one whose
// headers come late: it must be passed over as that one is. Otherwise
// every manifest request of every client here waits the stall timeout for
// it again, while it trickles.
func TestAnOwnerThatTricklesAManifestIsPassedOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		asker, peer := pipeOwner(t, func(owner *Set, mac string, w http.ResponseWriter, r *http.Request) {
			body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			owner.SignAnswer(w.Header(), mac, http.StatusOK, body)
			w.WriteHeader(http.StatusOK)
			for _, b := range body {
				w.Write([]byte{b})
				w.(http.Flusher).Flush()
				select {
				case <-time.After(10 * time.Second):
				case <-r.Context().Done():
					return
				}
			}
		})
		start := time.Now()
		_, _, err := peer.GetManifest(t.Context(), Ask{Kind: KindManifest, Upstream: "docker.io", Repo: "library/app", Ref: "v1"})
		if err == nil {
			t.Fatal("a manifest trickled for longer than the stall timeout was taken")
		}
		if took := time.Since(start); took > asker.opts.StallTimeout+time.Second {
			t.Errorf("the ask took %s, past the stall timeout %s", took, asker.opts.StallTimeout)
		}
		if !isDown(asker, peer.url) {
			t.Errorf("the owner that trickled a manifest past the stall timeout is not passed over: every manifest it owns costs each client %s", asker.opts.StallTimeout)
		}
	})
}
