#!/usr/bin/env bash
# The cost of `?session=` (canary by session) against a plain lookup, on one
# agent over its unix socket (BENCHMARKS.md, "Canary by session"):
#   plain    GET /v1/tenants/{a tenant without a canary}
#   session  the same with ?session=call-42 (one more B-tree lookup: no canary)
#   canary   GET /v1/tenants/{a tenant with a 50 % canary}?session=call-42
#            (the canary's config read, its arm found, the draw hashed)
# 10,000 generated tenants, 1,000 of them with a canary. Each case runs
# ROUNDS times (default 3), the cases interleaved, REQUESTS each (default
# 200000) at 32 connections; oha gets OHA_THREADS (default 1) threads for
# every case. Prints requests/s, p50, p99 and the agent's CPU time per
# lookup (from /proc, the steadier figure on a shared VM) per run, then the
# medians.
# Needs oha (cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
command -v oha >/dev/null || { echo "install oha: cargo install oha --locked" >&2; exit 2; }
cargo build --release -q -p strata-publisher -p strata-agent
P=$PWD/target/release/strata-publisher
A=$PWD/target/release/strata-agent
W=$(mktemp -d)
AGENT=
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$W"' EXIT

$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants 10000 --out "$W/src" >/dev/null
# Every tenth tenant gets a canary: its own file at 9.0.0, 50 % of sessions.
ls "$W/src/tenants" | awk 'NR % 10 == 0' | while read -r f; do
  id=${f%.toml}
  { echo 'canary_percent = 50'; sed 's/^version = .*/version = "9.0.0"/' "$W/src/tenants/$f"; } \
    > "$W/src/tenants/$id.canary.toml"
done
WITH=$(ls "$W/src/tenants" | grep '\.canary\.toml$' | sed -n 50p | sed 's/\.canary\.toml$//')
WITHOUT=$(ls "$W/src/tenants" | grep -v canary | awk 'NR % 10 == 5' | sed -n 50p | sed 's/\.toml$//')
$P publish --init --source "$W/src" --key "$W/ci.key" --store "file://$W/store" >/dev/null

cat > "$W/agent.toml" <<CONF
source = "file://$W/store"
data_dir = "$W/data"
socket = "$W/agent.sock"
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
STRATA_LOG=warn $A run --config "$W/agent.toml" &
AGENT=$!
for _ in $(seq 200); do
  curl -sf --unix-socket "$W/agent.sock" http://strata/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
arm=$(curl -s -D - -o /dev/null --unix-socket "$W/agent.sock" "http://strata/v1/tenants/$WITH?session=call-42" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-strata-arm"{print $2}')
echo "tenant with a canary: $WITH (call-42 draws the $arm arm); without: $WITHOUT"

# The agent's CPU time so far, in clock ticks (utime + stime).
cpu() { awk '{print $14 + $15}' "/proc/$AGENT/stat"; }
run() {
  local before
  before=$(cpu)
  oha -n "$N" -c 32 --no-tui --output-format json --worker-threads "${OHA_THREADS:-1}" \
    --unix-socket "$W/agent.sock" "$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); s=r["summary"]; p=r["latencyPercentiles"]; print("%.0f %.0f %.0f" % (s["requestsPerSec"], p["p50"]*1e6, p["p99"]*1e6))' | tr '\n' ' '
  echo "$before $(cpu) $(getconf CLK_TCK) $N" | awk '{printf "%.2f\n", ($2 - $1) / $3 / $4 * 1e6}'
}
declare -A URL=(
  [plain]="http://strata/v1/tenants/$WITHOUT"
  [session]="http://strata/v1/tenants/$WITHOUT?session=call-42"
  [canary]="http://strata/v1/tenants/$WITH?session=call-42"
)
: > "$W/results"
for r in $(seq "$ROUNDS"); do
  for c in plain session canary; do
    out=$(run "${URL[$c]}")
    echo "round $r $c: req/s p50_us p99_us agent_cpu_us_per_lookup = $out"
    echo "$c $out" >> "$W/results"
  done
done
python3 - "$W/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    c, rps, p50, p99, cpu = line.split()
    rows.setdefault(c, []).append((float(rps), float(p50), float(p99), float(cpu)))
base = statistics.median(r[0] for r in rows["plain"])
base_cpu = statistics.median(r[3] for r in rows["plain"])
for c, rs in rows.items():
    rps = statistics.median(r[0] for r in rs)
    cpu = statistics.median(r[3] for r in rs)
    print(f"{c:8} median {rps:,.0f} req/s ({rps / base:.2f}x plain), p50 {statistics.median(r[1] for r in rs):.0f} us, p99 {statistics.median(r[2] for r in rs):.0f} us, agent CPU {cpu:.2f} us a lookup ({cpu / base_cpu:.2f}x plain)")
PY
