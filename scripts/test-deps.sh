#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, caching built
# tools under $REGNORM_CACHE (default ~/.cache/regnorm) so they are built once.
# Prints the environment the tests read, as `export` lines.
set -euo pipefail

CACHE=${REGNORM_CACHE:-$HOME/.cache/regnorm}
BIN=$CACHE/bin
mkdir -p "$BIN"

# Pinned versions of what the tests build from the Go module proxy.
REGISTRY_VERSION=v3.1.2
# The last containerd that aborts on xattrs on symlinks (fixed in 1.6.9).
OLD_CONTAINERD_VERSION=v1.6.8
# The last containerd 1.7 whose unpacker refuses a config of another platform
# than the pull asked for (1.7.17 fetches the layers instead).
CONTAINERD17_VERSION=v1.7.16
# A containerd 2.x: CRI pulls through the transfer service, ranged blob reads.
CONTAINERD2_VERSION=v2.3.4
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
VERSITYGW_VERSION=v1.8.0
# The last distribution that stores Docker schema 1 manifests (v3 refuses them).
REGISTRY2_VERSION=v2.8.3
# Signs in the test upstream and verifies through regnorm (the referrers API).
COSIGN_VERSION=v3.1.3
# The API server the admission webhook is registered with; Debian's etcd 3.4
# is its store.
KUBE_VERSION=v1.36.3
# Checks the worked policy of docs/signatures.md (Policies: Kyverno) offline.
KYVERNO_VERSION=v1.19.1

