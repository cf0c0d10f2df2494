#!/usr/bin/env bash
# What verification costs an apply, with nothing else running (BENCHMARKS.md,
# "Strict payload checks"): a new agent applies a 100k-tenant snapshot (every
# body new: each config parsed and checked), then applies 100k-tenant
# snapshots in which 1% of the tenants changed (only those configs checked).
# Prints each apply's verify + ingest seconds from the agent's log line.
# Usage: bench/apply.sh [cold runs] [1% runs]; BIN=DIR takes the binaries
# from DIR instead of building them (to compare two builds on one source tree).
set -euo pipefail
cd "$(dirname "$0")/.."
COLD=${1:-3}
STEADY=${2:-5}
. bench/binaries.sh
AGENT=
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$W"' EXIT

$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants 100000 --out "$W/src" >/dev/null
$P publish --init --format 2 --source "$W/src" --key "$W/ci.key" --store "file://$W/store" >/dev/null

# start NAME: a new agent with an empty data dir; logs to $W/NAME.log.
start() {
  rm -rf "$W/$1.data"
  cat > "$W/$1.toml" <<CONF
source = "file://$W/store"
poll_interval = "1s"
data_dir = "$W/$1.data"
socket = "$W/$1.sock"
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
  STRATA_LOG=info $A run --config "$W/$1.toml" 2> "$W/$1.log" &
  AGENT=$!
}
# applied LOG VERSION: waits for the version's "snapshot applied" line and
# prints its seconds (verify + ingest, from the pointer read to served).
applied() {
  grep -m1 -q "snapshot applied version=$2 " <(tail -n +1 --pid="$AGENT" -f "$1")
  grep -m1 -o "snapshot applied version=$2 .*" "$1" | grep -o ' seconds=[0-9.]*' | cut -d= -f2
}
stop() { kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== a new agent applies 100k tenants (every config checked)"
for run in $(seq 1 "$COLD"); do
  start cold
  echo "  run $run: $(applied "$W/cold.log" 1) s"
  stop
done
echo "== 1% of 100k tenants changed (1,000 configs checked)"
start steady
applied "$W/steady.log" 1 >/dev/null
V=1
for k in $(seq 1 "$STEADY"); do
  ls "$W/src/tenants" | awk -v k="$k" 'NR % 100 == k' | while read -r f; do
    sed -i "s/^version = .*/version = \"9.9.$k\"/" "$W/src/tenants/$f"
  done
  $P publish --init --format 2 --source "$W/src" --key "$W/ci.key" --store "file://$W/store" >/dev/null
  V=$((V + 1))
  echo "  run $k: $(applied "$W/steady.log" $V) s"
done
stop
