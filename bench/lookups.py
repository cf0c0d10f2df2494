#!/usr/bin/env python3
"""Lookups on the agent against Redis GET of the same bytes, side by side.

A 10k-tenant snapshot is published to a file store and served by the
release agent; redis-server (no TCP, no persistence) listens on a unix
socket and holds, under three keys, exactly the bytes the agent answers for
one tenant's config, its prompt and one phone route. For each endpoint and
1, 8 and 32 connections, the two are loaded in turn (interleaved, ROUNDS
rounds, medians reported), each by a load generator on ONE thread (oha
--worker-threads 1; redis-benchmark is single-threaded): on two vCPUs a
second load thread would put scheduler ticks into both p99s.

Besides requests/s and p50/p99 (what the load generator sees), the
server's own CPU time per request is read from /proc/PID/stat over each run:
a figure no load generator limits.

Usage: bench/lookups.py AGENT_BIN PUBLISHER_BIN [WORKER_THREADS ...]
Env: REQUESTS (per run at 32 connections, default 200000), ROUNDS (3).
Prints a Markdown table.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

REQUESTS = int(os.environ.get("REQUESTS", "200000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNECTIONS = [1, 8, 32]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_for_socket(path, deadline=30):
    start = time.time()
    while not os.path.exists(path):
        if time.time() - start > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.02)


def curl(sock, path):
    return subprocess.run(
        ["curl", "-sf", "--unix-socket", sock, f"http://strata{path}"],
        check=True,
        capture_output=True,
    ).stdout


def oha(sock, path, conns, n):
    out = subprocess.run(
        [
            "oha", "--no-tui", "--output-format", "json", "--worker-threads", "1",
            "-n", str(n), "-c", str(conns), "--unix-socket", sock,
            f"http://strata{path}",
        ],
        check=True,
        capture_output=True,
    ).stdout
    r = json.loads(out)
    codes = r.get("statusCodeDistribution", {})
    if set(codes) != {"200"}:
        sys.exit(f"oha {path}: unexpected statuses {codes}")
    p = r["latencyPercentiles"]
    return r["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3


def redis_benchmark(sock, key, conns, n):
    out = subprocess.run(
        ["redis-benchmark", "-s", sock, "-n", str(n), "-c", str(conns), "--csv", "GET", key],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip().splitlines()
    header = [h.strip('"') for h in out[0].split(",")]
    row = dict(zip(header, [v.strip('"') for v in out[-1].split(",")]))
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def main():
    agent_bin, publisher_bin = sys.argv[1], sys.argv[2]
    thread_counts = [int(t) for t in sys.argv[3:]] or [1]
    work = tempfile.mkdtemp(prefix="strata-bench-")
    procs = []
    try:
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)
        run(publisher_bin, "keygen", "--out", f"{work}/ci.key")
        run(publisher_bin, "generate", "--tenants", "10000", "--out", f"{work}/src")
        run(publisher_bin, "publish", "--init", "--source", f"{work}/src", "--key", f"{work}/ci.key",
            "--store", f"file://{work}/store")
        tenants = sorted(os.listdir(f"{work}/src/tenants"))
        tenant = tenants[len(tenants) // 2].removesuffix(".toml")

        redis_sock = f"{work}/redis.sock"
        redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", redis_sock, "--save", "",
             "--appendonly", "no", "--io-threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(redis)
        wait_for_socket(redis_sock)

        rows = []
        for threads in thread_counts:
            sock = f"{work}/agent-{threads}.sock"
            config = f"{work}/agent-{threads}.toml"
            with open(config, "w") as f:
                f.write(
                    f'source = "file://{work}/store"\npoll_interval = "60s"\n'
                    f'data_dir = "{work}/data-{threads}"\nsocket = "{sock}"\n'
                    f"worker_threads = {threads}\n"
                    f'[[trusted_keys]]\nrole = "publisher"\npath = "{work}/ci.key.pub"\n'
                )
            agent = subprocess.Popen(
                [agent_bin, "run", "--config", config],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            procs.append(agent)
            wait_for_socket(sock)
            while True:
                try:
                    curl(sock, "/readyz")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.05)
            config_path = f"/v1/tenants/{tenant}"
            number = json.loads(curl(sock, config_path))["phone_numbers"][0]
            endpoints = [
                ("tenant config", config_path),
                ("tenant prompt", f"/v1/tenants/{tenant}/prompt"),
                ("route", "/v1/routes/" + urllib.parse.quote(number)),
            ]
            for name, path in endpoints:
                body = curl(sock, path)
                key = name.replace(" ", ":")
                subprocess.run(["redis-cli", "-s", redis_sock, "-x", "SET", key],
                               input=body, check=True, capture_output=True)
                got = subprocess.run(["redis-cli", "-s", redis_sock, "--no-raw", "STRLEN", key],
                                     check=True, capture_output=True, text=True).stdout
                assert int(got.split()[-1]) == len(body), (got, len(body))
                for conns in CONNECTIONS:
                    n = REQUESTS if conns > 1 else REQUESTS // 4
                    samples = {"agent": [], "redis": []}
                    for _ in range(ROUNDS):
                        for side in ("agent", "redis"):
                            pid = agent.pid if side == "agent" else redis.pid
                            before = cpu_seconds(pid)
                            if side == "agent":
                                rps, p50, p99 = oha(sock, path, conns, n)
                            else:
                                rps, p50, p99 = redis_benchmark(redis_sock, key, conns, n)
                            cpu_us = (cpu_seconds(pid) - before) / n * 1e6
                            samples[side].append((rps, p50, p99, cpu_us))
                    med = {
                        side: [statistics.median(x[i] for x in s) for i in range(4)]
                        for side, s in samples.items()
                    }
                    rows.append((threads, name, len(body), conns, med["agent"], med["redis"]))
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)

        print(f"| worker_threads | lookup | bytes | conns | agent req/s | Redis req/s | ratio "
              f"| agent p50 / p99 ms | Redis p50 / p99 ms | agent / Redis CPU µs per request |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for threads, name, size, conns, a, r in rows:
            print(
                f"| {threads} | {name} | {size:,} | {conns} | {a[0]:,.0f} | {r[0]:,.0f} | "
                f"{a[0] / r[0]:.2f}× | {a[1]:.3f} / {a[2]:.3f} | {r[1]:.3f} / {r[2]:.3f} | "
                f"{a[3]:.2f} / {r[3]:.2f} |"
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
