package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// configField is one setting of the file: its path as errors and the docs
// name it (upstreams[].url for a field of the list's elements), and its
// default (the zero value for a field of a list's elements).
type configField struct {
	path string
	def  reflect.Value
}

// configFields walks the Config type by its yaml tags: every leaf, and
// every list of mappings (whose elements' fields follow as list[].field).
func configFields() []configField {
	var out []configField
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, ok := yamlName(f)
			if !ok {
				continue
			}
			path := join(prefix, name)
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(v.Field(i), path)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
				out = append(out, configField{path, v.Field(i)})
				walk(reflect.New(f.Type.Elem()).Elem(), path+"[]")
			default:
				out = append(out, configField{path, v.Field(i)})
			}
		}
	}
	walk(reflect.ValueOf(defaultConfig()), "")
	return out
}

// fieldAt is the field of v (a Config) at a path configFields names.
func fieldAt(v reflect.Value, path string) (reflect.Value, bool) {
	for _, name := range strings.Split(path, ".") {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		f, ok := yamlFields(v.Type())[name]
		if !ok {
			return reflect.Value{}, false
		}
		v = v.FieldByIndex(f.Index)
	}
	return v, true
}

// docRow is a row of docs/configuration.md's table.
type docRow struct {
	flag, def string
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

// readConfigTable reads docs/configuration.md's table, by field path: the
// first column names one or more fields, each in backquotes.
func readConfigTable(t *testing.T) map[string]docRow {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]docRow{}
	inTable := false
	for n, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "| YAML field |"):
			inTable = true
			continue
		case !strings.HasPrefix(line, "|"):
			inTable = false
		}
		if !inTable || strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|"), "|")
		if len(cells) != 4 {
			t.Fatalf("docs/configuration.md:%d: %d cells, want 4 (field, flag / environment, default, meaning)", n+1, len(cells))
		}
		for _, m := range codeSpan.FindAllStringSubmatch(cells[0], -1) {
			if _, dup := rows[m[1]]; dup {
				t.Errorf("docs/configuration.md:%d: %s has a second row", n+1, m[1])
			}
			rows[m[1]] = docRow{flag: strings.TrimSpace(cells[1]), def: strings.TrimSpace(cells[2])}
		}
	}
	if len(rows) == 0 {
		t.Fatal("docs/configuration.md has no table headed | YAML field |")
	}
	return rows
}

