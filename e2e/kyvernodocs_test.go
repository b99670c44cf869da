package e2e

import (
	"os"
	"strings"
	"testing"
)

// TestKyvernoPolicyInDocs: the worked policy of docs/signatures.md is
// testdata/kyverno/policy.yaml, byte for byte, so the policy the e2e test
// (TestKyvernoPolicyAcceptsOriginalAndVariant) applies is the one the docs
// show. It needs no tools, so it carries no build tag.
func TestKyvernoPolicyInDocs(t *testing.T) {
	policy, err := os.ReadFile("testdata/kyverno/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := os.ReadFile("../docs/signatures.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(docs), "\n```yaml\n"+string(policy)+"```\n") {
		t.Fatal("docs/signatures.md does not show testdata/kyverno/policy.yaml verbatim in a yaml block: copy it there")
	}
}
