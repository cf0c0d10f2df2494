#!/usr/bin/env bash
# What a long forbidden-pattern list costs validation: 10,000 generated
# tenants validated against Layer 1's default list, then against the same
# list with 10,000 more phrases, alternating. Target: the long list within
# 1.5x the default's time.
# Usage: bench/patterns.sh [runs]; BIN=DIR takes strata-publisher from DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
TENANTS=${TENANTS:-10000}
PATTERNS=${PATTERNS:-10000}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p strata-publisher
  BIN=$PWD/target/release
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$BIN/strata-publisher" generate --tenants "$TENANTS" --out "$W/default" >/dev/null
cp -r "$W/default" "$W/long"
python3 - "$W/long/layer1.toml" "$PATTERNS" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
text = open(path).read()
extra = ", ".join(f'"zq{i} never said phrase{i} here"' for i in range(n))
text = text.replace("forbidden_patterns = [", "forbidden_patterns = [" + extra + ", ", 1)
open(path, "w").write(text)
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $TENANTS tenants, $PATTERNS extra patterns"
for run in $(seq 1 "$RUNS"); do
  for list in default long; do
    start=$(date +%s.%N)
    "$BIN/strata-publisher" validate --source "$W/$list" >/dev/null
    end=$(date +%s.%N)
    echo "  $list list, run $run: $(python3 -c "print(f'{$end - $start:.2f}')") s"
  done
done
