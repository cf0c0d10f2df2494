#!/usr/bin/env bash
# How long `strata-publisher validate` takes on 100,000 generated tenants
# (BENCHMARKS.md, "Validating 100,000 tenants"): the cost of the checks on tenant input.
# Usage: bench/validate.sh [runs]; BIN=DIR takes strata-publisher from DIR
# instead of building it (to compare two builds on one source tree).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p strata-publisher
  BIN=$PWD/target/release
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$BIN/strata-publisher" generate --tenants 100000 --out "$W/src" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for run in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  "$BIN/strata-publisher" validate --source "$W/src" >/dev/null
  end=$(date +%s.%N)
  echo "  validate 100k, run $run: $(python3 -c "print(f'{$end - $start:.2f}')") s"
done
