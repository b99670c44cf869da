package attest_test

import (
	"bytes"
	"encoding/json"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/proxy/attest"
)

func derivation() attest.Derivation {
	return attest.Derivation{
		Repository: "library/app",
		Upstream:   "docker.io",
		Variant:    attest.Object{Digest: digest.FromString("variant"), MediaType: ocispec.MediaTypeImageManifest},
		Original:   attest.Object{Digest: digest.FromString("original"), MediaType: "application/vnd.docker.distribution.manifest.v2+json"},
		Rules:      "diffIDs,layerMediaType",
		Changes: []attest.Change{
			{Kind: "diffIDs", Path: "rootfs.diff_ids[0]", Old: digest.FromString("a").String(), New: digest.FromString("b").String()},
			{Kind: "symlinkXattrs", Path: "layers[1]", Old: digest.FromString("c").String(), New: digest.FromString("d").String(),
				Details: []string{"usr/bin/x: security.capability <&>"}},
		},
		UnlistedChanges: 2,
		Version:         "v1.2.3",
	}
}

// TestStatement: the statement is an in-toto Statement v1 whose one
// subject is the variant under the repository's name, with regnorm's
// predicate type, and a predicate that names the original, the upstream
// and repository, the rules, each change and regnorm's version.
func TestStatement(t *testing.T) {
	t.Parallel()
	d := derivation()
	b, err := attest.NewStatement(d)
	if err != nil {
		t.Fatal(err)
	}
	var got attest.Statement
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Type != "https://in-toto.io/Statement/v1" || got.PredicateType != attest.PredicateType {
		t.Errorf("_type %q, predicateType %q", got.Type, got.PredicateType)
	}
	if len(got.Subject) != 1 || got.Subject[0].Name != "library/app" || len(got.Subject[0].Digest) != 1 ||
		got.Subject[0].Digest["sha256"] != d.Variant.Digest.Encoded() {
		t.Errorf("subject %+v, want library/app with the variant's sha256", got.Subject)
	}
	p := got.Predicate
	if p.Original != d.Original || p.Upstream != "docker.io" || p.Repository != "library/app" || p.Rules != d.Rules ||
		p.Regnorm.Version != "v1.2.3" || p.UnlistedChanges != 2 {
		t.Errorf("predicate %+v", p)
	}
	if len(p.Changes) != 2 || p.Changes[1].Old != d.Changes[1].Old || p.Changes[1].New != d.Changes[1].New ||
		p.Changes[1].Details[0] != d.Changes[1].Details[0] {
		t.Errorf("changes %+v, want %+v", p.Changes, d.Changes)
	}
	// No HTML escapes, no newline at the end, and no time anywhere.
	if bytes.Contains(b, []byte(`\u003c`)) || bytes.HasSuffix(b, []byte("\n")) {
		t.Errorf("encoding: %s", b)
	}
}

// TestStatementDeterministic: the same derivation makes the same bytes,
// its keys in sorted order (each object's, at every level), and another
// derivation other bytes.
func TestStatementDeterministic(t *testing.T) {
	t.Parallel()
	a, err := attest.NewStatement(derivation())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := attest.NewStatement(derivation())
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("second statement differs (%v):\n%s\n%s", err, a, b)
		}
	}
	// The keys are sorted: re-encoding through a map (which encoding/json
	// writes sorted) gives the same bytes.
	var generic any
	if err := json.Unmarshal(a, &generic); err != nil {
		t.Fatal(err)
	}
	var sorted bytes.Buffer
	enc := json.NewEncoder(&sorted)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(generic); err != nil {
		t.Fatal(err)
	}
	if got := bytes.TrimSuffix(sorted.Bytes(), []byte("\n")); !bytes.Equal(got, a) {
		t.Errorf("keys not in sorted order:\n%s\nsorted:\n%s", a, got)
	}
	other := derivation()
	other.Upstream = "ghcr.io"
	if b, _ := attest.NewStatement(other); bytes.Equal(a, b) {
		t.Error("another upstream made the same statement")
	}
}

// TestStatementRefuses: a variant digest that is not sha256 (the subject's
// only digest) or an invalid original is an error, never a statement.
func TestStatementRefuses(t *testing.T) {
	t.Parallel()
	for name, mutate := range map[string]func(*attest.Derivation){
		"sha512 variant":   func(d *attest.Derivation) { d.Variant.Digest = digest.SHA512.FromString("v") },
		"invalid original": func(d *attest.Derivation) { d.Original.Digest = "sha256:nope" },
	} {
		d := derivation()
		mutate(&d)
		if b, err := attest.NewStatement(d); err == nil {
			t.Errorf("%s: made %s", name, b)
		}
	}
}
