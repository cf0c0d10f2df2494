#!/usr/bin/env bash
# Agent benchmarks behind BENCHMARKS.md:
#   1. lookups/s and latency over the socket at 1, 8 and 32 connections
#      (GET /v1/tenants/{id}, 10k-tenant snapshot);
#   2. a cold apply: a 100k-tenant bundle onto an agent serving 10k (every
#      body is new), with lookups at c=8 running through it;
#   3. steady-state applies: 100k-tenant bundles in which 1% of the tenants
#      changed, under a fixed 2,000 lookups/s and under c=8 saturation; then
#      one in which every tenant changed (as many new bodies as a cold
#      apply) under 2,000 lookups/s; the 1% applies' lookups also pooled,
#      and, for the machine's own share, a busy loop at SCHED_IDLE beside
#      the agent with no apply;
#   4. a cold apply with nothing else running: a new agent, empty data dir,
#      applies the 100k snapshot (three runs).
# Lookup latency "during" counts exactly the requests started between the
# pointer move and the new version being served (oha --db-url).
# Numbers and the machine: BENCHMARKS.md.
# Needs oha (cargo install oha --locked).
# Usage: bench/agent.sh [seconds per run]; CACHE_BYTES=... sets the agent's redb cache,
# WORKER_THREADS=N its serving threads (default: the agent's, 1);
# AGENT_BIN=PATH runs another build of the agent (an A/B against an older one);
# STEADY_RUNS=N repeats the steady-state apply at 2,000 lookups/s N times;
# DATA_DIR=DIR puts the agents' data dirs under DIR (e.g. /dev/shm, to take
# the disk out of the measurement);
# OHA_THREADS=N gives the load generator N threads (default: oha's, one per
# core);
# ONLY=steady runs only the 100k apply (no load) and the steady-state 1 %
# applies at 2,000 lookups/s (BENCHMARKS.md, "Lookups while a snapshot is applied");
# SCHED_TRACE=1 records `perf sched` during each steady-state apply and
# prints the agent threads' longest waits off the CPU (state S: asleep, D:
# in the kernel, R: runnable but not run) and their longest scheduling
# delays.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v oha >/dev/null || { echo "install oha: cargo install oha --locked" >&2; exit 2; }
cargo build --release -q -p strata-publisher -p strata-agent
P=$PWD/target/release/strata-publisher
A=${AGENT_BIN:-$PWD/target/release/strata-agent}
W=$(mktemp -d)
D=$(mktemp -d -p "${DATA_DIR:-$W}")
AGENT=
BUSY=
trap 'kill $AGENT $BUSY 2>/dev/null || true; rm -rf "$W" "$D"' EXIT

$P keygen --out "$W/ci.key" >/dev/null
$P generate --tenants 10000 --out "$W/src10k" >/dev/null
$P generate --tenants 100000 --out "$W/src100k" >/dev/null
# The same 100k tenants with 1% changed (every 100th tenant gets a new version).
change_one_percent() {
  ls "$W/src100k/tenants" | awk -v k="$1" 'NR % 100 == k' | while read -r f; do
    sed -i "s/^version = .*/version = \"9.9.$1\"/" "$W/src100k/tenants/$f"
  done
}

# Publish into a staging store; the live store gets each version in two
# steps: `stage` copies the bundle in (the agent wakes only for pointer
# changes, so this goes unnoticed) and stages the pointer beside the store;
# `move_pointer` renames it into channels/, the moment the agent sees.
publish() { $P publish --init --format 2 --source "$1" --key "$W/ci.key" --store "file://$W/staging" >/dev/null; }
stage() {
  local b
  b=$(ls "$W/staging/snapshots" | tail -1)
  mkdir -p "$W/store/snapshots" "$W/store/channels"
  cp "$W/staging/snapshots/$b" "$W/store/snapshots/.$b"
  mv "$W/store/snapshots/.$b" "$W/store/snapshots/$b"
  cp "$W/staging/channels/stable.json" "$W/store/.stable.json"
}
move_pointer() { mv "$W/store/.stable.json" "$W/store/channels/stable.json"; }
promote() { stage; move_pointer; }
publish "$W/src10k"
promote

cat > "$W/agent.toml" <<CONF
source = "file://$W/store"
poll_interval = "1s"
data_dir = "$D/data"
socket = "$W/agent.sock"
cache_bytes = ${CACHE_BYTES:-67108864}
${WORKER_THREADS:+worker_threads = $WORKER_THREADS}
[[trusted_keys]]
role = "publisher"
path = "$W/ci.key.pub"
CONF
STRATA_LOG=info $A run --config "$W/agent.toml" 2> "$W/agent.log" &
AGENT=$!
until curl -sf --unix-socket "$W/agent.sock" http://strata/readyz >/dev/null 2>&1; do sleep 0.05; done