// TestConfigurationIsDocumented keeps docs/configuration.md's table in
// step with the Config type: every field has a row and every row a field;
// a field the environment and a flag set says which; and the default a row
// states is defaultConfig's.
//
// A default cell is read thus: one that starts with a value in backquotes
// states that value, read as the file would read it; one that starts with
// another field's path in backquotes says the field follows that one, and
// its own default is zero; prose ("no limit", "system temp dir") says what
// the zero value means. The defaults that depend on other settings are
// written out by the code below, from the functions that decide them.
func TestConfigurationIsDocumented(t *testing.T) {
	t.Parallel()
	rows := readConfigTable(t)
	fields := configFields()
	known := map[string]bool{}
	for _, f := range fields {
		known[f.path] = true
	}
	for path := range rows {
		if !known[path] {
			t.Errorf("docs/configuration.md documents %s, which Config does not have", path)
		}
	}

	var upstreams []string
	for _, u := range defaultConfig().Upstreams {
		upstreams = append(upstreams, "`"+u.Name+"`")
	}
	byDriver := func(of func(CacheConfig) string) string {
		return fmt.Sprintf("`%s` with `s3`, `%s` otherwise", of(CacheConfig{Driver: "s3"}), of(CacheConfig{Driver: "filesystem"}))
	}
	s3Keys := fmt.Sprintf("`%s`, `%s`", awsAccessKeyEnv, awsSecretKeyEnv)
	derived := map[string]string{
		"upstreams":                 strings.Join(upstreams, ", "),
		"cache.evictionGrace":       byDriver(func(c CacheConfig) string { return shortDuration(c.evictionGrace()) }),
		"cache.maintenanceInterval": byDriver(func(c CacheConfig) string { return shortDuration(c.maintenanceInterval()) }),
		"cache.s3.accessKeyEnv":     s3Keys,
		"cache.s3.secretKeyEnv":     s3Keys,
	}

	flags := map[string]string{}
	for _, o := range overrides() {
		flags[o.field] = fmt.Sprintf("`--%s` / `%s`", o.flag, o.env)
	}
	for _, f := range fields {
		row, ok := rows[f.path]
		if !ok {
			t.Errorf("docs/configuration.md has no row for %s", f.path)
			continue
		}
		if row.flag != flags[f.path] {
			t.Errorf("docs/configuration.md: %s's flag / environment is %q, want %q", f.path, row.flag, flags[f.path])
		}
		if want, ok := derived[f.path]; ok {
			if row.def != want {
				t.Errorf("docs/configuration.md: %s's default is %q, want %q", f.path, row.def, want)
			}
			continue
		}
		stated := codeSpan.FindStringSubmatch(row.def)
		switch {
		case stated == nil || !strings.HasPrefix(row.def, "`"):
			if !f.def.IsZero() {
				t.Errorf("docs/configuration.md: %s's default is %q, want `%v`", f.path, row.def, f.def)
			}
		case known[stated[1]]: // another field's value
			if !f.def.IsZero() {
				t.Errorf("docs/configuration.md: %s's default is %s's, but defaultConfig sets %v", f.path, stated[1], f.def)
			}
		default:
			got, err := readValue(stated[1], f.def.Type())
			if err != nil {
				t.Errorf("docs/configuration.md: %s's default %q does not read as its type: %v", f.path, stated[1], err)
			} else if !reflect.DeepEqual(got.Interface(), f.def.Interface()) {
				t.Errorf("docs/configuration.md: %s's default is %q, but defaultConfig's is %v", f.path, stated[1], f.def)
			}
		}
	}
}

// readValue reads s as the file would read a value of type t.
func readValue(s string, t reflect.Type) (reflect.Value, error) {
	p := reflect.New(t)
	var err error
	if t.Kind() == reflect.Slice {
		err = yaml.Unmarshal([]byte(s), p.Interface())
	} else {
		err = (&yaml.Node{Kind: yaml.ScalarNode, Value: s}).Decode(p.Interface())
	}
	return p.Elem(), err
}

// TestOverridesNameTheirFields: the field an override's error names is the
// one it sets.
func TestOverridesNameTheirFields(t *testing.T) {
	t.Parallel()
	var cfg Config
	for _, o := range overrides() {
		f, ok := fieldAt(reflect.ValueOf(&cfg).Elem(), o.field)
		if !ok || f.Addr().Pointer() != reflect.ValueOf(o.at(&cfg)).Pointer() {
			t.Errorf("--%s names %s but sets another field", o.flag, o.field)
		}
	}
}

// chartDir is the Helm chart, which renders regnorm.yaml from its values.
const chartDir = "../../deploy/helm/regnorm"

