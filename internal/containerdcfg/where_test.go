package containerdcfg

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestAdviceFollowed: for each kind of configuration file, the advice
// says where config_path goes in the file as it is, and followed to the
// letter (regtest.FollowAdvice, as an operator would) it leaves a file
// that parses (no second registry table: containerd refuses a file with
// one) and that containerd then reads the hosts.toml files by. The
// verdict quotes the file: an explicit config_path = "" is not "not set".
//
// testdata/default-*.toml are what `containerd config default` prints:
// 1.6.20 is Debian 12's containerd, 2.3.4 the one scripts/test-deps.sh
// builds (regenerate with `containerd config default > FILE`).
func TestAdviceFollowed(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	default1620, err := os.ReadFile("testdata/default-1.6.20.toml")
	if err != nil {
		t.Fatal(err)
	}
	default234, err := os.ReadFile("testdata/default-2.3.4.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, version string
		// files are the configuration, by name; config.toml is the main
		// file, absent when not given.
		files map[string]string
		// advice and reason are in what Check says.
		advice, reason string
	}{
		{name: "no file, 1.6.20", version: "1.6.20",
			advice: "Create {dir}/config.toml with these lines:\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "config_path is not set: containerd 1.6 reads no hosts.toml"},
		{name: "no file, 2.3.4", version: "v2.3.4",
			advice: "Create {dir}/config.toml with these lines:\nversion = 3\n\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'",
			reason: "config_path is not set, so containerd 2.3 uses its default"},
		{name: "a file without the table, 1.6.20", version: "1.6.20",
			files:  map[string]string{"config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\""},
			advice: "Add these lines at the end of {dir}/config.toml:\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "config_path is not set"},
		{name: "a file without the table, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n"},
			advice: "Add these lines at the end of {dir}/config.toml:\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'",
			reason: "config_path is not set, so containerd 2.3 uses its default"},
		{name: "containerd config default, 1.6.20", version: "1.6.20",
			files:  map[string]string{"config.toml": string(default1620)},
			advice: "In {dir}/config.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"\"\nto\n  config_path = \"/etc/containerd/certs.d\"",
			reason: `config_path is "" (empty): containerd 1.6 reads no hosts.toml`},
		{name: "containerd config default, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": string(default234)},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change the line\n  config_path = ''\nto\n  config_path = '/etc/containerd/certs.d'",
			reason: `config_path is "" (empty), so containerd 2.3 uses its default, the list`},
		{name: "a list, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d' # the default\n"},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change the line\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d' # the default\nto\n  config_path = '/etc/containerd/certs.d'",
			reason: `config_path is the list "/etc/containerd/certs.d:/etc/docker/certs.d"`},
		{name: "the table, without config_path", version: "1.6.20",
			files:  map[string]string{"config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.headers]\n    X-Team = [\"a\"]\n"},
			advice: "In {dir}/config.toml, add this line right under [plugins.\"io.containerd.grpc.v1.cri\".registry]:\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "config_path is not set"},
		{name: "config_path as a dotted key", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  registry.config_path = \"\"\n  snapshotter = 'overlayfs'\n"},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'], change the line\n  registry.config_path = \"\"\nto\n  registry.config_path = '/etc/containerd/certs.d'",
			reason: `config_path is "" (empty)`},
		{name: "the table made by dotted keys", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  registry.headers.X-Team = ['a']\n"},
			advice: "In {dir}/config.toml, add this line right under [plugins.'io.containerd.cri.v1.images']:\n  registry.config_path = '/etc/containerd/certs.d'",
			reason: "config_path is not set"},
		{name: "the table made by its sub-tables", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry.headers]\n  X-Team = ['a']\n"},
			advice: "Add these lines at the end of {dir}/config.toml:\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'",
			reason: "config_path is not set"},
		{name: "1.6.20, a drop-in replacing the CRI section", version: "1.6.20",
			files: map[string]string{
				"config.toml":            "version = 2\nimports = [\"conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
				"conf.d/50-selinux.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  enable_selinux = false\n",
			},
			advice: "Add these lines at the end of {dir}/conf.d/50-selinux.toml:\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "config_path is not set"},
		{name: "2.3.4, an old version 2 drop-in with a list", version: "v2.3.4",
			files: map[string]string{
				"config.toml":        importsRe.ReplaceAllString(string(default234), "imports = ['conf.d/*.toml']"),
				"conf.d/10-old.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n",
			},
			advice: "In {dir}/conf.d/10-old.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\nto\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "is the list"},
		// A value that spans lines: changing its first line alone would
		// leave the rest behind (1.6.20: "unclosed string"; 2.3.4:
		// "expected character =").
		{name: "config_path = \"\"\" over two lines, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = \"\"\"\n\"\"\"\n  [plugins.'io.containerd.cri.v1.images'.registry.headers]\n"},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change these 2 lines (config_path's value spans them)\n  config_path = \"\"\"\n  \"\"\"\nto the one line\n  config_path = '/etc/containerd/certs.d'",
			reason: `config_path is "" (empty), so containerd 2.3 uses its default`},
		{name: "config_path = ''' over two lines, 1.6.20", version: "1.6.20",
			files:  map[string]string{"config.toml": strings.Replace(string(default1620), `config_path = ""`, "config_path = '''\n'''", 1)},
			advice: "In {dir}/config.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change these 2 lines (config_path's value spans them)\n  config_path = '''\n  '''\nto the one line\n  config_path = \"/etc/containerd/certs.d\"",
			reason: `config_path is "" (empty): containerd 1.6 reads no hosts.toml`},
		{name: "a list over three lines, with a comment, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": strings.Replace(string(default234), "config_path = ''", "config_path = '''\n/etc/containerd/certs.d:\n/etc/docker/certs.d''' # the list", 1)},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change these 3 lines (config_path's value spans them)\n  config_path = '''\n  /etc/containerd/certs.d:\n  /etc/docker/certs.d''' # the list\nto the one line\n  config_path = '/etc/containerd/certs.d'",
			reason: `config_path is the list "/etc/containerd/certs.d:\n/etc/docker/certs.d"`},
		{name: "a dotted key over two lines, 2.3.4", version: "v2.3.4",
			files:  map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  registry.config_path = \"\"\"\n\"\"\"\n  snapshotter = 'overlayfs'\n"},
			advice: "In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'], change these 2 lines (config_path's value spans them)\n  registry.config_path = \"\"\"\n  \"\"\"\nto the one line\n  registry.config_path = '/etc/containerd/certs.d'",
			reason: `config_path is "" (empty)`},
		{name: "2.3.4, a version 2 main file", version: "v2.3.4",
			files:  map[string]string{"config.toml": string(default1620)},
			advice: "In {dir}/config.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"\"\nto\n  config_path = \"/etc/containerd/certs.d\"",
			reason: `config_path is "" (empty), so containerd 2.3 uses its default`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			for name, content := range tt.files {
				write(t, d, name, content)
			}
			main := filepath.Join(d, "config.toml")
			cfg, err := Load(main)
			if err != nil {
				t.Fatal(err)
			}
			v := ParseVersion(tt.version)
			got := Check(cfg, v, dir)
			if want := strings.ReplaceAll(tt.advice, "{dir}", d); got.Reads || got.Fix != want {
				t.Fatalf("advice:\n%s\nwant:\n%s", got.Fix, want)
			}
			if why := Explain(got.Reasons, got.ConfigPath, dir); !strings.Contains(why, tt.reason) {
				t.Errorf("verdict %q, want %q", why, tt.reason)
			}
			if err := regtest.FollowAdvice(got.Fix); err != nil {
				t.Fatalf("following the advice: %v", err)
			}
			for name := range tt.files {
				b, _ := os.ReadFile(filepath.Join(d, name))
				if _, err := regtest.ContainerdTOML(b); err != nil {
					t.Fatalf("advice followed, containerd refuses %s: %v\n%s", name, err, b)
				}
			}
			cfg, err = Load(main)
			if err != nil {
				t.Fatalf("the file, advice followed: %v", err)
			}
			if after := Check(cfg, v, dir); !after.Reads {
				t.Fatalf("advice followed, containerd still does not read %s: %+v", dir, after)
			}
		})
	}
}

// importsRe is the imports line of `containerd config default`.
var importsRe = regexp.MustCompile(`(?m)^imports = \[.*\]$`)

// TestLegacyMirrorsAdvice: with legacy mirrors the verdict says to remove
// them, and the advice sets the config_path line the file has.
func TestLegacyMirrorsAdvice(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("testdata/default-1.6.20.toml")
	if err != nil {
		t.Fatal(err)
	}
	config := strings.Replace(string(b), "      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n",
		"      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n        [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n          endpoint = [\"https://mirror.example\"]\n", 1)
	d := t.TempDir()
	main := write(t, d, "config.toml", config)
	cfg, err := Load(main)
	if err != nil {
		t.Fatal(err)
	}
	got := Check(cfg, ParseVersion("1.6.20"), "/etc/containerd/certs.d")
	if why := Explain(got.Reasons, got.ConfigPath, "/etc/containerd/certs.d"); got.Reads || !strings.Contains(why, "legacy registry.mirrors") {
		t.Fatalf("verdict %q", why)
	}
	if want := "In " + main + ", under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"\"\nto\n  config_path = \"/etc/containerd/certs.d\""; got.Fix != want {
		t.Fatalf("advice:\n%s\nwant:\n%s", got.Fix, want)
	}
	if len(got.Reasons) != 1 || !got.Reasons[0].Table {
		t.Errorf("the verdict does not say the table is there: %+v", got.Reasons)
	}
}

// TestFixForReport: the fleet view, which knows a node by its report,
// says to set the key in the table the configuration has, and to add the
// table only where it has none.
func TestFixForReport(t *testing.T) {
	t.Parallel()
	with := FixForReport([]Reason{{Code: NoConfigPath, Major: 1, Minor: 6, Empty: true, Table: true}}, 2, "/d")
	if !strings.Contains(with, "do not add that table again") || !strings.HasSuffix(with, "\n  config_path = \"/d\"") {
		t.Errorf("with the table: %q", with)
	}
	without := FixForReport([]Reason{{Code: DropInNoFix, Why: DefaultConfigPathList, Major: 2, Minor: 3, Path: "/etc/containerd/conf.d/" + DropInName}}, 3, "/d")
	if without != "Add these lines at the end of containerd's configuration file:\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/d'" {
		t.Errorf("without the table: %q", without)
	}
}

// TestScanTOML: the lines are found as written, past multi-line values.
func TestScanTOML(t *testing.T) {
	t.Parallel()
	raw := `version = 3
note = """
[plugins.'io.containerd.cri.v1.images'.registry]
config_path = 'not this'
"""
list = [
  "[not a header]",
]
  [plugins."io.containerd.cri.v1.images".registry]  # the registry
    config_path = '' # empty
`
	var w Where
	w.place([]byte(raw), []string{"plugins", imagesV3, "registry"}, true)
	if w.Under != `[plugins."io.containerd.cri.v1.images".registry]  # the registry` || w.Line != "config_path = '' # empty" || w.Key != "config_path" || !w.Table {
		t.Errorf("%+v", w)
	}
}

// TestPathsWrittenAsTOML: whatever the directory (a quote, a backslash,
// a control character: node-config refuses those, and this is the
// second line of defence), the drop-in and the advice's lines, followed,
// are TOML that containerd reads (a path written as it is into the
// drop-in's comment made containerd 2.3.4 refuse it: "toml: invalid
// character in comment"), and config_path is that directory.
func TestPathsWrittenAsTOML(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"/a\rb", "/a\x7fb", "/a\x01b", "/it's", `/a"b\c`, "/é\tx"} {
		for version, configVersion := range map[string]string{"1.6.20": "2", "v2.3.4": "3"} {
			t.Run(fmt.Sprintf("%q %s", dir, version), func(t *testing.T) {
				t.Parallel()
				d := t.TempDir()
				main := write(t, d, "config.toml", "version = "+configVersion+"\nimports = [\""+filepath.Join(d, "conf.d", "*.toml")+"\"]\n")
				os.MkdirAll(filepath.Join(d, "conf.d"), 0o755)
				cfg, err := Load(main)
				if err != nil {
					t.Fatal(err)
				}
				v := ParseVersion(version)
				_, content, err := DropIn(cfg, v, dir)
				if err != nil {
					t.Fatal(err)
				}
				doc, err := regtest.ContainerdTOML(content)
				if err != nil {
					t.Fatalf("the drop-in: %v\n%s", err, content)
				}
				if got := configPathOf(doc); got != dir {
					t.Errorf("the drop-in's config_path is %q, want %q\n%s", got, dir, content)
				}
				got := Check(cfg, v, dir)
				if err := regtest.FollowAdvice(got.Fix); err != nil {
					t.Fatalf("following the advice: %v\n%s", err, got.Fix)
				}
				b, _ := os.ReadFile(main)
				if doc, err = regtest.ContainerdTOML(b); err != nil {
					t.Fatalf("advice followed: %v\n%s", err, b)
				}
				if got := configPathOf(doc); got != dir {
					t.Errorf("advice followed, config_path is %q, want %q\n%s", got, dir, b)
				}
			})
		}
	}
}

// configPathOf is the registry's config_path in a version 2 or 3
// document.
func configPathOf(doc map[string]any) string {
	plugins, _ := doc["plugins"].(map[string]any)
	for _, section := range []string{criV2, imagesV3} {
		s, _ := plugins[section].(map[string]any)
		reg, _ := s["registry"].(map[string]any)
		if p, ok := reg["config_path"].(string); ok {
			return p
		}
	}
	return ""
}
