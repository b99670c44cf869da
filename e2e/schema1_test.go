//go:build e2e

package e2e

import (
	"context"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestSchema1Images: containerd 2.3.4 refuses a schema 1 image straight
// from the registry that has it (distribution v2.8.3, which stores schema 1
// and signs it on every read); through regnorm it pulls it converted to
// schema 2 and runs it. Debian's 1.6.20, which converts schema 1 itself,
// gets the original through regnorm and runs it too.
func TestSchema1Images(t *testing.T) {
	reg, err := regtest.StartRegistry2(registry2Bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	registryHost := strings.TrimPrefix(reg.URL, "http://")
	bin, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := regtest.BuildSchema1(regtest.Schema1Options{Name: "library/old", Tag: "v1", Cmd: []string{"/hello"}},
		regtest.Schema1Layer{Files: []regtest.File{{Name: "hello", Mode: 0o755, Content: bin}}},
		regtest.Schema1Layer{Throwaway: true, CreatedBy: `/bin/sh -c #(nop) CMD ["/hello"]`})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: reg.URL}).PushSchema1(context.Background(), "library/old", "v1", img); err != nil {
		t.Fatal(err)
	}
	proxyURL, _ := startRegnorm(t, reg.URL, "")
	ref := "docker.io/library/old:v1"

	node := startContainerdVersion(t, containerd234, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
	if _, err := node.pull(t, registryHost+"/library/old:v1"); err == nil || !strings.Contains(err.Error(), "schema 1 image manifests are no longer supported") {
		t.Fatalf("direct pull on containerd 2.3.4: got %v, want 'schema 1 image manifests are no longer supported'", err)
	}
	if _, err := node.pull(t, ref); err != nil {
		t.Fatalf("containerd 2.3.4 through regnorm: %v", err)
	}
	if got := node.run(t, ref); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q on 2.3.4", got)
	}
	converted := node.repoDigest(t, ref)
	if converted == img.Digest.String() {
		t.Fatal("2.3.4 recorded the schema 1 digest")
	}

	old := startContainerd(t, proxyURL)
	if _, err := old.pull(t, ref); err != nil {
		t.Fatalf("containerd 1.6.20 through regnorm: %v", err)
	}
	if got := old.run(t, ref); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q on 1.6.20", got)
	}
	// containerd 1.x records no repo digest for an image it converted from
	// schema 1: the report says which variant each node got (the
	// original's entry is recorded beside the answer: poll briefly).
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="schema1"`); n != 1 {
		t.Fatalf("schema1 rewrites = %v, want 1", n)
	}
	want := map[string]string{img.Digest.String() + " schema1": "2.3.4", img.Digest.String() + " none": "1.6.20 (original)"}
	var got map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if got = variantReport(t, proxyURL); maps.Equal(got, want) || time.Now().After(deadline) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("report variants:\n got %v\nwant %v", got, want)
	}
}
