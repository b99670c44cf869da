package verify

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Bounds of what is read from the registry holding the attestation.
const (
	// maxEnvelopeSize caps an envelope read: a predicate is bounded as the
	// rewrite report is (100 changes, 64 KiB of details), far below it.
	maxEnvelopeSize = 4 << 20
	// maxCandidates is how many attestation manifests of the predicate's
	// type are read for one variant.
	maxCandidates = 8
)

// Outcome is what a verification concluded.
type Outcome string

// Outcomes: cmd/proxy maps each to an exit status.
const (
	// Identical: the attestation holds, and the variant derived again from
	// its original has the variant's digest.
	Identical Outcome = "identical"
	// Invalid: no attestation, a signature that does not verify, or a
	// statement that does not describe the variant asked.
	Invalid Outcome = "attestation-invalid"
	// Differs: the attestation holds, but the variant derived again from
	// the original it names, under its rules, is another digest.
	Differs Outcome = "differs"
	// OriginalUnsigned: the attestation holds, but the original it names
	// has no cosign signature that verifies with the original's key
	// (Options.OriginalKey) and names it.
	OriginalUnsigned Outcome = "original-signature-invalid"
)

// Check statuses.
const (
	OK   = "OK"
	Fail = "FAIL"
	Skip = "SKIP"
)

