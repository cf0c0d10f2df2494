#!/usr/bin/env bash
# What a publish costs with format 3 (BENCHMARKS.md, "Format 3"): 100k
# generated tenants published as format 2 and as format 3 (sizes, times),
# a new agent's cold apply of the format 3 store, then publishes of one
# tenant and of 1 % of the tenants: the publish's time, the bytes it
# uploaded, and what the agent fetched (its strata_fetched_object_bytes_total)
# and how long it took to serve the change after the pointer moved.
# Usage: bench/format3.sh [tenants]; BIN=DIR takes the binaries from DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
. bench/binaries.sh
AGENT=
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$W"' EXIT
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }

echo "machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $N tenants"
$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants "$N" --out "$W/src" >/dev/null
echo "format 2 publish: $(t $P publish --init --format 2 --source "$W/src" --key "$W/ci.key" --store "file://$W/f2") s, $(bytes "$W/f2/snapshots") bytes"
echo "format 3 publish: $(t $P publish --init --format 3 --source "$W/src" --key "$W/ci.key" --store "file://$W/f3") s, $(bytes "$W/f3/objects") bytes in $(find "$W/f3/objects" -type f | wc -l) objects, root $(bytes "$W/f3/snapshots") bytes"

cat > "$W/a.toml" <<CONF
source = "file://$W/f3"
poll_interval = "100ms"
data_dir = "$W/a.data"
socket = "$W/a.sock"
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
STRATA_LOG=info $A run --config "$W/a.toml" 2> "$W/a.log" &
AGENT=$!
# applied VERSION: the "snapshot applied" line's seconds and bytes fetched.
applied() {
  grep -m1 -q "snapshot applied version=$1 " <(tail -n +1 --pid="$AGENT" -f "$W/a.log")
  local line; line=$(grep -m1 -o "snapshot applied version=$1 .*" "$W/a.log")
  echo "served $(echo "$line" | grep -o ' seconds=[0-9.]*' | cut -d= -f2) s after reading the pointer, fetched $(echo "$line" | grep -o 'bytes_fetched=[0-9]*' | cut -d= -f2) bytes"
}
echo "cold apply: $(applied 1)"
total=$(bytes "$W/f3/objects")
# change K: edits K tenants (every N/K-th), publishes, reports.
V=1
change() {
  local k=$1 step=$((N / $1)) i=0
  for f in $(ls "$W/src/tenants" | awk -v s="$step" 'NR % s == 1'); do
    sed -i "s/^version = .*/version = \"9.9.$V\"/" "$W/src/tenants/$f"
    i=$((i + 1)); [ "$i" -ge "$k" ] && break
  done
  local before; before=$(bytes "$W/f3/objects")
  local secs; secs=$(t $P publish --format 3 --source "$W/src" --key "$W/ci.key" --store "file://$W/f3")
  V=$((V + 1))
  local up=$(( $(bytes "$W/f3/objects") - before ))
  echo "$k tenant(s) changed: publish $secs s, uploaded $up bytes ($(echo "scale=4; 100 * $up / $total" | bc) % of $total); agent $(applied $V)"
}
change 1
change 1
change $((N / 100))
