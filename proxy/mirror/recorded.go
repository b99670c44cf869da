package mirror

import (
	"context"
	"errors"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// Recorded is what the cache records of the variant of an image
// (Repository.Recorded).
type Recorded struct {
	// Made: the image names a variant regnorm made. It is its own answer:
	// a variant is not made again.
	Made bool
	// Variant is the manifest to name in place of the image's: the
	// variant's when the rules change the original, the image's own when
	// Made (when it is cached here). Zero when the rules leave the
	// original as it is.
	Variant cache.Manifest
}

// Recorded is the variant of the manifest dgst under rules as far as the
// cache records it, read as the repository's client: what a client would
// be answered at once, without asking the upstream, computing or writing
// anything (no link is learnt: a dry run's answer leaves the cache as it
// was). ok is false when something it takes is not recorded: that the
// client is admitted to dgst here (access.go), its manifest, its verdict
// under rules, or the variant's manifest (cached and admitted too).
func (r *Repository) Recorded(ctx context.Context, dgst digest.Digest, rules ruleset.Set) (rec Recorded, ok bool, err error) {
	if _, made, err := r.derivedRecord(ctx, object{dgst: dgst}); err != nil {
		return Recorded{}, false, err
	} else if made {
		m, cached, err := r.cached(ctx, dgst)
		if err != nil {
			return Recorded{}, false, err
		}
		rec := Recorded{Made: true}
		if cached {
			rec.Variant = m
		}
		return rec, true, nil
	}
	m, cached, err := r.cached(ctx, dgst)
	switch {
	case err != nil || !cached:
		return Recorded{}, false, err
	case !normalize.MayNeed(m, rules):
		return Recorded{}, true, nil
	}
	n, ok := r.s.engine.Verdict(ctx, m, rules)
	switch {
	case !ok:
		return Recorded{}, false, nil
	case n.Normalized == "":
		return Recorded{}, true, nil
	}
	v, cached, err := r.cached(ctx, n.Normalized)
	if err != nil || !cached {
		return Recorded{}, false, err
	}
	return Recorded{Variant: v}, true, nil
}

// cached is the manifest dgst names when the cache holds it and the
// client is known to be admitted to it here, without asking the upstream
// or writing a link. ok is false when either is not known.
func (r *Repository) cached(ctx context.Context, dgst digest.Digest) (m cache.Manifest, ok bool, err error) {
	admitted, _, _, err := r.judge(ctx, object{dgst: dgst})
	if err != nil || !admitted {
		return cache.Manifest{}, false, err
	}
	m, err = r.s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), dgst)
	if errors.Is(err, cache.ErrNotFound) {
		return cache.Manifest{}, false, nil
	}
	return m, err == nil, err
}

// What Blobs reads and returns at most.
const (
	// MaxChildrenRead bounds the index children Blobs reads, at every
	// depth together.
	MaxChildrenRead = 128
	// MaxBlobsNamed bounds the blobs Blobs returns.
	MaxBlobsNamed = 4096
)

// Blobs are the blobs a Pod that names m here depends on, so that they
// can be kept from eviction (what the webhook pins): the config and layers
// of an image manifest; for an index, those of its children the cache
// holds (a child no platform read has nothing cached to keep), down to the
// depth the engine makes variants at (normalize.MaxIndexDepth: an index
// deeper is the upstream's own). Bounded: MaxChildrenRead children read,
// MaxBlobsNamed blobs. A document regnorm does not read (schema 1, say)
// names nothing here. It reads the cache, and asks the upstream only to
// admit a child (below); an error is the cache's or the upstream's.
//
// Children are admitted as a read of them would be (access.go): from
// what regnorm knows, else by asking the upstream as the repository's
// client (a HEAD, and its bytes once). An index can list any digest as a
// child, another repository's private manifest too: what the repository
// may not read is not pinned for it. A variant recorded from another
// repository's pull has children not linked here yet: the upstream is
// asked about each once (the pinner's budget), and links are learnt.
// Each blob is named once.
func (r *Repository) Blobs(ctx context.Context, m cache.Manifest) ([]digest.Digest, error) {
	var out []digest.Digest
	named := map[digest.Digest]bool{}
	read := 0
	var walk func(m cache.Manifest, depth int) error
	walk = func(m cache.Manifest, depth int) error {
		blobs, children := normalize.Names(m)
		for _, b := range blobs {
			if len(out) == MaxBlobsNamed {
				break
			}
			if !named[b] {
				named[b] = true
				out = append(out, b)
			}
		}
		if depth >= normalize.MaxIndexDepth {
			return nil // an index this deep is the upstream's own
		}
		for _, c := range children {
			if read == MaxChildrenRead || len(out) == MaxBlobsNamed {
				return nil
			}
			read++
			cm, err := r.s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), c)
			switch {
			case errors.Is(err, cache.ErrNotFound):
				continue // nothing cached to keep
			case err != nil:
				return err
			}
			// Read before the client is admitted, used only once it is.
			if err := r.admit(ctx, object{dgst: c}); err != nil {
				if s := errcode.StatusOf(err); s >= 400 && s < 500 {
					continue // not this repository's to read: not pinned for it
				}
				return err
			}
			if err := walk(cm, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	err := walk(m, 0)
	return out, err
}
