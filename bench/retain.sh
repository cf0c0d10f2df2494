#!/usr/bin/env bash
# What `retain_for` costs in redb size (BENCHMARKS.md, "Sessions keep their
# snapshot"): 100,000 generated tenants published (format 3), then PUBLISHES
# (default 20) publishes each changing a different 1 % of the tenants, all
# within the window. Two agents follow the store: one with the defaults
# (retain = 5, retain_for = "2h": it keeps all 21 snapshots) and one with
# retain_for = "0s" (it keeps 5). Prints the snapshots each retains, then
# (agents stopped) what each redb file holds: pages in use and stored bytes
# (agent/examples/redb_stats.rs; the file itself only grows).
set -euo pipefail
cd "$(dirname "$0")/.."
TENANTS=${TENANTS:-100000}
PUBLISHES=${PUBLISHES:-20}
cargo build --release -q -p strata-publisher -p strata-agent --example redb_stats
STATS=$PWD/target/release/examples/redb_stats
P=$PWD/target/release/strata-publisher
A=$PWD/target/release/strata-agent
W=$(mktemp -d)
PIDS=
trap 'kill $PIDS 2>/dev/null || true; rm -rf "$W"' EXIT

$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants "$TENANTS" --out "$W/src" >/dev/null
publish() { $P publish --init --source "$W/src" --key "$W/ci.key" --store "file://$W/store" 2>/dev/null | head -1; }
publish
for name in window plain; do
  extra=""
  [ "$name" = plain ] && extra='retain_for = "0s"'
  cat > "$W/$name.toml" <<CONF
source = "file://$W/store"
poll_interval = "1s"
data_dir = "$W/$name-data"
socket = "$W/$name.sock"
$extra
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
  STRATA_LOG=warn $A run --config "$W/$name.toml" &
  PIDS="$PIDS $!"
done
serves() {
  for name in window plain; do
    for _ in $(seq 1200); do
      v=$(curl -s --unix-socket "$W/$name.sock" http://strata/v1/snapshot 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("version"))' 2>/dev/null || true)
      [ "$v" = "$1" ] && break
      sleep 0.25
    done
    [ "$v" = "$1" ] || { echo "$name did not serve $1" >&2; exit 1; }
  done
}
retained() {
  curl -s --unix-socket "$W/$1.sock" http://strata/v1/snapshots |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["snapshots"]))'
}
serves 1
for k in $(seq "$PUBLISHES"); do
  ls "$W/src/tenants" | awk -v k="$k" 'NR % 100 == k' | while read -r f; do
    sed -i "s/^version = .*/version = \"9.9.$k\"/" "$W/src/tenants/$f"
  done
  publish >/dev/null
  serves $((k + 1))
done
for name in window plain; do
  echo "$name: $(retained "$name") snapshot(s) retained"
done
kill $PIDS
wait $PIDS 2>/dev/null || true
PIDS=
for name in window plain; do
  read -r allocated stored < <($STATS "$W/$name-data/strata.redb")
  echo "after $PUBLISHES publishes of 1 %: $name: $allocated B in pages, $stored B of keys and values"
done