log() { echo "test-deps: $*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    log "need root to install ${missing[*]}"; exit 1
  fi
  if [ ! -f "$CACHE/.apt-updated" ] || [ -n "$(find "$CACHE/.apt-updated" -mmin +1440)" ]; then
    apt-get update -qq >&2
    touch "$CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# go_tool NAME PACKAGE@VERSION: go install into the cache unless the pinned
# version is already there.
go_tool() {
  local name=$1 pkg=$2 stamp="$BIN/.$1.version"
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  log "building $pkg"
  GOBIN="$BIN" GOFLAGS=-mod=mod go install "$pkg" >&2
  echo "$pkg" > "$stamp"
}

# old_containerd: containerd v1.6.8 from the Go module proxy. Its go.mod has
# replace directives, so `go install pkg@version` refuses it; build in a
# writable copy of the module instead (about 10 minutes on 2 cores, once).
old_containerd() {
  local out="$BIN/containerd-${OLD_CONTAINERD_VERSION#v}"
  [ -x "$out" ] && return 0
  log "building containerd $OLD_CONTAINERD_VERSION (once; about 10 minutes)"
  local mod src
  mod=$(GOFLAGS=-mod=mod go mod download -json "github.com/containerd/containerd@$OLD_CONTAINERD_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  src=$(mktemp -d "$CACHE/containerd-src.XXXXXX")
  cp -r "$mod/." "$src/"
  chmod -R u+w "$src"
  rm -rf "$src/vendor"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -tags "no_btrfs no_devmapper no_aufs no_zfs" -o "$out.tmp" ./cmd/containerd) >&2
  mv "$out.tmp" "$out"
  rm -rf "$src"
}

# containerd17: containerd v1.7.16's daemon and ctr from the Go module proxy,
# in one directory (its ctr has the transfer service client Debian's 1.6 ctr
# lacks). Its go.mod has an exclude directive, so `go install pkg@version`
# refuses it; build in a writable copy of the module as old_containerd does
# (about 4 minutes on 2 busy cores from empty module and build caches, once). The module's
# vendor directory holds only modules.txt, so it goes and go.mod is read.
containerd17() {
  local out="$BIN/containerd-${CONTAINERD17_VERSION#v}" cmd built=yes
  for cmd in containerd ctr; do [ -x "$out/$cmd" ] || built=no; done
  [ $built = yes ] && [ "$(cat "$out/.version" 2>/dev/null)" = "$CONTAINERD17_VERSION" ] && return 0
  log "building containerd $CONTAINERD17_VERSION (once; about 4 minutes)"
  local mod src tmp
  mod=$(GOFLAGS=-mod=mod go mod download -json "github.com/containerd/containerd@$CONTAINERD17_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  src=$(mktemp -d "$CACHE/containerd17-src.XXXXXX")
  tmp=$(mktemp -d "$out.tmp.XXXXXX")
  chmod 755 "$tmp"
  cp -r "$mod/." "$src/"
  chmod -R u+w "$src"
  rm -rf "$src/vendor"
  if ! (cd "$src" && for cmd in containerd ctr; do
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -tags "no_btrfs no_devmapper no_aufs no_zfs" -o "$tmp/$cmd" "./cmd/$cmd" || exit 1
  done) >&2; then
    rm -rf "$src" "$tmp"
    return 1
  fi
  echo "$CONTAINERD17_VERSION" > "$tmp/.version"
  rm -rf "$out" "$src"
  mv "$tmp" "$out"
}

# containerd2: containerd v2.3.4's daemon, runc shim and ctr from the Go
# module proxy, in one directory. The tests put that directory first on the
# daemon's PATH: it must find this shim, not Debian's 1.6 shim, which fails
# under 2.x. Unlike 1.6.8's, this go.mod has no replace directives, so `go
# install pkg@version` builds it (about 3.5 minutes on 2 cores from a cold
# module cache, once). The version is linked in as containerd's Makefile does:
# it is the User-Agent regnorm sees.
containerd2() {
  local out="$BIN/containerd-${CONTAINERD2_VERSION#v}" cmd built=yes
  for cmd in containerd containerd-shim-runc-v2 ctr; do [ -x "$out/$cmd" ] || built=no; done
  [ $built = yes ] && [ "$(cat "$out/.version" 2>/dev/null)" = "$CONTAINERD2_VERSION" ] && return 0
  log "building containerd $CONTAINERD2_VERSION (once; about 3.5 minutes)"
  local pkgs=() tmp
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    pkgs+=("github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD2_VERSION")
  done
  tmp=$(mktemp -d "$out.tmp.XXXXXX")
  chmod 755 "$tmp"
  if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -tags "no_btrfs no_devmapper no_aufs no_zfs" \
    -ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD2_VERSION" "${pkgs[@]}" >&2; then
    rm -rf "$tmp"
    return 1
  fi
  echo "$CONTAINERD2_VERSION" > "$tmp/.version"
  rm -rf "$out"
  mv "$tmp" "$out"
}

# registry2: distribution v2.8.3's registry, the upstream that serves Docker
# schema 1 images (with compatibility.schema1.enabled). The module predates
# go.mod, so build it in a writable copy made a module, as old_containerd
# does: rsc.io/letsencrypt, which the module proxy refuses, becomes a local
# stub that fails if a config asks for Let's Encrypt, and logrus-logstash-hook
# is pinned to the last release with the API it calls (about 1.5 minutes on
# 2 cores from cold module and build caches, once; 4 beside other builds).
registry2() {
  local out="$BIN/registry-${REGISTRY2_VERSION#v}"
  [ -x "$out" ] && return 0
  log "building distribution registry $REGISTRY2_VERSION (once; about 1.5 minutes)"
  local mod src
  mod=$(GOFLAGS=-mod=mod go mod download -json "github.com/docker/distribution@$REGISTRY2_VERSION+incompatible" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  src=$(mktemp -d "$CACHE/registry2-src.XXXXXX")
  cp -r "$mod/." "$src/"
  chmod -R u+w "$src"
  mkdir "$src/letsencrypt-stub"
  cat > "$src/letsencrypt-stub/go.mod" <<'GOMOD'
module rsc.io/letsencrypt

go 1.21
GOMOD
  cat > "$src/letsencrypt-stub/letsencrypt.go" <<'GO'
// Package letsencrypt stands in for rsc.io/letsencrypt, which the module
// proxy does not serve: the tests never configure Let's Encrypt.
package letsencrypt

import (
	"crypto/tls"
	"errors"
)

var errStub = errors.New("letsencrypt: not in this build")

type Manager struct{}

func (m *Manager) CacheFile(name string) error                           { return errStub }
func (m *Manager) Registered() bool                                      { return false }
func (m *Manager) Register(email string, prompt func(string) bool) error { return errStub }
func (m *Manager) SetHosts(hosts []string) error                         { return errStub }
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, errStub
}
GO
  if ! (cd "$src" &&
    go mod init github.com/docker/distribution &&
    go mod edit -require=rsc.io/letsencrypt@v0.0.0 -replace=rsc.io/letsencrypt=./letsencrypt-stub &&
    GOFLAGS=-mod=mod go get github.com/bshuster-repo/logrus-logstash-hook@v0.4.1 &&
    GOFLAGS=-mod=mod go mod tidy -e &&
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$out.tmp" \
      -ldflags "-X github.com/docker/distribution/version.Version=$REGISTRY2_VERSION" ./cmd/registry) >&2; then
    rm -rf "$src" "$out.tmp"
    return 1
  fi
  mv "$out.tmp" "$out"
  rm -rf "$src"
}

# kube_apiserver: kube-apiserver v1.36.3 from the Go module proxy. `go install
# pkg@version` refuses k8s.io/kubernetes: its go.mod replaces every k8s.io
# staging module with ./staging/src/..., which the module zip leaves out. Build
# in a writable copy of the module that requires the published staging modules
# (v0.<minor>.<patch>) instead; GOFLAGS=-mod=mod because the zip's go.sum has
# no lines for them, and its vendor/ holds only an OWNERS file. The build has
# its own Go build cache, removed with the copy: 2.3 GB that nothing else
# reuses. Once: 542 s of CPU, about 6 minutes on 2 idle cores (docs/testing.md).
kube_apiserver() {
  local out="$BIN/kube-apiserver-$KUBE_VERSION"
  [ -x "$out" ] && return 0
  log "building kube-apiserver $KUBE_VERSION (once; about 6 minutes)"
  local staging="v0.${KUBE_VERSION#v1.}" mod work ok=yes
  mod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  # What a run killed mid-build may have left (up to 2.3 GB): the traps below
  # clean up after SIGINT and SIGTERM, but not after SIGKILL.
  rm -rf "$CACHE"/kube-apiserver-build.* "$out.tmp"
  work=$(mktemp -d "$CACHE/kube-apiserver-build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work' '$out.tmp'" EXIT
  # shellcheck disable=SC2064
  trap "rm -rf '$work' '$out.tmp'; exit 130" INT
  # shellcheck disable=SC2064
  trap "rm -rf '$work' '$out.tmp'; exit 143" TERM
  (cp -r "$mod/." "$work/src" && chmod -R u+w "$work" && cd "$work/src" &&
    rm -rf vendor go.work go.work.sum &&
    sed -i '/=> \.\/staging\/src\//d' go.mod &&
    sed -i -E "s#^(\s+k8s\.io/[a-z0-9-]+) v0\.0\.0\$#\1 $staging#" go.mod &&
    GOCACHE="$work/gocache" CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$out.tmp" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION" ./cmd/kube-apiserver) >&2 || ok=no
  if [ $ok = yes ]; then mv "$out.tmp" "$out"; fi
  rm -rf "$work" "$out.tmp"
  trap - EXIT INT TERM
  [ $ok = yes ]
}

# kyverno: the Kyverno CLI (kubectl-kyverno) from the Go module proxy. Its
# go.mod has a replace directive (k8s.io/pod-security-admission => Kyverno's
# fork, itself a published module), so `go install pkg@version` refuses it;
# in a writable copy of the module, the main module's replace is honoured and
# the CLI builds as Kyverno's Makefile builds it (CGO off, -s -w, the version
# linked in). Built into a temporary name and moved into place: a failed
# build leaves nothing behind. From cold module and build caches: 12 CPU-minutes
# (about 6 minutes on 2 idle cores; 21.5 beside other builds), 2.8 GB peak
# memory, 5.1 GB of caches (2.4 modules, 2.7 build), a 265 MB binary; once.
kyverno() {
  local out="$BIN/kubectl-kyverno" stamp="$BIN/.kubectl-kyverno.version"
  [ -x "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KYVERNO_VERSION" ] && return 0
  log "building kubectl-kyverno $KYVERNO_VERSION (once; about 6 minutes)"
  local mod src
  mod=$(GOFLAGS=-mod=mod go mod download -json "github.com/kyverno/kyverno@$KYVERNO_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  src=$(mktemp -d "$CACHE/kyverno-src.XXXXXX")
  cp -r "$mod/." "$src/"
  chmod -R u+w "$src"
  if ! (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$out.tmp" \
    -ldflags "-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion=$KYVERNO_VERSION" ./cmd/cli/kubectl-kyverno) >&2; then
    rm -rf "$src" "$out.tmp"
    return 1
  fi
  rm -f "$stamp"
  mv "$out.tmp" "$out"
  echo "$KYVERNO_VERSION" > "$stamp"
  rm -rf "$src"
}

# npm_tools: @grafana/schema and TypeScript, which type-check the dashboard.
NPM_TOOLS="@grafana/schema@13.2.3 typescript@5.9.3"
npm_tools() {
  local dir="$CACHE/npm"
  [ "$(cat "$dir/.versions" 2>/dev/null)" = "$NPM_TOOLS" ] && [ -d "$dir/node_modules" ] && return 0
  command -v npm >/dev/null || apt_install nodejs npm
  log "npm install $NPM_TOOLS"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  npm install --prefix "$dir" --no-audit --no-fund --silent $NPM_TOOLS >&2
  echo "$NPM_TOOLS" > "$dir/.versions"
}

# containerd (Debian 12: 1.6.20) and runc run the end-to-end pulls.
apt_install containerd runc
# A real Prometheus scrapes regnorm and a real browser loads its status page.
apt_install prometheus chromium
go_tool registry "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
go_tool conformance "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
# A real S3-compatible server for the S3 cache (about 2 minutes, once).
go_tool versitygw "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
# cosign signs and verifies offline with a key (about 3 minutes, once).
go_tool cosign "github.com/sigstore/cosign/v3/cmd/cosign@$COSIGN_VERSION"
old_containerd
containerd17
containerd2
registry2
# etcd (Debian 12: 3.4.23) stores what kube-apiserver admits; the package
# starts no service without systemd.
apt_install etcd-server
kube_apiserver
kyverno
npm_tools

echo "export REGNORM_REGISTRY_BIN=$BIN/registry"
echo "export REGNORM_CONFORMANCE_BIN=$BIN/conformance"
echo "export REGNORM_VERSITYGW_BIN=$BIN/versitygw"
echo "export REGNORM_COSIGN_BIN=$BIN/cosign"
echo "export REGNORM_CONTAINERD_BIN=$(command -v containerd)"
echo "export REGNORM_CTR_BIN=$(command -v ctr)"
echo "export REGNORM_PROMETHEUS_BIN=$(command -v prometheus)"
echo "export REGNORM_CHROMIUM_BIN=$(command -v chromium)"
echo "export REGNORM_NPM_MODULES=$CACHE/npm/node_modules"
echo "export REGNORM_OLD_CONTAINERD_BIN=$BIN/containerd-${OLD_CONTAINERD_VERSION#v}"
echo "export REGNORM_CONTAINERD17_DIR=$BIN/containerd-${CONTAINERD17_VERSION#v}"
echo "export REGNORM_CONTAINERD2_DIR=$BIN/containerd-${CONTAINERD2_VERSION#v}"
echo "export REGNORM_REGISTRY2_BIN=$BIN/registry-${REGISTRY2_VERSION#v}"
echo "export REGNORM_ETCD_BIN=$(command -v etcd)"
echo "export REGNORM_KUBE_APISERVER_BIN=$BIN/kube-apiserver-$KUBE_VERSION"
echo "export REGNORM_KYVERNO_BIN=$BIN/kubectl-kyverno"
