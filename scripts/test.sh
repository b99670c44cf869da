#!/usr/bin/env bash
# The whole test suite: formatting, vet, unit and integration tests (race
# detector on), fuzz seeds, the end-to-end tests with real containerd, the
# registry binary and the OCI conformance suite, and a short benchmark run
# that keeps the benchmarks working. Installs what it needs (scripts/test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

eval "$(scripts/test-deps.sh)"

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"; exit 1
fi

echo "== go vet"
go vet ./...
go vet -tags e2e ./e2e/

echo "== unit and integration tests"
# Every test whose tool is installed above runs; none may skip.
export REGNORM_REQUIRE_ALL=1
go test -race -count=1 ./...

echo "== fuzzing (each target for REGNORM_FUZZTIME, default 20s)"
# A crasher is written to testdata/fuzz/ and fails the run; commit it as a
# regression test once fixed.
# Go 1.26's fuzzing coordinator may end a run that found nothing with a bare
# "context deadline exceeded" when a starved worker misses the -fuzztime
# deadline (go.dev/issue/75804, fixed in Go 1.27): such a run, with no
# failing input written, replays its corpus and counts if that passes.
fuzzlog=$(mktemp)
trap 'rm -f "$fuzzlog"' EXIT
for target in rewrite:FuzzNormalizeManifest rewrite:FuzzNormalizeIndex rewrite:FuzzRewriteConfig \
  rewrite:FuzzJSONDoc rewrite:FuzzRepackLayer proxy:FuzzRequestPath internal/mediatype:FuzzOf \
  internal/cosign:FuzzVerifyBundle internal/cosign:FuzzVerifySimpleSigning; do
  name=${target#*:} pkg=./${target%%:*}
  if ! go test -run '^$' -fuzz "^$name\$" -fuzztime "${REGNORM_FUZZTIME:-20s}" "$pkg" 2>&1 | tee "$fuzzlog"; then
    if grep -q 'Failing input written' "$fuzzlog" || ! grep -q '^    context deadline exceeded$' "$fuzzlog"; then
      exit 1
    fi
    echo "fuzz: $name: the coordinator's deadline race (go.dev/issue/75804), no failing input; replaying the corpus"
    go test -run "^$name\$" "$pkg"
  fi
done

echo "== end-to-end tests"
go test -tags e2e -count=1 -v -timeout 30m ./e2e/ 2>&1 | grep -v '^\s*{"time"'

echo "== benchmarks (short run, figures not judged)"
REGNORM_BENCH_BLOB_MB=16 REGNORM_BENCH_LAYER_MB=16 REGNORM_BENCH_MEMORY_MB=32 REGNORM_BENCH_WARM_MB=8 \
  go test -run '^$' -bench . -benchtime 2x ./...

echo "== done in $(( $(date +%s) - start ))s"
