package replicas

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// MaxWait bounds how long an owner works on a variant before it answers
// that it is still at work; an asker asks for no more.
const MaxWait = 10 * time.Minute

// maxAccept bounds the media types an ask may list.
const maxAccept = 32

// Ask is what a replica asks of an owner: the work of one kind, for one
// repository of one upstream, read as the asker's client would read it.
type Ask struct {
	Kind string // KindBlob, KindManifest or KindVariant
	// Upstream and Repo name the repository; Config is the fingerprint
	// of the asker's configuration of the upstream (upstream.Registry's),
	// which must be the owner's for its answer to be the asker's.
	Upstream, Repo, Config string
	// Digest is the blob's, or the variant's original's.
	Digest digest.Digest
	// Ref is the manifest's tag or digest; Accept what the client takes.
	Ref    string
	Accept []string
	// Rules is the variant's rule set (ruleset.Set.Key); Wait how long the
	// owner may work before it answers that it is still at work (0: until
	// done, warm).
	Rules string
	Wait  time.Duration
	// Budget is how many upstream requests the work may still cost.
	Budget int
}

func (a Ask) path() string {
	switch a.Kind {
	case KindBlob:
		return BlobPath
	case KindManifest:
		return ManifestPath
	}
	return VariantPath
}

func (a Ask) query() url.Values {
	q := url.Values{"upstream": {a.Upstream}, "repo": {a.Repo}, "config": {a.Config}, "budget": {strconv.Itoa(a.Budget)}}
	switch a.Kind {
	case KindBlob:
		q.Set("digest", a.Digest.String())
	case KindManifest:
		q.Set("ref", a.Ref)
		q["accept"] = a.Accept
	case KindVariant:
		q.Set("digest", a.Digest.String())
		q.Set("rules", a.Rules)
		if a.Wait > 0 {
			q.Set("wait", a.Wait.String())
		}
	}
	return q
}

// configMAC is how an ask carries the asker's configuration of the
// upstream: its fingerprint, under the shared secret (it hashes
// credentials).
func (s *Set) configMAC(fingerprint string) string { return s.mac("config", fingerprint)[:32] }

// SameConfig reports whether an ask's Config is fingerprint's, the owner's
// configuration of the upstream.
func (s *Set) SameConfig(a Ask, fingerprint string) bool {
	return hmac.Equal([]byte(a.Config), []byte(s.configMAC(fingerprint)))
}

// ErrMisdirected is why an owner refused an ask as such (not the work it
// asks for): its configuration differs, or the ask is malformed. The
// asker does the work itself.
var ErrMisdirected = errors.New("not an ask this replica can answer as the asker's owner")

// Misdirected is the owner's answer to an ask it cannot answer for the
// asker: 421, which the asker takes as a failure to answer, never as the
// upstream's no.
func Misdirected(why string) *errcode.Error {
	return errcode.New(http.StatusMisdirectedRequest, errcode.Unsupported, why, ErrMisdirected)
}

// ParseAsk reads the ask of kind that r (verified: Set.Verify) carries.
// What is malformed is Misdirected; names and references are checked by
// the caller, which serves them.
func ParseAsk(r *http.Request, kind string) (Ask, error) {
	q := r.URL.Query()
	one := func(k string) (string, error) {
		if v := q[k]; len(v) == 1 {
			return v[0], nil
		}
		return "", Misdirected(fmt.Sprintf("%s: want one", k))
	}
	a := Ask{Kind: kind}
	var err error
	if a.Upstream, err = one("upstream"); err != nil {
		return Ask{}, err
	}
	if a.Repo, err = one("repo"); err != nil {
		return Ask{}, err
	}
	if a.Config, err = one("config"); err != nil {
		return Ask{}, err
	}
	budget, err := one("budget")
	if err != nil {
		return Ask{}, err
	}
	if a.Budget, err = strconv.Atoi(budget); err != nil || a.Budget < 0 {
		return Ask{}, Misdirected("budget: not a count")
	}
	if kind == KindManifest {
		if a.Ref, err = one("ref"); err != nil {
			return Ask{}, err
		}
		if a.Accept = q["accept"]; len(a.Accept) > maxAccept {
			return Ask{}, Misdirected("accept: too many media types")
		}
		return a, nil
	}
	d, err := one("digest")
	if err != nil {
		return Ask{}, err
	}
	if a.Digest, err = digest.Parse(d); err != nil {
		return Ask{}, Misdirected("digest: " + err.Error())
	}
	if kind == KindVariant {
		if a.Rules, err = one("rules"); err != nil {
			return Ask{}, err
		}
		if w := q["wait"]; len(w) == 1 {
			if a.Wait, err = time.ParseDuration(w[0]); err != nil || a.Wait <= 0 || a.Wait > MaxWait {
				return Ask{}, Misdirected("wait: not a duration up to " + MaxWait.String())
			}
		}
	}
	return a, nil
}
