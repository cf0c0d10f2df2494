#!/usr/bin/env python3
"""The Python client against what call workers use today: redis-py GET of
the same bytes from a local redis-server over its unix socket, then
json.loads (BENCHMARKS.md, "The Python client against redis-py").

    bench/python_client.py AGENT_BIN PUBLISHER_BIN

Single-threaded, same machine, same run, the cases interleaved (ROUNDS,
default 5, of LOOKUPS, default 20000, each): per lookup, wall-clock p50
and p99 and the client process's CPU time.

  changed    Client(cache_size=0).tenant(id): the whole config each time
             (what a config that changed costs)
  unchanged  Client().tenant(id): revalidated with If-None-Match, a 304,
             nothing parsed
  redis      redis.Redis(unix_socket_path=...).get(key), then json.loads

Needs redis-server and redis-py (pip install redis).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))

import redis  # noqa: E402

from strata_client import Client  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
LOOKUPS = int(os.environ.get("LOOKUPS", "20000"))


def wait_for(path, what, seconds=60):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > deadline:
            sys.exit("%s did not appear" % what)
        time.sleep(0.05)


def measure(fn):
    """(p50 µs, p99 µs, CPU µs) per call of fn over LOOKUPS calls."""
    for _ in range(500):
        fn()
    times = []
    cpu = time.process_time()
    for _ in range(LOOKUPS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu
    times.sort()
    return (
        times[len(times) // 2] * 1e6,
        times[int(len(times) * 0.99)] * 1e6,
        cpu / LOOKUPS * 1e6,
    )


def main():
    agent_bin, publisher_bin = sys.argv[1:3]
    w = tempfile.mkdtemp()
    procs = []
    try:
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run(publisher_bin, "keygen", "--out", w + "/ci.key")
        run(publisher_bin, "generate", "--tenants", "10000", "--out", w + "/src")
        run(publisher_bin, "publish", "--init", "--source", w + "/src", "--key", w + "/ci.key",
            "--store", "file://" + w + "/store")
        with open(w + "/agent.toml", "w") as f:
            f.write('source = "file://%s/store"\ndata_dir = "%s/data"\nsocket = "%s/agent.sock"\n'
                    '[[trusted_keys]]\nrole = "publisher"\npath = "%s/ci.key.pub"\n' % (w, w, w, w))
        env = dict(os.environ, STRATA_LOG="warn")
        procs.append(subprocess.Popen([agent_bin, "run", "--config", w + "/agent.toml"], env=env))
        procs.append(subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", w + "/redis.sock", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_for(w + "/agent.sock", "the agent's socket")
        wait_for(w + "/redis.sock", "redis's socket")
        deadline = time.time() + 60
        plain = Client(socket=w + "/agent.sock", cache_size=0)
        while True:
            try:
                tenant = plain.route("+12000000000")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        cached = Client(socket=w + "/agent.sock")
        r = redis.Redis(unix_socket_path=w + "/redis.sock")
        body = json.dumps(plain.tenant(tenant), separators=(",", ":"))
        r.set("tenant:" + tenant, body)
        print("tenant %s, config %d bytes, %d lookups a run" % (tenant, len(body), LOOKUPS))
        cases = {
            "changed": lambda: plain.tenant(tenant),
            "unchanged": lambda: cached.tenant(tenant),
            "redis": lambda: json.loads(r.get("tenant:" + tenant)),
        }
        results = {c: [] for c in cases}
        for n in range(ROUNDS):
            for c, fn in cases.items():
                p50, p99, cpu = measure(fn)
                results[c].append((p50, p99, cpu))
                print("round %d %-9s p50 %6.1f µs  p99 %6.1f µs  CPU %6.1f µs a lookup" % (n + 1, c, p50, p99, cpu))
        print("medians:")
        for c, rs in results.items():
            print("  %-9s p50 %6.1f µs  p99 %6.1f µs  CPU %6.1f µs" % (
                c, *(statistics.median(r[i] for r in rs) for i in range(3))))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
