"""Router overhead: end-to-end latency through the router minus the tiers' own latency.

Two scripted Generator tiers (instant answers, so the router's own cost is what shows),
the router, and the client each run in their own process on 127.0.0.1. For each request:
overhead = client-observed latency - sum of the tier calls' latencies in the trace (which
includes scoring, decisions, the ledger write and both gRPC hops to and from the router).
Half the queries escalate, so both accept paths are measured.

    python bench/router.py [--requests 2000] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from tierlm.results import write_results
from tierlm.client import Client

REPO = Path(__file__).resolve().parents[1]


def spawn(args: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    words = process.stdout.readline().split()
    return process, int(words[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    processes: list[subprocess.Popen] = []
    try:
        ports = {}
        for name in ("edge", "cloud"):
            process, ports[name] = spawn([sys.executable, "-m", "tests.support.echo_server", "--kind", "scripted", "--name", name])
            processes.append(process)
        work = Path(tempfile.mkdtemp(prefix="tierlm-bench-router-"))
        policy = {
            "tiers": [{"name": n, "address": f"127.0.0.1:{p}", "cost": {"per_call": 0.001}} for n, p in ports.items()],
            "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        }
        (work / "policy.yaml").write_text(yaml.safe_dump(policy))
        router, router_port = spawn([sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", "router", "serve",
                                     "--policy", str(work / "policy.yaml"), "--port", "0", "--store", str(work / "ledger.sqlite"),
                                     "--no-auth"])
        processes.append(router)
        rows = []
        with Client(f"127.0.0.1:{router_port}") as client:
            for i in range(50):  # warm-up: channels, caches
                client.complete("warm easy" if i % 2 else "warm")
            for concurrency in args.concurrency:
                def one(i: int) -> tuple[float, float]:
                    started = time.perf_counter()
                    answer = client.complete("an easy query" if i % 2 else "a hard query", max_tokens=4)
                    total_ms = (time.perf_counter() - started) * 1e3
                    return total_ms, total_ms - sum(a.latency_ms for a in answer.trace.attempts)

                with ThreadPoolExecutor(concurrency) as pool:
                    results = np.array(list(pool.map(one, range(args.requests))))
                rows.append({
                    "name": f"router@{concurrency}",
                    "concurrency": concurrency,
                    "requests": args.requests,
                    "latency_ms_p50": round(float(np.percentile(results[:, 0], 50)), 3),
                    "overhead_ms_p50": round(float(np.percentile(results[:, 1], 50)), 3),
                    "overhead_ms_p99": round(float(np.percentile(results[:, 1], 99)), 3),
                })
        table = Table(title="router overhead (ms)")
        for column in ("name", "requests", "latency_ms_p50", "overhead_ms_p50", "overhead_ms_p99"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("name", "requests", "latency_ms_p50", "overhead_ms_p50", "overhead_ms_p99")))
        Console().print(table)
        print(write_results("router", rows, scorer="confidence (mean token log-prob)", processes="tiers, router, client: one each"))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
