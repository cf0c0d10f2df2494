#!/usr/bin/env bash
# Agent benchmarks behind BENCHMARKS.md:
#   1. lookups/s and latency over the socket at 1, 8 and 32 connections
#      (GET /v1/tenants/{id}, 10k-tenant snapshot);
#   2. apply time and peak RSS of a 100k-tenant bundle;
#   3. lookup latency while that bundle is applied.
# Numbers and the machine: BENCHMARKS.md.
# Needs oha (cargo install oha --locked).
# Usage: bench/agent.sh [seconds per run]; CACHE_BYTES=... sets the agent's redb cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v oha >/dev/null || { echo "install oha: cargo install oha --locked" >&2; exit 2; }
cargo build --release -q -p strata-publisher -p strata-agent
P=$PWD/target/release/strata-publisher
A=$PWD/target/release/strata-agent
W=$(mktemp -d)
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$W"' EXIT

$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants 10000 --out "$W/src10k" >/dev/null
$P generate --tenants 100000 --out "$W/src100k" >/dev/null
# Publish into a staging store; the live store gets each version by copying
# the bundle, then the pointer, so the agent sees the pointer move at once.
$P publish --source "$W/src10k" --key "$W/ci.key" --store "file://$W/staging" >/dev/null
mkdir -p "$W/store/snapshots" "$W/store/channels"
cp "$W/staging/snapshots/"* "$W/store/snapshots/"
cp "$W/staging/channels/stable.json" "$W/store/channels/stable.json"

cat > "$W/agent.toml" <<CONF
source = "file://$W/store"
poll_interval = "1s"
data_dir = "$W/data"
socket = "$W/agent.sock"
cache_bytes = ${CACHE_BYTES:-67108864}
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
STRATA_LOG=warn $A run --config "$W/agent.toml" &
AGENT=$!
until curl -sf --unix-socket "$W/agent.sock" http://strata/readyz >/dev/null 2>&1; do sleep 0.05; done

TENANT=$(ls "$W/src10k/tenants" | sed -n 5000p | sed 's/\.toml$//')
URL="http://strata/v1/tenants/$TENANT"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== lookups, GET /v1/tenants/{id}, 10k-tenant snapshot, ${SECS}s each"
summary() { python3 -c '
import json, sys
d = json.load(sys.stdin)
s, p = d["summary"], d["latencyPercentiles"]
rps, p50, p99, ok = s["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, s["successRate"] * 100
print("  c=%2s: %9.0f req/s  p50 %7.1f us  p99 %7.1f us  success %.1f%%" % (sys.argv[1], rps, p50, p99, ok))
' "$1"; }
for c in 1 8 32; do
  oha --no-tui --output-format json -z "${SECS}s" -c "$c" --unix-socket "$W/agent.sock" "$URL" | summary "$c"
done

rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' /proc/$AGENT/status; }
echo "== apply of a 100k-tenant bundle"
echo "  agent RSS before: $(rss) MiB"
$P publish --source "$W/src100k" --key "$W/ci.key" --store "file://$W/staging" >/dev/null
BUNDLE=$(ls "$W/staging/snapshots" | tail -1)
ls -l "$W/staging/snapshots/$BUNDLE" | awk '{printf "  bundle: %.1f MiB\n", $5/1048576}'
cp "$W/staging/snapshots/$BUNDLE" "$W/store/snapshots/.$BUNDLE"
mv "$W/store/snapshots/.$BUNDLE" "$W/store/snapshots/$BUNDLE"
( oha --no-tui --output-format json -z "$((SECS + 5))s" -c 8 --unix-socket "$W/agent.sock" "$URL" > "$W/during.json" ) &
OHA=$!
sleep 1
cp "$W/staging/channels/stable.json" "$W/store/channels/.stable.json"
mv "$W/store/channels/.stable.json" "$W/store/channels/stable.json"
START=$(date +%s.%N)
until curl -sf --unix-socket "$W/agent.sock" http://strata/v1/snapshot | grep -q '"version":2'; do sleep 0.02; done
END=$(date +%s.%N)
APPLY=$(curl -sf --unix-socket "$W/agent.sock" http://strata/metrics | awk '/^strata_last_apply_seconds/ {print $2}')
echo "  pointer moved -> served: $(python3 -c "print(f'{$END-$START:.2f}')") s (verify + ingest: ${APPLY} s)"
echo "  agent peak RSS (VmHWM): $(awk '/^VmHWM/ {printf "%.1f", $2/1024}' /proc/$AGENT/status) MiB, RSS after: $(rss) MiB (redb cache: $(( ${CACHE_BYTES:-67108864} >> 20 )) MiB)"
wait $OHA
echo "== lookups during the apply (c=8, $((SECS + 5))s window containing the apply)"
summary 8 < "$W/during.json"
echo "  data dir: $(du -sh "$W/data" | cut -f1)"
