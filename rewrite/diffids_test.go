package rewrite

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestDiffIDs: a diff ID that is the compressed blob's digest, and a list
// shorter than the layers, are what the config alone shows (CheckDiffIDs
// names the layer to read, or every layer); with the layers' diff IDs the
// config gets them, nothing else in it changes, the layers stay (golden),
// and a second pass changes nothing. Without the rule nothing changes.
func TestDiffIDs(t *testing.T) {
	t.Parallel()
	var diffIDs map[digest.Digest]digest.Digest
	if err := json.Unmarshal(readFile(t, "testdata/diffids", "diffids.json"), &diffIDs); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		count     bool
		suspect   []int // the layers CheckDiffIDs names
		wantPaths []string
	}{
		{"wrong", false, []int{1}, []string{"rootfs.diff_ids[1]"}},
		{"short", true, []int{0, 1, 2}, []string{"rootfs.diff_ids[1]", "rootfs.diff_ids[2]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join("testdata/diffids", tc.name)
			in, config := readFile(t, dir, "manifest.json"), readFile(t, dir, "config.json")
			plan, err := PlanManifest(MediaTypeDockerManifest, in)
			if err != nil {
				t.Fatal(err)
			}
			check := CheckDiffIDs(plan, config)
			var want []digest.Digest
			for _, i := range tc.suspect {
				want = append(want, plan.Layers[i].Digest)
			}
			if !check.Applies || check.Count != tc.count || !slices.Equal(check.Suspect, want) {
				t.Fatalf("check %+v, want count %v and suspects %v", check, tc.count, want)
			}
			got, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: config, DiffIDs: diffIDs, FixDiffIDs: true})
			if err != nil {
				t.Fatal(err)
			}
			changes, _ := json.MarshalIndent(got.Changes, "", "  ")
			golden(t, dir+"/want.json", got.Content)
			golden(t, dir+"/want-config.json", got.Config)
			golden(t, dir+"/changes.json", append(changes, '\n'))
			var paths []string
			for _, c := range got.Changes {
				if c.Kind != KindDiffIDs {
					t.Errorf("change %+v", c)
				}
				paths = append(paths, c.Path)
			}
			if !slices.Equal(paths, tc.wantPaths) {
				t.Errorf("changed %v, want %v", paths, tc.wantPaths)
			}
			// The config: its diff IDs the layers', nothing else changed.
			var before, after ocispec.Image
			json.Unmarshal(config, &before)
			json.Unmarshal(got.Config, &after)
			for i, l := range plan.Layers {
				before.RootFS.DiffIDs = append(before.RootFS.DiffIDs[:min(i, len(before.RootFS.DiffIDs))], diffIDs[l.Digest])
			}
			if !reflect.DeepEqual(before, after) || got.ConfigDesc.Digest != digest.FromBytes(got.Config) || got.Digest != digest.FromBytes(got.Content) {
				t.Fatalf("config:\n%s\nwant only its diff IDs changed to the layers'", got.Config)
			}
			// The manifest: the config descriptor alone.
			newPlan, _ := PlanManifest(MediaTypeDockerManifest, got.Content)
			if !reflect.DeepEqual(newPlan.Layers, plan.Layers) || newPlan.Config.Digest != got.ConfigDesc.Digest {
				t.Fatalf("manifest:\n%s", got.Content)
			}
			if again := CheckDiffIDs(newPlan, got.Config); again.Count || len(again.Suspect) != 0 {
				t.Errorf("the variant still looks suspect: %+v", again)
			}
			again, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: got.Content, Config: got.Config, DiffIDs: diffIDs, FixDiffIDs: true})
			if err != nil || again.Changed() {
				t.Fatalf("second pass: %v %+v", err, again.Changes)
			}
			off, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: config, DiffIDs: diffIDs})
			if err != nil || off.Changed() || !bytes.Equal(off.Content, in) {
				t.Fatalf("without the rule: %v %+v", err, off.Changes)
			}
			// A list whose length is wrong is made anew only from every
			// layer's diff ID; a list of the right length gets what is known.
			partial := map[digest.Digest]digest.Digest{plan.Layers[1].Digest: diffIDs[plan.Layers[1].Digest]}
			res, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: config, DiffIDs: partial, FixDiffIDs: true})
			if err != nil || res.Changed() == tc.count {
				t.Fatalf("with layer 1's diff ID alone: %v %+v", err, res.Changes)
			}
		})
	}
}

