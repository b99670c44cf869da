package containerdcfg

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCheck: the table of docs/containerd.md, version by version and
// setting by setting.
func TestCheck(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	v2 := func(registry string) string {
		return "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n" + registry
	}
	v3 := func(images string) string {
		return "version = 3\n[plugins.'io.containerd.cri.v1.images']\n" + images
	}
	tests := []struct {
		name, version, config string
		reads, transfer       bool
		reason                string
	}{
		{"1.6, config_path set", "1.6.20~ds1", v2(`config_path = "/etc/containerd/certs.d"`), true, false, ""},
		{"1.6, config_path unset", "1.6.20~ds1", "version = 2\n", false, false, "config_path is not set"},
		{"1.6, no file at all", "1.6.20", "", false, false, "config_path is not set"},
		{"1.6, a list holding it", "1.6.20", v2(`config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"`), true, false, ""},
		{"1.6, another directory", "1.6.20", v2(`config_path = "/other"`), false, false, `config_path is "/other"`},
		{"1.6, legacy mirrors", "1.6.20", v2("[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n"), false, false, "legacy registry.mirrors"},
		{"1.6, configs.tls beside config_path", "1.6.20", v2("config_path = \"/etc/containerd/certs.d\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n"), false, false, "containerd 1.6 refuses them beside config_path"},
		{"1.6, configs.auth beside config_path", "1.6.20", v2("config_path = \"/etc/containerd/certs.d\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".auth]\nusername = \"bot\"\n"), true, false, ""},
		{"2.3, mirrors beside config_path", "v2.3.4", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\nendpoint = ['https://m']\n"), false, false, "containerd refuses them beside config_path"},
		{"2.3, configs.tls beside config_path: ignored, local pull", "v2.3.4", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n[plugins.'io.containerd.cri.v1.images'.registry.configs.'r.example'.tls]\n"), true, false, ""},
		{"2.0, a list", "v2.0.5", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n"), true, false, ""},
		{"2.1, unset", "v2.1.4", "version = 3\n", false, true, "config_path is not set"},
		{"2.3, unset: the default list", "v2.3.4", "version = 3\n", false, true, "config_path is not set, so containerd 2.3 uses its default, the list \"/etc/containerd/certs.d:/etc/docker/certs.d\": containerd 2.3 pulls through the transfer service, which reads it as one directory"},
		{"2.3, a list without the directory", "v2.3.4", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/a:/b'\n"), false, true, "is the list \"/a:/b\""},
		{"2.3, a list", "v2.3.4", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n"), false, true, "is the list"},
		{"2.3, the directory", "v2.3.4", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n"), true, true, ""},
		{"2.3, a list, local pull", "v2.3.4", v3("use_local_image_pull = true\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n"), true, false, ""},
		{"2.3, a list, max_concurrent_downloads forces local pull", "v2.3.4", v3("max_concurrent_downloads = 5\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n"), true, false, ""},
		{"2.3, a version 2 file", "v2.3.4", v2(`config_path = "/etc/containerd/certs.d"`), true, true, ""},
		{"unknown version, version 3 file, a list", "", v3("[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/x'\n"), false, true, "version is unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			path := filepath.Join(d, "config.toml")
			if tt.config != "" {
				write(t, d, "config.toml", tt.config)
			}
			cfg, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			got := Check(cfg, ParseVersion(tt.version), dir)
			if got.Reads != tt.reads || got.TransferService != tt.transfer || !strings.Contains(Explain(got.Reasons, got.ConfigPath, dir), tt.reason) {
				t.Fatalf("got %+v, want reads %v, transfer %v, reason %q", got, tt.reads, tt.transfer, tt.reason)
			}
			if !got.Reads && !strings.Contains(got.Fix, "config_path = ") && !strings.Contains(got.Fix, "delete") {
				t.Fatalf("no fix: %+v", got)
			}
		})
	}
}

// TestImportsAndDropIn: imports are read after the main file and replace
// whole plugin sections, as containerd merges them; the drop-in keeps every
// other setting of the section and sets config_path, and once written it is
// what containerd would read.
func TestImportsAndDropIn(t *testing.T) {
	t.Parallel()
	d := t.TempDir()
	main := write(t, d, "config.toml", `version = 3
imports = ["conf.d/*.toml"]
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = true
`)
	cfg, err := Load(main)
	if err != nil {
		t.Fatal(err)
	}
	v := ParseVersion("v2.3.4")
	if got := Check(cfg, v, "/etc/containerd/certs.d"); got.Reads {
		t.Fatalf("a list on 2.3 reads: %+v", got)
	}
	path, content, err := DropIn(cfg, v, "/etc/containerd/certs.d")
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(d, "conf.d", "99-regnorm.toml") {
		t.Fatalf("drop-in at %s", path)
	}
	write(t, d, "conf.d/99-regnorm.toml", string(content))
	cfg, err = Load(main)
	if err != nil {
		t.Fatal(err)
	}
	if got := Check(cfg, v, "/etc/containerd/certs.d"); !got.Reads {
		t.Fatalf("with the drop-in: %+v\n%s", got, content)
	}
	// 2.x merges the drop-in key by key: it holds config_path alone, and
	// the section keeps the main file's other settings.
	if strings.Contains(string(content), "snapshotter") {
		t.Fatalf("the drop-in copies more than config_path:\n%s", content)
	}
	images := cfg.Plugins(v)["io.containerd.cri.v1.images"]
	if images["snapshotter"] != "overlayfs" || anyMap(images["pinned_images"])["sandbox"] != "registry.k8s.io/pause:3.10" {
		t.Fatalf("the section lost its other settings:\n%s", content)
	}
	if cfg.Plugins(v)["io.containerd.cri.v1.runtime"]["enable_selinux"] != true {
		t.Fatal("another plugin's settings changed")
	}

	// A configuration that imports nothing cannot be fixed by a drop-in.
	plain := write(t, t.TempDir(), "config.toml", "version = 3\n")
	cfg, _ = Load(plain)
	if _, _, err := DropIn(cfg, v, "/etc/containerd/certs.d"); err == nil || !strings.Contains(err.Error(), "imports no drop-in directory") {
		t.Fatalf("no imports: %v", err)
	}

	// Legacy registry settings may hold credentials: a person moves them.
	d = t.TempDir()
	legacy := write(t, d, "config.toml", `version = 2
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example.com".auth]
  username = "bot"
`)
	cfg, _ = Load(legacy)
	if _, _, err := DropIn(cfg, ParseVersion("1.6.20"), "/etc/containerd/certs.d"); err == nil || !strings.Contains(err.Error(), "legacy configs") {
		t.Fatalf("legacy configs: %v", err)
	}
}

// TestMergeByVersion: containerd 1.x replaces a plugin section whole with
// an imported file's, 2.x merges them key by key; a drop-in that sets only
// the snapshotter hides config_path on 1.x, not on 2.x.
func TestMergeByVersion(t *testing.T) {
	t.Parallel()
	d := t.TempDir()
	main := write(t, d, "config.toml", `version = 2
imports = ["conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`)
	write(t, d, "conf.d/10-snapshotter.toml", `version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
`)
	cfg, err := Load(main)
	if err != nil {
		t.Fatal(err)
	}
	if got := Check(cfg, ParseVersion("1.7.2"), "/etc/containerd/certs.d"); got.Reads || !strings.Contains(Explain(got.Reasons, got.ConfigPath, "/etc/containerd/certs.d"), "config_path is not set") {
		t.Errorf("1.7: the drop-in replaced the section, config_path with it: %+v", got)
	}
	if got := Check(cfg, ParseVersion("v2.3.4"), "/etc/containerd/certs.d"); !got.Reads {
		t.Errorf("2.3: the sections merge, config_path stays: %+v", got)
	}
}

// TestDropInRefusals: where a drop-in cannot fix the configuration safely,
// DropIn says why and writes nothing; where it can on 1.x, it holds
// config_path alone.
func TestDropInRefusals(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	for _, tt := range []struct {
		name, version, config, want string
	}{
		{"1.x with CRI settings of its own", "1.6.20", `version = 2
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
`, "would freeze a copy"},
		{"a version 1 configuration", "1.6.20", `imports = ["/etc/containerd/conf.d/*.toml"]
[plugins.cri.containerd]
  snapshotter = "overlayfs"
`, "version 1"},
		{"legacy mirrors", "v2.3.4", `version = 3
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins.'io.containerd.cri.v1.images'.registry.mirrors."docker.io"]
  endpoint = ["https://mirror"]
`, "legacy mirrors"},
		// With no drop-in directory either, what a person must do first
		// is move the mirrors: the refusal names them.
		{"legacy mirrors, no imports", "1.6.20", `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror"]
`, "legacy mirrors"},
	} {
		cfg, err := Load(write(t, t.TempDir(), "config.toml", tt.config))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := DropIn(cfg, ParseVersion(tt.version), dir); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}

	// 1.x with no CRI settings of its own: the drop-in sets config_path,
	// and then containerd reads the files.
	d := t.TempDir()
	main := write(t, d, "config.toml", "version = 2\nimports = [\"conf.d/*.toml\"]\n")
	cfg, _ := Load(main)
	v := ParseVersion("1.6.20")
	path, content, err := DropIn(cfg, v, dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, d, "conf.d/"+filepath.Base(path), string(content))
	cfg, _ = Load(main)
	if got := Check(cfg, v, dir); !got.Reads {
		t.Fatalf("with the drop-in: %+v\n%s", got, content)
	}

	// A version 1 configuration is read under its short plugin names.
	cfg, _ = Load(write(t, t.TempDir(), "config.toml", "[plugins.cri.registry]\n  config_path = \"/etc/containerd/certs.d\"\n"))
	if got := Check(cfg, v, dir); !got.Reads {
		t.Fatalf("version 1 with config_path: %+v", got)
	}
}

// TestMigrationByVersion: containerd 2.x migrates each file below its own
// config version (3 before 2.3, 4 since) before merging: the CRI plugin's
// registry settings move into the images plugin's section.
func TestMigrationByVersion(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	// A version 3 file that sets the registry under the CRI plugin's old
	// name: 2.2 ignores it, 2.3 migrates it.
	cfg, err := Load(write(t, t.TempDir(), "config.toml", `version = 3
[plugins.'io.containerd.grpc.v1.cri'.registry]
  config_path = '/etc/containerd/certs.d'
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := Check(cfg, ParseVersion("v2.2.0"), dir); got.Reads {
		t.Errorf("2.2 read a version 3 file's old CRI section: %+v", got)
	}
	if got := Check(cfg, ParseVersion("v2.3.4"), dir); !got.Reads {
		t.Errorf("2.3 migrates it: %+v", got)
	}

	// A version 2 drop-in under a version 3 main file is migrated, and its
	// list wins.
	d := t.TempDir()
	main := write(t, d, "config.toml", `version = 3
imports = ["conf.d/*.toml"]
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d'
`)
	write(t, d, "conf.d/10-old.toml", `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
`)
	if cfg, err = Load(main); err != nil {
		t.Fatal(err)
	}
	if got := Check(cfg, ParseVersion("v2.3.4"), dir); got.Reads || !strings.Contains(Explain(got.Reasons, got.ConfigPath, dir), "is the list") {
		t.Errorf("a migrated version 2 drop-in's list: %+v", got)
	}
	// The fix is a version 3 drop-in, last: it wins over both.
	path, content, err := DropIn(cfg, ParseVersion("v2.3.4"), dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, d, "conf.d/"+filepath.Base(path), string(content))
	if cfg, err = Load(main); err != nil {
		t.Fatal(err)
	}
	if got := Check(cfg, ParseVersion("v2.3.4"), dir); !got.Reads {
		t.Errorf("with the drop-in: %+v\n%s", got, content)
	}

	// 1.x reads plugin names by the last file's version: a version 2
	// drop-in makes the version 1 main file's plugins.cri unread.
	d = t.TempDir()
	main = write(t, d, "config.toml", `imports = ["conf.d/*.toml"]
[plugins.cri.registry]
  config_path = "/etc/containerd/certs.d"
`)
	write(t, d, "conf.d/10-v2.toml", "version = 2\n")
	if cfg, err = Load(main); err != nil {
		t.Fatal(err)
	}
	got := Check(cfg, ParseVersion("1.6.20"), dir)
	if got.Reads {
		t.Errorf("1.6 with a version 2 drop-in read plugins.cri: %+v", got)
	}
	// The lines to add use the names 1.6 reads by, the drop-in's version.
	if cfg.PluginsVersion(ParseVersion("1.6.20")) != 2 || !strings.Contains(got.Fix, `[plugins."io.containerd.grpc.v1.cri".registry]`) {
		t.Errorf("the fix for 1.6 reading by version 2: %q", got.Fix)
	}
}

// TestUnknownVersion: without containerd's version, a version 3 file is
// judged and fixed as 2.x's, and no drop-in is made.
func TestUnknownVersion(t *testing.T) {
	t.Parallel()
	cfg3, _ := Load(write(t, t.TempDir(), "config.toml", "version = 3\n"))
	if got := FixFor(cfg3.PluginsVersion(ParseVersion("")), "/d"); !strings.Contains(got, "io.containerd.cri.v1.images") {
		t.Errorf("fix for a version 3 file, version unknown: %s", got)
	}
	cfg, _ := Load(write(t, t.TempDir(), "config.toml", "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n"))
	if _, _, err := DropIn(cfg, ParseVersion(""), "/d"); err == nil || !strings.Contains(err.Error(), "version is unknown") {
		t.Errorf("a drop-in with the version unknown: %v", err)
	}
}
