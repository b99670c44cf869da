package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// TestComposeFile loads docker-compose.yml with the compose-spec loader (no
// Docker engine runs here) and checks that everything it builds from or
// mounts exists.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("regnorm", true) })
	if err != nil {
		t.Fatalf("compose file does not load: %v", err)
	}
	if got := project.ServiceNames(); !slices.Equal(sorted(got), []string{"grafana", "prometheus", "regnorm"}) {
		t.Fatalf("services: %v", got)
	}
	for name, svc := range project.Services {
		if svc.Build != nil {
			if _, err := os.Stat(filepath.Join(svc.Build.Context, svc.Build.Dockerfile)); err != nil {
				t.Errorf("service %s builds from a missing Dockerfile: %v", name, err)
			}
		}
		for _, v := range svc.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s mounts missing %s", name, v.Source)
			}
		}
	}
	regnorm := project.Services["regnorm"]
	if regnorm.Command[0] != "--config" || !regnorm.ReadOnly {
		t.Errorf("regnorm service: command %v, read-only %v", regnorm.Command, regnorm.ReadOnly)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