// TestChartSetsEveryConfigField keeps the chart's values.yaml in step with
// the Config type. The chart renders some top-level fields itself (its
// ConfigMap's $managed list); every other one is set through config.extra,
// as given. So each field under a rendered one needs a value: config.FIELD,
// FIELD (auth.*, cache.*, upstreams), or one of another name below; a field
// of upstreams' elements may instead be named in the comment above the
// list. A field the chart deliberately leaves out is listed with the
// reason, and a value whose default is not regnorm's, too.
func TestChartSetsEveryConfigField(t *testing.T) {
	t.Parallel()
	// Fields the chart sets from a value of another name.
	renamed := map[string]string{
		"tls.certFile":              "tls.secretName", // a kubernetes.io/tls Secret, mounted
		"tls.keyFile":               "tls.secretName",
		"auth.htpasswdFile":         "auth.htpasswdSecret",
		"auth.tokensFile":           "auth.tokensSecret",
		"cache.s3.accessKeyFile":    "cache.s3.existingSecret",
		"cache.s3.secretKeyFile":    "cache.s3.existingSecret",
		"nodes.hostsDir":            "nodeConfig.configPath",       // node-config's, which regnorm's must equal
		"nodes.containerdConfigDir": "nodeConfig.containerdConfig", // its directory
		"nodes.reportTokenFile":     "nodeConfig.reportToken",
		"upstreams[].passwordFile":  "upstreams[].passwordKey", // a key of the credentials Secret
		"upstreams[].caFile":        "upstreams[].caKey",
		"replicas.listen":           "replicas.port",          // :port, the container's port replicas
		"replicas.service":          "replicas.clusterDomain", // the chart's headless Service, in that domain
		"replicas.secretFile":       "replicas.secret",        // a Secret's key, mounted
		"attestations.keyFile":      "attestations.keySecret", // a Secret's key.pem, mounted
		"webhook.listen":            "webhook.port",           // :port, the container's port webhook
		"webhook.certFile":          "webhook.tls.secretName", // the chart's, cert-manager's or one's own, mounted
		"webhook.keyFile":           "webhook.tls.secretName",
		"webhook.clientCAFile":      "webhook.clientCA", // a Secret's or ConfigMap's key, or the PEM in a ConfigMap the chart makes, mounted
	}
	// Fields the chart deliberately leaves out, and why.
	leftOut := map[string]string{
		"listen":                         "fixed at :5000, the container port the Service and the probes use (service.port is the Service's)",
		"spoolDir":                       "fixed on the cache volume: the root filesystem is read-only",
		"cache.filesystem.rootDirectory": "fixed at the cache volume's mount (cache.persistence chooses the volume)",
		"cache.s3.skipVerify":            "for test servers only",
		"cache.s3.accessKeyEnv":          "the keys come from cache.s3.existingSecret as files, or else the pod's own AWS credentials",
		"cache.s3.secretKeyEnv":          "the keys come from cache.s3.existingSecret as files, or else the pod's own AWS credentials",
		"upstreams[].passwordEnv":        "passwords come from the credentials Secret as files (upstreams[].passwordKey)",
		"replicas.self":                  "each pod's own: REGNORM_REPLICAS_SELF, from its IP (status.podIP)",
		"replicas.peers":                 "the members are the ready pods, found through the headless Service (replicas.service)",
		"replicas.refresh":               "regnorm's default (10s), how soon a pod that became ready or went away is known",
	}
	// Values whose default is deliberately not regnorm's, and why.
	differs := map[string]string{
		"logFormat":              "json: in a cluster, logs go to a collector",
		"cache.s3.region":        "s3 needs a region, and most S3-compatible servers take any",
		"cache.s3.rootDirectory": "a prefix, so that the bucket can hold other things too",
		"webhook.clients":        "[], which the chart refuses with webhook.enabled: replicas must answer alike, so the fleet's versions are named",
		"webhook.clientNames":    "[] for none, which regnorm reads as its own none: any certificate webhook.clientCAFile signed",
	}

	raw, err := os.ReadFile(chartDir + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values yaml.Node
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	managed := chartManaged(t)
	top := yamlFields(reflect.TypeFor[Config]())
	for key := range managed {
		if _, ok := top[key]; !ok {
			t.Errorf("the chart's $managed list names %s, which Config does not have", key)
		}
	}
	for _, f := range configFields() {
		first, _, _ := strings.Cut(f.path, ".")
		first = strings.TrimSuffix(first, "[]")
		valuePath, direct := renamed[f.path], false
		if valuePath == "" {
			for _, p := range []string{"config." + f.path, f.path} {
				if _, ok := chartValue(&values, p); ok {
					valuePath, direct = p, true
					break
				}
			}
		}
		settable := valuePath != "" || !managed[first]
		reason, left := leftOut[f.path]
		switch {
		case left && settable:
			t.Errorf("the chart sets %s, which the test lists as left out (%s): drop it from the list", f.path, reason)
			continue
		case left, valuePath == "" && settable: // left out, or through config.extra
			continue
		case valuePath == "":
			t.Errorf("values.yaml has no value for %s, which the chart renders (%s is on its $managed list): add one, and a row in the chart's README, or list it as left out, with the reason", f.path, first)
			continue
		}
		node, ok := chartValue(&values, valuePath)
		if !ok {
			t.Errorf("values.yaml has no %s, which sets %s", valuePath, f.path)
			continue
		}
		if !direct || node == nil || strings.Contains(f.path, "[]") || (node.Kind == yaml.ScalarNode && node.Value == "") {
			continue // not the field's own value, or empty: regnorm's default
		}
		got := reflect.New(f.def.Type())
		if err := node.Decode(got.Interface()); err != nil {
			t.Errorf("values.yaml: %s (line %d) does not read as %s's type: %v", valuePath, node.Line, f.path, err)
			continue
		}
		same := reflect.DeepEqual(got.Elem().Interface(), f.def.Interface())
		if why, ok := differs[f.path]; ok && same {
			t.Errorf("values.yaml: %s is regnorm's default now, not different (%s): drop it from the list", valuePath, why)
		} else if !ok && !same {
			t.Errorf("values.yaml: %s is %v, regnorm's default %v: make them equal, or list the difference, with the reason", valuePath, got.Elem(), f.def)
		}
	}
}

// chartManaged is the top-level fields the chart's ConfigMap renders
// itself: its $managed list, which config.extra may not name.
func chartManaged(t *testing.T) map[string]bool {
	t.Helper()
	tmpl, err := os.ReadFile(chartDir + "/templates/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	list := regexp.MustCompile(`\$managed := list((?: "[^"]+")+)`).FindSubmatch(tmpl)
	if list == nil {
		t.Fatal(`templates/configmap.yaml has no "$managed := list ..."`)
	}
	managed := map[string]bool{}
	for _, m := range regexp.MustCompile(`"([^"]+)"`).FindAllSubmatch(list[1], -1) {
		managed[string(m[1])] = true
	}
	return managed
}