TENANT=$(ls "$W/src10k/tenants" | sed -n 5000p | sed 's/\.toml$//')
URL="http://strata/v1/tenants/$TENANT"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "data dirs under: $D ($(df --output=fstype "$D" | tail -1))"
summary() { python3 -c '
import json, sys
d = json.load(sys.stdin)
s, p = d["summary"], d["latencyPercentiles"]
rps, p50, p99, ok = s["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, s["successRate"] * 100
print("  %-22s %9.0f req/s  p50 %7.1f us  p99 %7.1f us  success %.1f%%" % (sys.argv[1], rps, p50, p99, ok))
' "$1"; }
# load NAME SECONDS [oha args]: lookups against $URL, summary printed.
load() {
  local name=$1 secs=$2
  shift 2
  oha --no-tui ${OHA_THREADS:+--worker-threads $OHA_THREADS} --output-format json -z "${secs}s" "$@" --unix-socket "$W/agent.sock" "$URL" | summary "$name"
}
if [ "${ONLY:-}" != steady ]; then
echo "== lookups, GET /v1/tenants/{id}, 10k-tenant snapshot, ${SECS}s each"
for c in 1 8 32; do load "c=$c" "$SECS" -c "$c"; done
fi

rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' /proc/$AGENT/status; }
# window DB FROM TO NAME [POOL]: latency of the requests oha (--db-url)
# started between FROM and TO seconds after it started; appended to the
# file POOL (one latency per line) if given.
# STATS (Python): stats(name, lat, rate) prints the p50, p99 and count over
# 1.5 ms of the latencies lat (seconds, ascending), after name and rate.
STATS='
def stats(name, lat, rate=""):
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    slow = sum(1 for x in lat if x > 1.5e-3)
    print("  %-22s %sp50 %7.1f us  p99 %7.1f us  (%d requests, %d over 1.5 ms)" % (name, rate, pct(0.5), pct(0.99), len(lat), slow))
'
window() { python3 -c "$STATS"'
import sqlite3, sys
db, lo, hi, name = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = sqlite3.connect(db).execute(
    "select end - coalesce(start_latency_correction, start) from oha"
    " where coalesce(start_latency_correction, start) between ? and ? order by 1", (lo, hi)).fetchall()
lat = [r[0] for r in rows]
stats(name, lat, "%9.0f req/s  " % (len(lat) / (hi - lo)))
if len(sys.argv) > 5:
    with open(sys.argv[5], "a") as pool:
        pool.writelines("%.9f\n" % x for x in lat)
' "$@"; }
# pooled NAME POOL: p50/p99 over every latency appended to POOL.
pooled() { python3 -c "$STATS"'
import sys
stats(sys.argv[1], sorted(float(l) for l in open(sys.argv[2])))
' "$@"; }
# load_pooled NAME SECONDS POOL [oha args]: like load, and every request's
# latency appended to POOL.
load_pooled() {
  local name=$1 secs=$2 pool=$3
  shift 3
  rm -f "$W/idle.db"
  oha --no-tui ${OHA_THREADS:+--worker-threads $OHA_THREADS} --output-format quiet -z "${secs}s" "$@" --db-url "$W/idle.db" --unix-socket "$W/agent.sock" "$URL" >/dev/null 2>&1
  window "$W/idle.db" 0 "$secs" "$name" "$pool"
}
# log_time PATTERN: the timestamp (epoch seconds) of the agent's first log
# line matching PATTERN.
log_time() {
  grep -m1 -E "$1" "$W/agent.log" | python3 -c '
import datetime, sys
stamp = sys.stdin.read().split()[0].rstrip("Z")
print(datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp())'
}

# durable_line VERSION: the log line saying the version is on disk: a small
# apply is committed durably before it is served ("snapshot applied …
# durable=true"); a large one is served first, then "snapshot durable".
durable_line() { echo "snapshot applied version=$1 .*durable=true|snapshot durable version=$1 "; }

# apply NAME VERSION [oha args]: moves the pointer while oha runs; prints the
# apply time and the latency of exactly the lookups started during the apply.
# Nothing else runs in that window: the bundle is staged before oha starts,
# the pointer is renamed by a process started a second earlier (which
# prints the instant), and the end is the timestamp of the agent's
# "snapshot applied" log line (the new version served). A second window runs
# on to the snapshot being on disk (durable_line), read by one
# waiting process. (Spawning
# processes in the window, ~1-2 ms of CPU each at normal priority, or the
# 40 MB copy of the bundle, showed up in the very tail being measured, as
# would polling the agent with curl.)
# POOL, if set, collects the latencies of the lookups during the apply.
apply() {
  local name=$1 v=$2
  shift 2
  local bundle
  bundle=$(ls "$W/staging/snapshots" | tail -1)
  ls -l "$W/staging/snapshots/$bundle" | awk '{printf "  bundle: %.1f MiB\n", $5/1048576}'
  stage
  rm -f "$W/during.db"
  local t0=$EPOCHREALTIME
  oha --no-tui ${OHA_THREADS:+--worker-threads $OHA_THREADS} --output-format quiet -z "${OHA_SECS:-$((SECS + 20))}s" "$@" --db-url "$W/during.db" --unix-socket "$W/agent.sock" "$URL" >/dev/null 2>&1 &
  local oha=$!
  grep -m1 -q -E "$(durable_line "$v")" <(tail -n +1 --pid="$AGENT" -f "$W/agent.log") &
  local waiter=$!
  # The renaming process stays alive (asleep) until the window is over: its
  # exit, ~12 ms of CPU at normal priority, used to land at the window's start.
  local start renamer
  read -r start renamer < <(python3 -c '
import os, sys, time
time.sleep(1.2)
t = time.time()
os.rename(sys.argv[1], sys.argv[2])
print(f"{t:.6f} {os.getpid()}", flush=True)
time.sleep(600)' "$W/store/.stable.json" "$W/store/channels/stable.json")
  local tracer=
  if [ -n "${SCHED_TRACE:-}" ]; then
    perf sched record -a -o "$W/sched.data" -- sleep 30 >/dev/null 2>&1 &
    tracer=$!
  fi
  wait $waiter
  if [ -n "$tracer" ]; then
    kill -INT "$tracer" 2>/dev/null || true
    wait "$tracer" 2>/dev/null || true
    sched_report "$W/sched.data" "$AGENT,$oha"
  fi
  local end durable
  end=$(log_time "snapshot applied version=$v ")
  durable=$(log_time "$(durable_line "$v")")
  local secs
  secs=$(curl -sf --unix-socket "$W/agent.sock" http://strata/metrics | awk '/^strata_last_apply_seconds/ {print $2}')
  echo "  $name: pointer moved -> served $(python3 -c "print(f'{$end-$start:.2f}')") s (verify + ingest ${secs} s)"
  wait $oha
  kill "$renamer"
  window "$W/during.db" "$(python3 -c "print($start-$t0)")" "$(python3 -c "print($end-$t0)")" "lookups during ($*)" ${POOL:+"$POOL"}
  echo "  then made durable in $(python3 -c "print(f'{$durable-$end:.2f}')") s (the write buffer flushed, fdatasync)"
  window "$W/during.db" "$(python3 -c "print($start-$t0)")" "$(python3 -c "print($durable-$t0)")" "until durable ($*)"
}

# sched_report DATA PIDS: the longest times off the CPU of the threads of
# PIDS (the agent, the load generator) in a `perf sched` recording, with the
# state they left it in, and their longest scheduling delays (runnable, not
# running).
sched_report() {
  perf sched timehist -i "$1" --state -p "$2" 2>/dev/null | python3 -c '
import sys
# Each row is a switch out: time, cpu, task[tid/pid], the wait before this
# run (off the CPU), the scheduling delay (woken, not yet run), the run
# time, and the state the task leaves in; the wait belongs to the state of
# the task row before.
rows, left = [], {}
for line in sys.stdin:
    f = line.split()
    if len(f) < 7 or "[" not in f[2]:
        continue
    try:
        wait, delay = float(f[3]), float(f[4])
    except ValueError:
        continue
    rows.append((wait, delay, f[2], left.get(f[2], "?")))
    left[f[2]] = f[6]
print("  perf sched: longest waits off the CPU (ms, state):",
      ", ".join("%s %.2f %s" % (r[2], r[0], r[3]) for r in sorted(rows, reverse=True)[:6]))
print("  perf sched: longest scheduling delays (ms):",
      ", ".join("%s %.2f" % (r[2], r[1]) for r in sorted(rows, key=lambda r: -r[1])[:6]))
'
}

echo "== cold apply: 100k-tenant bundle onto the 10k snapshot (every body new)"
echo "  agent RSS before: $(rss) MiB"
publish "$W/src100k"
if [ "${ONLY:-}" != steady ]; then
load "idle, c=8, just before" "$SECS" -c 8
OHA_SECS=$((SECS + 40)) apply "cold apply" 2 -c 8
else
OHA_SECS=$((SECS + 40)) apply "cold apply" 2 -c 1 -q 10
fi
echo "  agent peak RSS (VmHWM): $(awk '/^VmHWM/ {printf "%.1f", $2/1024}' /proc/$AGENT/status) MiB, RSS after: $(rss) MiB (redb cache: $(( ${CACHE_BYTES:-67108864} >> 20 )) MiB)"
echo "  data dir: $(du -sh "$D/data" | cut -f1)"

echo "== steady state: 100k-tenant bundles with 1% of tenants changed"
V=2
for k in $(seq 1 "${STEADY_RUNS:-1}"); do
  load_pooled "idle, 2000/s" "$SECS" "$W/idle.pool" -c 8 -q 2000 --latency-correction
  change_one_percent "$k"
  publish "$W/src100k"
  V=$((V + 1))
  POOL="$W/during.pool" apply "1% changed" "$V" -c 8 -q 2000 --latency-correction
done
# One apply's window holds ~2,000 requests, so its p99 is its ~20th slowest
# and a single stall of the machine decides it; pooled over the runs:
pooled "all idle runs above, 2000/s" "$W/idle.pool"
pooled "all 1% applies above, 2000/s" "$W/during.pool"
[ "${ONLY:-}" != steady ] || exit 0
# The machine's own share: no apply, a busy loop at SCHED_IDLE (what the sync
# thread is to the scheduler), under 2,000 lookups/s.
echo "== no apply: a busy loop at SCHED_IDLE beside the agent, 2,000 lookups/s"
for k in 1 2 3; do
  load "idle, 2000/s" "$SECS" -c 8 -q 2000 --latency-correction
  chrt -i 0 python3 -c "while True: pass" &
  BUSY=$!
  load "busy loop, 2000/s" "$SECS" -c 8 -q 2000 --latency-correction
  kill "$BUSY"
  BUSY=
done
load "idle, c=8" "$SECS" -c 8
change_one_percent 99
publish "$W/src100k"
V=$((V + 1))
apply "1% changed" "$V" -c 8
# Every tenant changed (a new version string in each): as many new bodies as
# a cold apply, under a fixed 2,000 lookups/s.
echo "== every tenant changed: 100k new bodies, under 2,000 lookups/s"
load "idle, 2000/s" "$SECS" -c 8 -q 2000 --latency-correction
find "$W/src100k/tenants" -name '*.toml' -exec sed -i 's/^version = .*/version = "10.0.0"/' {} +
publish "$W/src100k"
V=$((V + 1))
OHA_SECS=$((SECS + 40)) apply "all changed" "$V" -c 8 -q 2000 --latency-correction
echo "  data dir: $(du -sh "$D/data" | cut -f1), agent peak RSS (VmHWM): $(awk '/^VmHWM/ {printf "%.1f", $2/1024}' /proc/$AGENT/status) MiB"

# A node that starts empty: a new agent (empty data dir, nothing else running
# on the machine) applies the current 100k-tenant snapshot; three times.
echo "== cold apply, agent alone: a new agent applies the current 100k snapshot"
kill "$AGENT"
wait "$AGENT" 2>/dev/null || true
for run in 1 2 3; do
  rm -rf "$D/data-alone" "$W/alone.log"
  sed -e "s#$D/data\"#$D/data-alone\"#" -e "s#agent.sock#alone.sock#" "$W/agent.toml" > "$W/alone.toml"
  STRATA_LOG=info $A run --config "$W/alone.toml" 2> "$W/alone.log" &
  AGENT=$!
  grep -m1 -q "snapshot applied" <(tail -n +1 --pid="$AGENT" -f "$W/alone.log")
  grep -m1 -q "snapshot durable" <(tail -n +1 --pid="$AGENT" -f "$W/alone.log")
  echo "  run $run: served after$(grep -m1 -o 'snapshot applied.*' "$W/alone.log" | grep -o ' seconds=[0-9.]*'), then durable after$(grep -m1 -o 'snapshot durable.*' "$W/alone.log" | grep -o ' persist_seconds=[0-9.]*'), peak RSS (VmHWM) $(awk '/^VmHWM/ {printf "%.1f", $2/1024}' /proc/$AGENT/status) MiB"
  kill "$AGENT"
  wait "$AGENT" 2>/dev/null || true
done