// Check is one thing verified, and what was found.
type Check struct {
	Name   string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

// Report is a verification: each check in order, and the outcome. It stops
// at the first check that fails.
type Report struct {
	Variant     digest.Digest     `json:"variant"`
	Attestation digest.Digest     `json:"attestation,omitempty"`
	Predicate   *attest.Predicate `json:"predicate,omitempty"`
	Rederived   digest.Digest     `json:"rederived,omitempty"`
	Checks      []Check           `json:"checks"`
	Outcome     Outcome           `json:"outcome"`
}

func (r *Report) add(name, status, detail string) {
	r.Checks = append(r.Checks, Check{Name: name, Status: status, Detail: detail})
}

// invalid records a failed check of the attestation and ends the report.
func (r *Report) invalid(name, format string, args ...any) Report {
	r.add(name, Fail, fmt.Sprintf(format, args...))
	r.Outcome = Invalid
	return *r
}

// Metrics are the metrics of the parts a re-derivation runs (the engine,
// the repository service, the downloads); the caller registers them.
type Metrics struct {
	Engine normalize.Metrics
	Mirror mirror.Metrics
	Fetch  *blobfetch.Metrics
}

// Options configure a verification.
type Options struct {
	// Holder is the repository that holds the variant's attestation: the
	// mirror's, or any registry's copy.
	Holder *upstream.Repository
	// Origin is the client of the upstream a predicate names, where its
	// original is fetched from (an error when it cannot be reached).
	Origin func(name string) (*upstream.Registry, error)
	// Key verifies the envelope's signature; nil leaves it unchecked (the
	// report says so).
	Key crypto.PublicKey
	// OriginalKey, when set, is the key the original must be signed with
	// (the vendor's cosign key): a signature of the original's digest in
	// its upstream, classic or bundle, must verify with it.
	OriginalKey crypto.PublicKey
	// Original, when set, is the original the variant must be made from
	// (the digest the vendor signed, say): a predicate naming another is
	// refused.
	Original digest.Digest
	// Platforms are the children of an index read, as the mirror's
	// normalize.platforms: an index's rules name them by a hash.
	Platforms normalize.Platforms
	Metrics   Metrics
	Log       *slog.Logger
}

// Verify verifies variant: it returns the report, or an error when it
// could not tell (a registry that does not answer, a network failure),
// which is not a verdict on the variant.
func Verify(ctx context.Context, opts Options, variant digest.Digest) (Report, error) {
	rep := Report{Variant: variant}
	if variant.Algorithm() != digest.SHA256 {
		return rep, fmt.Errorf("variant digest %s: attestations name sha256 digests", variant)
	}
	found, err := find(ctx, opts.Holder, variant)
	if err != nil {
		return rep, err
	}
	if len(found) == 0 {
		return rep.invalid("attestation", "none in %s: no referrer of type %s with predicate %s, and no tag %s",
			opts.Holder.Name(), attest.MediaTypeEnvelope, attest.PredicateType, attest.TagOf(variant)), nil
	}

	// The first that verifies with the key (or, with none, the first) and
	// is about this digest: a holder that lists another variant's signed
	// attestation first does not hide this one's.
	var statement []byte
	var at envelope
	var firstErr error
	for _, f := range found {
		var st []byte
		var err error
		if opts.Key != nil {
			st, err = attest.Verify(ctx, f.content, opts.Key)
		} else {
			st, err = attest.Payload(f.content)
		}
		if err == nil && !namesSubject(st, variant) && len(found) > 1 {
			err = fmt.Errorf("an attestation of another subject")
		}
		if err == nil {
			statement, at = st, f
			break
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if statement == nil {
		rep.add("attestation", OK, fmt.Sprintf("%d found (%s)", len(found), found[0].where))
		return rep.invalid("signature", "%v", firstErr), nil
	}
	rep.Attestation = at.manifest
	rep.add("attestation", OK, fmt.Sprintf("%s (%s)", at.manifest, at.where))
	if opts.Key != nil {
		rep.add("signature", OK, "verified with the key given")
	} else {
		rep.add("signature", Skip, "not checked: no key given; anyone between you and the registry could have written this attestation")
	}

	var st attest.Statement
	if err := json.Unmarshal(statement, &st); err != nil {
		return rep.invalid("statement", "not an in-toto statement: %v", err), nil
	}
	switch {
	case st.Type != attest.StatementType:
		return rep.invalid("statement", "_type %q, want %q", st.Type, attest.StatementType), nil
	case st.PredicateType != attest.PredicateType:
		return rep.invalid("statement", "predicate type %q, want %q", st.PredicateType, attest.PredicateType), nil
	case len(st.Subject) != 1 || st.Subject[0].Digest["sha256"] != variant.Encoded():
		return rep.invalid("statement", "its subject is not %s: %+v", variant, st.Subject), nil
	}
	p := st.Predicate
	rep.Predicate = &p
	rep.add("statement", OK, fmt.Sprintf("subject %s@%s, predicate %s", st.Subject[0].Name, variant, attest.PredicateType))

	rules, platformsKey, err := parseRules(p.Rules)
	switch {
	case p.Original.Digest.Validate() != nil:
		return rep.invalid("predicate", "original digest %q is not a digest", p.Original.Digest), nil
	case p.Upstream == "":
		return rep.invalid("predicate", "names no upstream"), nil
	case !validPath(p.Repository):
		return rep.invalid("predicate", "repository %q is not a repository name", p.Repository), nil
	case p.Repository != st.Subject[0].Name:
		return rep.invalid("predicate", "repository %q, but the subject is named %q", p.Repository, st.Subject[0].Name), nil
	case err != nil:
		return rep.invalid("predicate", "rules %q: %v", p.Rules, err), nil
	case opts.Original != "" && p.Original.Digest != opts.Original:
		return rep.invalid("predicate", "names original %s, not %s", p.Original.Digest, opts.Original), nil
	}
	rep.add("predicate", OK, fmt.Sprintf("original %s/%s@%s, rules %s, regnorm %s", p.Upstream, p.Repository, p.Original.Digest, p.Rules, p.Regnorm.Version))

	if platformsKey != "" && platformsKey != opts.Platforms.Key() {
		return rep, fmt.Errorf("the variant was made reading an index's platforms %s, and those given hash to %s: give the mirror's normalize.platforms (--platforms)", platformsKey, opts.Platforms.Key())
	}
	origin, err := opts.Origin(p.Upstream)
	if err != nil {
		return rep, err
	}
	if opts.OriginalKey != nil {
		c, err := originalSignature(ctx, origin.Repository(p.Repository), p.Original.Digest, opts.OriginalKey)
		switch {
		case err != nil:
			return rep, fmt.Errorf("check the original's signature: %w", err)
		case c.verified != "":
			rep.add("original-sig", OK, fmt.Sprintf("%s verified with the original's key", c.verified))
		case c.found == 0:
			rep.add("original-sig", Fail, fmt.Sprintf("%s/%s@%s: no cosign signature in %s (referrers, tag %s)", p.Upstream, p.Repository, p.Original.Digest,
				origin.Endpoint(), cosign.SignatureTag(p.Original.Digest)))
			rep.Outcome = OriginalUnsigned
			return rep, nil
		default:
			rep.add("original-sig", Fail, fmt.Sprintf("%d signatures of %s, none verifies with the original's key and names it; the first: %v", c.found, p.Original.Digest, c.firstErr))
			rep.Outcome = OriginalUnsigned
			return rep, nil
		}
	}
	repo := newRederiver(opts, p.Limits, origin.Repository(p.Repository))
	orig, err := repo.Manifest(ctx, p.Original.Digest.String(), nil)
	var e *errcode.Error
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
		return rep.invalid("original", "%s/%s@%s: not in its upstream (%s): %v", p.Upstream, p.Repository, p.Original.Digest, origin.Endpoint(), err), nil
	case err != nil:
		return rep, fmt.Errorf("fetch the original: %w", err)
	case orig.MediaType != p.Original.MediaType:
		return rep.invalid("original", "%s is a %s, the predicate says %s", p.Original.Digest, orig.MediaType, p.Original.MediaType), nil
	}
	rep.add("original", OK, fmt.Sprintf("fetched from %s, digest verified", origin.Endpoint()))

	n, err := repo.Variant(ctx, orig.Manifest, rules, 0)
	if err != nil {
		return rep, fmt.Errorf("derive the variant again: %w", err)
	}

	rep.Rederived = n.Manifest.Digest
	if n.Verdict.Rules != p.Rules {
		rep.add("rederived", Fail, fmt.Sprintf("made under rules %q, the predicate says %q", n.Verdict.Rules, p.Rules))
		rep.Outcome = Differs
		return rep, nil
	}
	if rep.Rederived != variant {
		rep.add("rederived", Fail, fmt.Sprintf("%s, not %s: the bytes differ", rep.Rederived, variant))
		rep.Outcome = Differs
		return rep, nil
	}
	if changes := mirror.AttestedChanges(n.Verdict); !slices.EqualFunc(changes, p.Changes, equalChange) || n.Verdict.UnlistedChanges != p.UnlistedChanges {
		// The predicate misstates what the rules changed.
		return rep.invalid("changes", "%s derived again, identical, but the predicate lists other changes than its derivation's", variant), nil
	}
	rep.add("rederived", OK, fmt.Sprintf("%s, identical (%d changes)", variant, len(p.Changes)))
	rep.Outcome = Identical
	return rep, nil
}

// envelope is a DSSE envelope read from the holder, verified against its
// descriptor, and the manifest that carried it.
type envelope struct {
	manifest digest.Digest
	where    string // "referrers" or the tag
	content  []byte
}

// find reads the variant's attestations of regnorm's predicate type from
// repo: those the referrers API lists (the tag schema where there is no
// such API), else the one cosign's .att tag names. Every manifest and blob
// is read bounded and verified against its digest.
func find(ctx context.Context, repo *upstream.Repository, variant digest.Digest) ([]envelope, error) {
	var found []envelope
	refs, refErr := repo.Referrers(ctx, variant)
	if refErr == nil {
		n := 0
		for _, d := range refs.Manifests {
			if d.ArtifactType != attest.MediaTypeEnvelope || n == maxCandidates {
				continue
			}
			n++
			m, err := repo.GetManifest(ctx, d.Digest.String(), []string{ocispec.MediaTypeImageManifest}, d.Digest)
			if err != nil {
				return nil, fmt.Errorf("read the attestation %s: %w", d.Digest, err)
			}
			envs, err := envelopes(ctx, repo, m, "referrers")
			if err != nil {
				return nil, err
			}
			found = append(found, envs...)
		}
		if len(found) > 0 {
			return found, nil
		}
	}
	tag := attest.TagOf(variant)
	m, err := repo.GetManifest(ctx, tag, []string{ocispec.MediaTypeImageManifest}, "")
	var e *errcode.Error
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
		if refErr != nil && !(errors.As(refErr, &e) && e.Status == http.StatusNotFound) {
			return nil, fmt.Errorf("list the referrers of %s: %w", variant, refErr)
		}
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read the tag %s: %w", tag, err)
	}
	return envelopes(ctx, repo, m, "tag "+tag)
}

// envelopes are the DSSE envelopes of regnorm's predicate type in the
// attestation manifest m, read verified.
func envelopes(ctx context.Context, repo *upstream.Repository, m upstream.Manifest, where string) ([]envelope, error) {
	var man ocispec.Manifest
	if err := json.Unmarshal(m.Content, &man); err != nil {
		return nil, fmt.Errorf("the attestation %s is not an image manifest: %w", m.Digest, err)
	}
	var out []envelope
	for _, l := range man.Layers {
		if l.MediaType != attest.MediaTypeEnvelope || l.Annotations[attest.AnnotationPredicateType] != attest.PredicateType {
			continue
		}
		if len(out) == maxCandidates {
			break
		}
		b, err := readBlob(ctx, repo, l)
		if err != nil {
			return nil, fmt.Errorf("the attestation %s: %w", m.Digest, err)
		}
		out = append(out, envelope{manifest: m.Digest, where: where, content: b})
	}
	return out, nil
}

// readBlob reads the blob d describes (an envelope, a signature's bundle
// or payload), within maxEnvelopeSize, and checks its size and digest.
func readBlob(ctx context.Context, repo *upstream.Repository, d ocispec.Descriptor) ([]byte, error) {
	if d.Size < 0 || d.Size > maxEnvelopeSize {
		return nil, fmt.Errorf("a blob of %d bytes (at most %d are read)", d.Size, maxEnvelopeSize)
	}
	if err := d.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest: %w", err)
	}
	b, err := repo.GetBlob(ctx, d.Digest)
	if err != nil {
		return nil, fmt.Errorf("read the blob %s: %w", d.Digest, err)
	}
	defer b.Close()
	content, err := io.ReadAll(io.LimitReader(b, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("read the blob %s: %w", d.Digest, err)
	}
	if int64(len(content)) != d.Size || d.Digest.Algorithm().FromBytes(content) != d.Digest {
		return nil, fmt.Errorf("the blob read as %s is not %s (%d bytes, %d announced)", d.Digest.Algorithm().FromBytes(content), d.Digest, len(content), d.Size)
	}
	return content, nil
}

// parseRules reads a predicate's rules: the rule names, and for an index
// the platforms' key last.
func parseRules(key string) (ruleset.Set, string, error) {
	var names []string
	platforms := ""
	if key != "" {
		names = strings.Split(key, ",")
	}
	if n := len(names); n > 0 && strings.HasPrefix(names[n-1], "platforms-") {
		platforms, names = names[n-1], names[:n-1]
	}
	rules, err := ruleset.Parse(names)
	if err != nil {
		return ruleset.Set{}, "", err
	}
	if rules.Key() != strings.Join(names, ",") {
		return ruleset.Set{}, "", fmt.Errorf("not in regnorm's order (%s)", rules.Key())
	}
	return rules, platforms, nil
}

func validPath(name string) bool {
	_, err := reference.ParseNamed("example.invalid/" + name)
	return name != "" && err == nil
}

func equalChange(a, b attest.Change) bool {
	return a.Kind == b.Kind && a.Path == b.Path && a.Old == b.Old && a.New == b.New && a.Unlisted == b.Unlisted && slices.Equal(a.Details, b.Details)
}

// namesSubject reports whether statement's one subject is variant (its
// full check is below, on the one taken).
func namesSubject(statement []byte, variant digest.Digest) bool {
	var st attest.Statement
	return json.Unmarshal(statement, &st) == nil && len(st.Subject) == 1 && st.Subject[0].Digest["sha256"] == variant.Encoded()
}

// newRederiver is the repository remote as the mirror reads it, over a
// cache of its own in memory: the repository service reads and verifies
// every byte (proxy/mirror), and its Variant has the rule engine
// (proxy/normalize) make the variant. Nothing of a mirror's cache is read.
//
// Under the limits the predicate records (a layer the mirror left
// untouched for its size or zstd window is left untouched here too); past
// those, the engine's defaults.
func newRederiver(opts Options, limits *attest.Limits, remote *upstream.Repository) *mirror.Repository {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	store := cache.New(inmemory.New())
	var svc *mirror.Service
	fetches := blobfetch.New(blobfetch.Options{
		Store: store, Clock: clock{}, Metrics: opts.Metrics.Fetch, Log: log,
		Sent: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) bool {
			return svc.SentBy(ctx, r, dgst)
		},
		OnAnswered: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { svc.Answered(ctx, r, dgst) },
		OnSent:     func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { svc.Sent(ctx, r, dgst) },
	})
	eopts := normalize.Options{
		Store: store, Reports: noReports{}, Metrics: opts.Metrics.Engine, Log: log,
		Platforms: opts.Platforms,
	}
	if limits != nil {
		eopts.MaxLayerSize, eopts.MaxZstdWindow = limits.LayerSize, limits.ZstdWindow
	}
	engine := normalize.New(eopts)
	svc = mirror.New(mirror.Options{Store: store, Fetches: fetches, Engine: engine, Clock: clock{}, Metrics: opts.Metrics.Mirror, Log: log})
	return svc.Repository(remote)
}

type noReports struct{}

func (noReports) Add(cache.ReportEntry) {}

type clock struct{}

func (clock) Now() time.Time                                  { return time.Now() }
func (clock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