// TestCheckDiffIDs: what the config alone makes suspect, and what it does
// not.
func TestCheckDiffIDs(t *testing.T) {
	t.Parallel()
	l := func(mediaType, name string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromString(name), Size: 1}
	}
	cfg := func(ids ...string) []byte {
		b, _ := json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": ids}})
		return b
	}
	gz, plain, oci := l(MediaTypeDockerLayerGzip, "gz"), l(MediaTypeDockerLayer, "plain"), l(ocispec.MediaTypeImageLayer, "oci")
	foreign := l("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "foreign")
	tar := digest.FromString("tar").String()
	for _, tc := range []struct {
		name    string
		layers  []ocispec.Descriptor
		config  []byte
		applies bool
		suspect []ocispec.Descriptor
	}{
		{"right", []ocispec.Descriptor{gz, plain}, cfg(tar, plain.Digest.String()), true, nil},
		{"compressed digest", []ocispec.Descriptor{gz}, cfg(gz.Digest.String()), true, []ocispec.Descriptor{gz}},
		{"another layer's digest", []ocispec.Descriptor{plain, gz}, cfg(plain.Digest.String(), plain.Digest.String()), true, []ocispec.Descriptor{gz}},
		{"plain tar, another diff ID", []ocispec.Descriptor{plain, oci}, cfg(tar, tar), true, []ocispec.Descriptor{plain, oci}},
		{"no digest", []ocispec.Descriptor{gz}, cfg("tar"), true, []ocispec.Descriptor{gz}},
		{"long", []ocispec.Descriptor{gz}, cfg(tar, tar), true, []ocispec.Descriptor{gz}},
		{"short, foreign not read", []ocispec.Descriptor{foreign, gz, gz}, cfg(tar), true, []ocispec.Descriptor{gz}},
		{"one blob, two diff IDs", []ocispec.Descriptor{gz, gz}, cfg(tar, gz.Digest.String()), false, nil},
		{"not an image config", []ocispec.Descriptor{gz}, []byte(`{"rootfs":{"type":"other","diff_ids":[]}}`), false, nil},
		{"not JSON", []ocispec.Descriptor{gz}, []byte(`{`), false, nil},
	} {
		got := CheckDiffIDs(ManifestPlan{Layers: tc.layers}, tc.config)
		var want []digest.Digest
		for _, d := range tc.suspect {
			want = append(want, d.Digest)
		}
		if got.Applies != tc.applies || !slices.Equal(got.Suspect, want) {
			t.Errorf("%s: %+v, want applies %v, suspects %v", tc.name, got, tc.applies, want)
		}
	}
}

// FuzzDiffIDs: whatever the manifest and config, the check names only
// layers the manifest lists; a changed config lists exactly the diff IDs
// given for the layers (where it changed), both digests verify, and a
// second pass changes nothing.
func FuzzDiffIDs(f *testing.F) {
	for _, pattern := range []string{"testdata/manifest/*", "testdata/diffids/*"} {
		dirs, _ := filepath.Glob(pattern)
		for _, dir := range dirs {
			m, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
			c, _ := os.ReadFile(filepath.Join(dir, "config.json"))
			f.Add(m, c, true)
			f.Add(m, c, false)
		}
	}
	f.Fuzz(func(t *testing.T, manifest, config []byte, all bool) {
		const mt = MediaTypeDockerManifest
		plan, err := PlanManifest(mt, manifest)
		if err != nil {
			return
		}
		check := CheckDiffIDs(plan, config)
		diffIDs := map[digest.Digest]digest.Digest{}
		for _, d := range check.Suspect {
			if !slices.ContainsFunc(plan.Layers, func(l ocispec.Descriptor) bool { return l.Digest == d }) {
				t.Fatalf("suspect %s is no layer", d)
			}
		}
		for i, l := range plan.Layers {
			if all || i%2 == 0 {
				diffIDs[l.Digest] = digest.FromString("diff " + l.Digest.String())
			}
		}
		got, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: manifest, Config: config, DiffIDs: diffIDs, FixDiffIDs: true})
		if err != nil || got.Config == nil {
			return
		}
		if got.ConfigDesc.Digest != digest.FromBytes(got.Config) || got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("a digest does not verify")
		}
		for _, c := range got.Changes {
			if c.Kind != KindDiffIDs {
				continue
			}
			var i int
			if _, err := json.Number(c.Path[len("rootfs.diff_ids[") : len(c.Path)-1]).Int64(); err != nil {
				t.Fatalf("change path %q", c.Path)
			}
			i, _ = strconv.Atoi(c.Path[len("rootfs.diff_ids[") : len(c.Path)-1])
			if i < len(plan.Layers) && c.New != diffIDs[plan.Layers[i].Digest].String() {
				t.Fatalf("%s = %s, want the layer's %s", c.Path, c.New, diffIDs[plan.Layers[i].Digest])
			}
		}
		again, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: got.Content, Config: got.Config, DiffIDs: diffIDs, FixDiffIDs: true})
		if err != nil || again.Changed() {
			t.Fatalf("second pass: %v %+v", err, again.Changes)
		}
	})
}
