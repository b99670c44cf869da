package main

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version is set when a release is built (-ldflags "-X main.version=v1.2.3").
// Without it, the module version from the build info applies ("(devel)" for
// a build from a checkout).
var version string

// buildInfo is what a binary says of its build. Replicas must run the same
// build to compute the same digests.
type buildInfo struct {
	Version   string
	Revision  string // VCS revision, "-dirty" when built from modified files
	GoVersion string
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Revision: "unknown", GoVersion: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	bi.GoVersion = info.GoVersion
	if bi.Version == "" {
		bi.Version = info.Main.Version
	}
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		bi.Revision += "-dirty"
	}
	if bi.Version == "" {
		bi.Version = "(devel)"
	}
	return bi
}

func printVersion(w io.Writer) {
	bi := readBuildInfo()
	fmt.Fprintf(w, "regnorm %s (revision %s, %s)\n", bi.Version, bi.Revision, bi.GoVersion)
}

// buildInfoMetric is regnorm_build_info: 1, labelled with the build, so a
// dashboard can show replicas that disagree.
func buildInfoMetric(bi buildInfo) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "regnorm_build_info",
		Help:        "Always 1, labelled with the build: replicas on one cache must run the same build to agree on digests.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	}, func() float64 { return 1 })
}