// chartValue is the value at a dotted path of values.yaml. For list[].field
// it is that field of the first element that sets it; when none does, the
// field counts as there (with a nil node) if the comment above the list
// names it.
func chartValue(doc *yaml.Node, path string) (*yaml.Node, bool) {
	n := doc
	if n.Kind == yaml.DocumentNode {
		n = n.Content[0]
	}
	parts := strings.Split(path, ".")
	for i, part := range parts {
		name, isList := strings.CutSuffix(part, "[]")
		key, value := mappingEntry(n, name)
		if value == nil {
			return nil, false
		}
		if !isList {
			n = value
			continue
		}
		if i+2 != len(parts) {
			return nil, false // a list's elements' fields are one level deep
		}
		field := parts[i+1]
		for _, el := range value.Content {
			if _, v := mappingEntry(el, field); v != nil {
				return v, true
			}
		}
		// The word itself, not config.field.
		return nil, regexp.MustCompile(`(?:^|[^.\w])` + regexp.QuoteMeta(field) + `\b`).MatchString(key.HeadComment)
	}
	return n, true
}

// mappingEntry is the key and value of name in the mapping n.
func mappingEntry(n *yaml.Node, name string) (key, value *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == name {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}

// TestOnceIsNotCalledSafeAlone: wherever the docs call `node-config
// --once` safe beside the DaemonSet's node-config (it changes nothing on
// the node), they also say that it sends the node's report, which the
// fleet view then shows for the node until the DaemonSet's node-config
// reports again: a check that seems to change nothing does change that.
func TestOnceIsNotCalledSafeAlone(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../deploy/helm/regnorm/README.md")
	safe := regexp.MustCompile(`(?i)(safe|can run) beside the DaemonSet`)
	found := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// A paragraph, or a table's row.
		for _, p := range regexp.MustCompile(`\n\s*\n|\n\|`).Split(string(b), -1) {
			if !strings.Contains(p, "--once") || !safe.MatchString(p) {
				continue
			}
			found++
			if !strings.Contains(p, "report") || !strings.Contains(p, "fleet view") {
				t.Errorf("%s calls --once safe beside the DaemonSet without saying it sends the node's report, shown in the fleet view until the DaemonSet's next one:\n%s", f, p)
			}
		}
	}
	if found == 0 {
		t.Error("no doc calls --once safe beside the DaemonSet: this test looks for nothing")
	}
}
