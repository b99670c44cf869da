package containerdcfg

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
		// keep is a line that following the advice keeps.
		keep string
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
		// What containerd refuses beside config_path is deleted first:
		// setting config_path alone made containerd leave its CRI plugin
		// out (1.6.20 "`mirrors` cannot be set when `config_path` is
		// provided", and "`configs.tls` ..."; 2.3.4 the same for mirrors).
		{name: "legacy mirrors, containerd config default, 1.6.20", version: "1.6.20",
			files: map[string]string{"config.toml": strings.Replace(string(default1620), mirrors1620, mirrors1620+
				"        [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n          endpoint = [\"https://mirror.example\"]\n", 1)},
			advice: "1. In {dir}/config.toml, delete these 2 lines (the legacy registry.mirrors, which containerd refuses beside config_path):\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n" +
				"2. In {dir}/config.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"\"\nto\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "the legacy registry.mirrors in [plugins.\"io.containerd.grpc.v1.cri\".registry] replace hosts.toml, and containerd refuses them beside config_path"},
		{name: "legacy mirrors, containerd config default, 2.3.4", version: "v2.3.4",
			files: map[string]string{"config.toml": strings.Replace(string(default234), "      config_path = ''\n",
				"      config_path = ''\n\n      [plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n        # the team's mirror\n        endpoint = [\n          'https://mirror.example',\n\n          'https://registry-1.docker.io',\n        ]\n\n      # decryption\n", 1)},
			advice: "1. In {dir}/config.toml, delete these 6 lines (the legacy registry.mirrors, which containerd refuses beside config_path):\n  [plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n  # the team's mirror\n  endpoint = [\n  'https://mirror.example',\n  'https://registry-1.docker.io',\n  ]\n" +
				"2. In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change the line\n  config_path = ''\nto\n  config_path = '/etc/containerd/certs.d'",
			reason: "the legacy registry.mirrors in [plugins.\"io.containerd.cri.v1.images\".registry]"},
		{name: "legacy mirrors, config_path set already, 1.6.20", version: "1.6.20",
			files:  map[string]string{"config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n    \"quay.io\" = { endpoint = [\"https://q\"] }\n"},
			advice: "In {dir}/config.toml, delete these 2 lines (the legacy registry.mirrors, which containerd refuses beside config_path):\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n  \"quay.io\" = { endpoint = [\"https://q\"] }",
			reason: "legacy registry.mirrors"},
		{name: "legacy mirrors as dotted keys, 2.3.4", version: "v2.3.4",
			files: map[string]string{"config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  mirrors.'docker.io'.endpoint = ['https://m']\n  headers.X-Team = ['a']\n  mirrors.'quay.io' = { endpoint = ['https://q'] }\n"},
			advice: "1. In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], delete this line (the legacy registry.mirrors, which containerd refuses beside config_path):\n  mirrors.'docker.io'.endpoint = ['https://m']\n" +
				"2. In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], delete this line (the legacy registry.mirrors, which containerd refuses beside config_path):\n  mirrors.'quay.io' = { endpoint = ['https://q'] }\n" +
				"3. In {dir}/config.toml, add this line right under [plugins.'io.containerd.cri.v1.images'.registry]:\n  config_path = '/etc/containerd/certs.d'",
			reason: "legacy registry.mirrors"},
		{name: "legacy mirrors in an old drop-in, 2.3.4", version: "v2.3.4",
			files: map[string]string{
				"config.toml":        importsRe.ReplaceAllString(string(default234), "imports = ['conf.d/*.toml']"),
				"conf.d/10-old.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n",
			},
			advice: "1. In {dir}/conf.d/10-old.toml, delete these 2 lines (the legacy registry.mirrors, which containerd refuses beside config_path):\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n" +
				"2. In {dir}/config.toml, under [plugins.'io.containerd.cri.v1.images'.registry], change the line\n  config_path = ''\nto\n  config_path = '/etc/containerd/certs.d'",
			reason: "legacy registry.mirrors"},
		// 1.x refuses configs."<host>".tls beside config_path (even an
		// empty table); configs' auth it keeps, and so does the advice.
		{name: "configs.tls, containerd config default, 1.6.20", version: "1.6.20",
			files: map[string]string{"config.toml": strings.Replace(string(default1620), configs1620, configs1620+
				"        [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".auth]\n          username = \"bot\"\n        [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n          insecure_skip_verify = true\n", 1)},
			advice: "1. In {dir}/config.toml, delete these 2 lines (the legacy registry.configs TLS settings, which containerd 1.x refuses beside config_path):\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n  insecure_skip_verify = true\n" +
				"2. In {dir}/config.toml, under [plugins.\"io.containerd.grpc.v1.cri\".registry], change the line\n  config_path = \"\"\nto\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "the legacy TLS settings of registry.configs in [plugins.\"io.containerd.grpc.v1.cri\".registry] (a configs.\"<host>\".tls table): containerd 1.6 refuses them beside config_path (\"`configs.tls` cannot be set when `config_path` is provided\")",
			keep:   "username = \"bot\""},
		{name: "configs.tls and mirrors, 1.6.20", version: "1.6.20",
			files: map[string]string{"config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n"},
			advice: "1. In {dir}/config.toml, delete these 3 lines (the legacy registry.mirrors and registry.configs TLS settings, which containerd refuses beside config_path):\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n" +
				"2. Add these lines at the end of {dir}/config.toml:\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
			reason: "containerd 1.6 refuses them beside config_path"},
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
			if b, _ := os.ReadFile(main); tt.keep != "" && !strings.Contains(string(b), tt.keep) {
				t.Errorf("advice followed, %q is gone:\n%s", tt.keep, b)
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

// The legacy registry tables `containerd config default` writes, empty,
// in 1.6.20's file.
const (
	mirrors1620 = "      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n"
	configs1620 = "      [plugins.\"io.containerd.grpc.v1.cri\".registry.configs]\n"
)

// importsRe is the imports line of `containerd config default`.
var importsRe = regexp.MustCompile(`(?m)^imports = \[.*\]$`)

// TestLegacyMirrorsAdvice: what containerd refuses beside config_path
// (legacy mirrors; configs."<host>".tls on 1.x) is a reason of its own,
// and the advice deletes it before it sets config_path (setting
// config_path alone made containerd leave its CRI plugin out; the
// advice for the file as it is, followed: TestAdviceFollowed). Where no
// line can be quoted to delete it (an inline table that holds other
// settings too), there are no lines, and the reason says why. 2.x
// ignores configs' tls: no reason, and the advice leaves it.
func TestLegacyMirrorsAdvice(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	for _, tt := range []struct {
		name, version, config string
		codes                 []Code
		byHand                bool
		// first is the advice's first line; "" for none.
		first string
	}{
		{name: "mirrors, 1.6.20", version: "1.6.20",
			config: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n",
			codes:  []Code{LegacyMirrors}, first: "1. In {file}, delete these 2 lines"},
		{name: "configs.tls, 1.6.20", version: "1.6.20",
			config: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\".tls]\n  ca_file = \"/ca.pem\"\n",
			codes:  []Code{LegacyConfigsTLS}, first: "1. In {file}, delete these 2 lines"},
		{name: "configs.tls with config_path the directory, 1.6.20", version: "1.6.20",
			config: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\"]\n    tls.insecure_skip_verify = true\n",
			codes:  []Code{LegacyConfigsTLS}, first: "In {file}, under [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example\"], delete this line"},
		{name: "configs.tls, 2.3.4: ignored", version: "v2.3.4",
			config: "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/a:/b'\n[plugins.'io.containerd.cri.v1.images'.registry.configs.'r.example'.tls]\n  ca_file = '/ca.pem'\n",
			codes:  []Code{OtherConfigPath}, first: "In {file}, under [plugins.'io.containerd.cri.v1.images'.registry], change the line"},
		{name: "mirrors in an inline table with config_path, 2.3.4", version: "v2.3.4",
			config: "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  registry = { config_path = '', mirrors = { 'docker.io' = { endpoint = ['https://m'] } } }\n",
			codes:  []Code{LegacyMirrors}, byHand: true},
		{name: "configs.tls in an inline table with auth, 1.6.20", version: "1.6.20",
			config: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs]\n  \"r.example\" = { auth = { username = \"bot\" }, tls = { ca_file = \"/ca.pem\" } }\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n",
			codes:  []Code{LegacyMirrors, LegacyConfigsTLS}, byHand: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			main := write(t, t.TempDir(), "config.toml", tt.config)
			cfg, err := Load(main)
			if err != nil {
				t.Fatal(err)
			}
			got := Check(cfg, ParseVersion(tt.version), dir)
			var codes []Code
			for _, r := range got.Reasons {
				codes = append(codes, r.Code)
				if err := r.Valid(); err != nil {
					t.Errorf("reason %+v: %v", r, err)
				}
				if r.ByHand != tt.byHand {
					t.Errorf("reason %+v: by hand %v, want %v", r, r.ByHand, tt.byHand)
				}
			}
			why := Explain(got.Reasons, got.ConfigPath, dir)
			if got.Reads || !slices.Equal(codes, tt.codes) {
				t.Fatalf("reads %v, reasons %v (%s); want %v", got.Reads, codes, why, tt.codes)
			}
			if first, _, _ := strings.Cut(got.Fix, "\n"); !strings.HasPrefix(first, strings.ReplaceAll(tt.first, "{file}", main)) || (tt.first == "") != (got.Fix == "") {
				t.Errorf("advice:\n%s\nwant it to start with %q", got.Fix, tt.first)
			}
			if tt.byHand != strings.Contains(why, "gives no lines to follow: edit them out by hand") {
				t.Errorf("the verdict on lines to follow: %q", why)
			}
			if got.Fix == "" {
				return
			}
			if err := regtest.FollowAdvice(got.Fix); err != nil {
				t.Fatalf("following the advice: %v\n%s", err, got.Fix)
			}
			if cfg, err = Load(main); err != nil {
				t.Fatal(err)
			}
			if after := Check(cfg, ParseVersion(tt.version), dir); !after.Reads {
				t.Errorf("advice followed: %+v", after)
			}
		})
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
	// What containerd refuses beside config_path goes first: the report
	// has no lines, node-config's log does.
	legacy := FixForReport([]Reason{{Code: LegacyMirrors, Section: criV2, Table: true}, {Code: LegacyConfigsTLS, Major: 1, Minor: 6, Section: criV2, Table: true}}, 2, "/d")
	if !strings.HasPrefix(legacy, "1. Delete the legacy registry.mirrors and every registry.configs.\"<host>\".tls table from containerd's configuration") ||
		!strings.Contains(legacy, "\n2. In containerd's configuration file, set config_path in the registry table it has") {
		t.Errorf("with legacy mirrors and configs.tls: %q", legacy)
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

// TestLegacyBehindLegacy: where deleting the legacy settings brings out
// others (1.x: an earlier file's CRI section, which the last one replaced;
// 2.x: a version 2 file's images registry, which its CRI registry
// replaced), the advice gives no lines: followed, it would leave
// containerd refusing config_path.
func TestLegacyBehindLegacy(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, version string
		files         map[string]string
	}{
		{"1.6.20, an earlier file's mirrors", "1.6.20", map[string]string{
			"config.toml":      "version = 2\nimports = [\"conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://a\"]\n",
			"conf.d/10-m.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"quay.io\"]\n  endpoint = [\"https://b\"]\n",
		}},
		{"2.3.4, a version 2 file's images mirrors under its CRI ones", "v2.3.4", map[string]string{
			"config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://a\"]\n[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'quay.io']\n  endpoint = ['https://b']\n",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			for name, content := range tt.files {
				write(t, d, name, content)
			}
			cfg, err := Load(filepath.Join(d, "config.toml"))
			if err != nil {
				t.Fatal(err)
			}
			got := Check(cfg, ParseVersion(tt.version), "/etc/containerd/certs.d")
			if got.Reads || got.Fix != "" || len(got.Reasons) == 0 || !got.Reasons[0].ByHand {
				t.Errorf("%+v", got)
			}
		})
	}
}
