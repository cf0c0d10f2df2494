#!/usr/bin/env bash
# Format 3 at a million tenants (BENCHMARKS.md, "Format 3 at 1M tenants"):
# the full publish (time, peak RSS, bytes), a one-tenant publish over it,
# and a new agent's cold apply (time, peak RSS, data file size). Needs
# ~6 GB for the source, ~0.6 GB for the store and ~13 GB for the agent's
# redb file; takes ~6 minutes on 2 vCPUs.
# Usage: bench/format3-1m.sh [tenants]; BIN=DIR takes the binaries from DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
. bench/binaries.sh
trap 'pkill -f "$W/a.toml" 2>/dev/null || true; rm -rf "$W"' EXIT
# Agents of a channel this size run with max_bundle_bytes raised (about 8 GB
# of records); the publisher is told the same.
MAX=17179869184
measure() { /usr/bin/time -f "%e s wall, %M KB peak RSS" "$@" 2>&1 >/dev/null | tail -1; }

echo "machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $N tenants"
$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants "$N" --out "$W/src" >/dev/null
echo "full publish: $(measure $P publish --init --format 3 --agent-max-bundle-bytes $MAX --source "$W/src" --key "$W/ci.key" --store "file://$W/s")"
echo "store: $(du -sb "$W/s/objects" | cut -f1) bytes in $(find "$W/s/objects" -type f | wc -l) objects"
f=$(ls "$W/src/tenants" | sed -n "$((N / 2))p")
sed -i 's/^version = .*/version = "9.9.9"/; s/^name = .*/name = "Changed Once"/' "$W/src/tenants/$f"
before=$(du -sb "$W/s/objects" | cut -f1)
echo "one-tenant publish: $(measure $P publish --format 3 --agent-max-bundle-bytes $MAX --source "$W/src" --key "$W/ci.key" --store "file://$W/s"), uploaded $(( $(du -sb "$W/s/objects" | cut -f1) - before )) bytes (du)"

cat > "$W/a.toml" <<CONF
source = "file://$W/s"
poll_interval = "1s"
data_dir = "$W/a.data"
socket = "$W/a.sock"
max_bundle_bytes = $MAX
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
STRATA_LOG=info /usr/bin/time -f "agent: %M KB peak RSS" -o "$W/a.rss" $A run --config "$W/a.toml" 2> "$W/a.log" &
grep -m1 -q "snapshot durable" <(tail -n +1 -f "$W/a.log")
grep -m1 -o "snapshot applied .*" "$W/a.log" | grep -o "tenants=[0-9]*\| bytes_fetched=[0-9]*\| seconds=[0-9.]*" | xargs echo "cold apply:"
echo "redb file: $(stat -c %s "$W/a.data/strata.redb") bytes, $(du -B1 "$W/a.data/strata.redb" | cut -f1) on disk"
pkill -INT -f "$W/a.toml"; wait
cat "$W/a.rss"
