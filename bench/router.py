"""Router overhead and throughput on the learned path, beside a pass-through proxy as the floor.

    python bench/router.py                      # the full run (see --help for its size)
    python bench/router.py --requests 300 --duration-s 5 --workers 1   # a quick look

What runs, each in its own process on 127.0.0.1 (client and tiers on the same machine):

* **tiers**: three instant scripted tiers (``knn``, ``edge``, ``cloud``) answering label choices
  with fixed log-probs per query (tests/support/echo_server.py ``LabelGenerator``), so the
  cascade accepts, escalates and falls through as the demo does, in no time;
* **learned router**: ``tierlm router serve`` on the demo's policy (examples/demo/policy.yaml:
  the learned scorer, retrieved prompts over the 5,000-row HEADLINES pool, thresholds and order),
  its tiers pointed at the scripted ones; the real MiniLM (int8 ONNX) embeds every query, and
  every request writes its ledger row to SQLite. With ``--workers 1 2`` both are measured. The
  same for examples/demo-static/policy.yaml, the demo with ``encoder: static`` (its own scorer
  and thresholds, fitted by ``tierlm demo --refit``), whose knn tier is ``in_router``: the router
  votes itself over the pool (the real knn-vote, not the scripted one); rows say which ``encoder``;
* **pass-through proxy**: the Router contract on the same gRPC plumbing, forwarding each
  request to one instant tier and returning its answer: the floor any router pays here.

Per request, overhead = client-observed latency - the tiers' own latency in the trace (the
router's embedding, retrieval, scoring, decisions, ledger and both gRPC hops). Closed loop: a
fixed number in flight (1/8/32/64). Open loop: requests sent at a fixed rate whatever the
replies do, latency counted from each request's scheduled time (so a router that falls behind
shows it); default rates are fractions of each path's own saturated closed-loop throughput, and
400 requests/s (80% of the 500/s target) for a path that saturates above it.
Queries: HEADLINES dev, in order. Writes bench/results/router.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.echo_server import LabelGenerator, start_generator  # noqa: E402
from tierlm.results import write_results  # noqa: E402
from tierlm.router.workload import load_workload  # noqa: E402
from tierlm.serving import GrpcServer, ServerConfig  # noqa: E402
from tierlm.v1 import generator_pb2, generator_pb2_grpc, router_pb2, router_pb2_grpc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"minilm": REPO / "examples" / "demo" / "policy.yaml", "static": REPO / "examples" / "demo-static" / "policy.yaml"}
DEV = REPO / "data" / "workloads" / "headlines" / "dev.jsonl"
TIERS = ("knn", "edge", "cloud")
CONCURRENCY = (1, 8, 32, 64)
OPEN_FRACTIONS = (0.25, 0.5, 0.8)
# Issue #23's open-loop point: 80% of the 500 requests/s a router must sustain on this machine,
# measured for every path that saturates above it (below, the queue would only grow).
OPEN_TARGET_RPS = 400.0
WARMUP = 200


# -- the servers (each runs in a process of its own: `bench/router.py --serve ...`) ---------------


class PassThrough(router_pb2_grpc.RouterServicer):
    """The least a router can do: forward the request to one tier, return its answer."""

    def __init__(self, tier_address: str):
        self._channel = grpc.aio.insecure_channel(tier_address)
        self._tier = generator_pb2_grpc.GeneratorStub(self._channel)

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        answer = await self._tier.Generate(request.request, timeout=30.0)
        tier_ms = (time.perf_counter() - started) * 1e3
        attempt = router_pb2.TierAttempt(tier="edge", outcome=router_pb2.TIER_OUTCOME_ACCEPTED, latency_ms=tier_ms)
        return router_pb2.CompleteResponse(answer=answer, trace=router_pb2.RoutingTrace(accepted_tier="edge", attempts=[attempt]))


async def serve_tiers() -> None:
    servers = {name: await start_generator(ServerConfig(), LabelGenerator(name)) for name in TIERS}
    print("PORTS " + " ".join(f"{name}={server.port}" for name, server in servers.items()), flush=True)
    await next(iter(servers.values())).run_until_signal()
    for server in servers.values():
        await server.stop(grace_s=0)


async def serve_proxy(tier_address: str) -> None:
    server = GrpcServer(ServerConfig())
    await server.start([lambda s: router_pb2_grpc.add_RouterServicer_to_server(PassThrough(tier_address), s)],
                       service_names=["tierlm.v1.Router"])
    print(f"PORTS proxy={server.port}", flush=True)
    await server.run_until_signal()


# -- the client ---------------------------------------------------------------------------------


class Load:
    """Requests to one router over several connections (the kernel spreads connections across
    router workers; channels in one process would share one connection unless told not to)."""

    def __init__(self, address: str, queries: list[str], connections: int = 8):
        self._channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                          for _ in range(connections)]
        self._stubs = [router_pb2_grpc.RouterStub(c) for c in self._channels]
        self._queries = queries
        self._next = itertools.count()

    async def one(self, started: float | None = None) -> tuple[float, float, str] | None:
        """(latency ms from ``started`` or now, overhead ms, accepted tier); None on an error."""
        i = next(self._next)
        request = router_pb2.CompleteRequest(request=generator_pb2.GenerateRequest(prompt=self._queries[i % len(self._queries)], max_tokens=1))
        started = time.perf_counter() if started is None else started
        try:
            reply = await self._stubs[i % len(self._stubs)].Complete(request, timeout=60.0)
        except grpc.aio.AioRpcError:
            return None
        latency_ms = (time.perf_counter() - started) * 1e3
        return latency_ms, latency_ms - sum(a.latency_ms for a in reply.trace.attempts), reply.trace.accepted_tier

    async def closed(self, concurrency: int, requests: int) -> tuple[list, float]:
        results: list = []
        count = itertools.count()

        async def worker() -> None:
            while next(count) < requests:
                results.append(await self.one())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - started

    async def open(self, rate: float, duration_s: float) -> tuple[list, float]:
        total = max(1, int(rate * duration_s))
        start = time.perf_counter() + 0.05

        async def scheduled(i: int):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            return await self.one(started=due)

        results = await asyncio.gather(*(scheduled(i) for i in range(total)))
        return list(results), time.perf_counter() - start

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def summarize(results: list, elapsed_s: float) -> dict:
    ok = [r for r in results if r is not None]
    latency, overhead = np.array([r[0] for r in ok]), np.array([r[1] for r in ok])
    return {
        "requests": len(results), "errors": len(results) - len(ok),
        "throughput_rps": round(len(ok) / elapsed_s, 1),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 3),
        "overhead_ms_p50": round(float(np.percentile(overhead, 50)), 3),
        "overhead_ms_p99": round(float(np.percentile(overhead, 99)), 3),
        "accepted": dict(Counter(r[2] for r in ok)),
    }


# -- the run ------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports (worker i of the router serves metrics on the first + i)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return list(range(first, first + count))
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def spawn(args: list[str]) -> tuple[subprocess.Popen, dict[str, int]]:
    """Start a server process; the ports it prints on its first line (``PORTS a=1 b=2`` or
    ``ROUTER_PORT 1``)."""
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    words = process.stdout.readline().split()
    if not words:
        process.wait()
        raise RuntimeError(f"{args} exited with {process.returncode} before serving")
    if words[0] == "ROUTER_PORT":
        return process, {"router": int(words[1])}
    return process, {k: int(v) for k, v in (w.split("=") for w in words[1:])}


def encoder_cpu_ms(queries: list[str]) -> dict[str, float]:
    """CPU ms per query embedded alone (one thread), for each encoder the router uses."""
    from bench.encoders import cpu_ms_per_query
    from tierlm.router.encoder_choice import static_for
    from tierlm.router.onnx_encoder import PRECISIONS, OnnxEncoder

    encoders = {precision: OnnxEncoder(precision=precision, threads=1) for precision in PRECISIONS}
    encoders["static"] = static_for(REPO / "data" / "workloads" / "headlines" / "train.jsonl")
    return {name: cpu_ms_per_query(encoder, queries, timed=200, warmup=20) for name, encoder in encoders.items()}


def counter(metrics_ports: list[int], name: str) -> float:
    """A Prometheus counter summed over the workers' metrics endpoints."""
    total = 0.0
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            total += sum(float(line.rsplit(" ", 1)[1]) for line in reply.read().decode().splitlines()
                         if line.startswith(name) and not line.startswith("#"))
    return total


def demo_policy(source: Path, work: Path, ports: dict[str, int]) -> Path:
    """A demo policy with its tiers at the scripted servers (but those the router answers itself),
    paths made absolute."""
    policy = yaml.safe_load(source.read_text())
    for tier in policy["tiers"]:
        if not tier.get("in_router"):
            tier["address"] = f"127.0.0.1:{ports[tier['name']]}"
        tier.pop("launch", None)
    policy["pool"] = str((REPO / policy["pool"]).resolve())
    policy["scorer"]["path"] = str((REPO / policy["scorer"]["path"]).resolve())
    policy["limits"] = {"max_concurrent_requests": 4096}
    path = work / f"policy-{source.parent.name}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def measure(address: str, queries: list[str], label: dict, args: argparse.Namespace, rates: list[float] | None) -> list[dict]:
    """Closed loop at each concurrency, then open loop at each rate (default: fractions of the
    saturated closed-loop throughput)."""
    load = Load(address, queries)
    rows = []
    try:
        await load.closed(8, WARMUP)
        for concurrency in args.concurrency:
            results, elapsed = await load.closed(concurrency, args.requests)
            rows.append({**label, "mode": "closed", "concurrency": concurrency, **summarize(results, elapsed)})
            print(rows[-1], flush=True)
        saturated = max(row["throughput_rps"] for row in rows)
        target = [OPEN_TARGET_RPS] if saturated > OPEN_TARGET_RPS else []
        for rate in rates or [round(f * saturated, 1) for f in OPEN_FRACTIONS] + target:
            results, elapsed = await load.open(rate, args.duration_s)
            rows.append({**label, "mode": "open", "offered_rps": rate, **summarize(results, elapsed)})
            print(rows[-1], flush=True)
    finally:
        await load.close()
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each learned row beside the pass-through row of the same concurrency (closed loop) or the
    same fraction of saturation (open loop)."""
    def key(row: dict) -> tuple:
        return row["mode"], row.get("concurrency"), row.get("fraction", row.get("offered_rps"))

    floor = {key(r): r for r in rows if r["path"] == "passthrough"}
    for row in rows:
        base = floor.get(key(row))
        if row["path"] == "learned" and base is not None:
            row["overhead_p50_vs_passthrough"] = round(row["overhead_ms_p50"] / base["overhead_ms_p50"], 2)
            row["throughput_vs_passthrough"] = round(row["throughput_rps"] / base["throughput_rps"], 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per closed-loop concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--duration-s", type=float, default=15.0, help="seconds per open-loop rate")
    parser.add_argument("--rates", type=float, nargs="+", help="open-loop offered rates (requests/s); "
                        f"default {list(OPEN_FRACTIONS)} x the saturated closed-loop throughput of each path")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="router worker counts to measure")
    parser.add_argument("--encoder", nargs="+", choices=sorted(POLICIES), default=sorted(POLICIES),
                        help="the demo policies to measure, by their sentence encoder")
    parser.add_argument("--serve", choices=["tiers", "proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--tier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "tiers":
        asyncio.run(serve_tiers())
        return
    if args.serve == "proxy":
        asyncio.run(serve_proxy(args.tier))
        return

    queries = [row.query for row in load_workload(DEV)]
    load_before = os.getloadavg()[0]
    processes: list[subprocess.Popen] = []
    rows: list[dict] = []
    rescored: dict[str, float] = {}
    try:
        tiers, ports = spawn([sys.executable, __file__, "--serve", "tiers"])
        processes.append(tiers)
        proxy, proxy_ports = spawn([sys.executable, __file__, "--serve", "proxy", "--tier", f"127.0.0.1:{ports['edge']}"])
        processes.append(proxy)
        print("pass-through proxy", flush=True)
        rows += asyncio.run(measure(f"127.0.0.1:{proxy_ports['proxy']}", queries, {"path": "passthrough", "workers": 1}, args, args.rates))
        with tempfile.TemporaryDirectory(prefix="tierlm-bench-router-") as folder:
            work = Path(folder)
            for encoder in args.encoder:
                policy = demo_policy(POLICIES[encoder], work, ports)
                for workers in args.workers:
                    print(f"learned router ({encoder} encoder), {workers} worker(s)", flush=True)
                    metrics = free_ports(workers)
                    router, router_ports = spawn([sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", "router", "serve",
                                                  "--policy", str(policy), "--port", "0",
                                                  "--store", str(work / f"ledger-{encoder}-{workers}.sqlite"), "--workers", str(workers),
                                                  "--metrics-port", str(metrics[0]), "--no-auth"])
                    try:
                        rows += asyncio.run(measure(f"127.0.0.1:{router_ports['router']}", queries,
                                                    {"path": "learned", "encoder": encoder, "workers": workers}, args, args.rates))
                        rescored[f"{encoder}, {workers} worker(s)"] = round(
                            counter(metrics, "tierlm_router_exact_rescores_total") / counter(metrics, "tierlm_router_requests_total"), 3)
                    finally:
                        router.terminate()
                        router.wait(timeout=120)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
    for row in rows:  # open-loop rows line up by fraction of each path's own saturation
        if row["mode"] == "open" and not args.rates:
            saturated = max(r["throughput_rps"] for r in rows if r["mode"] == "closed" and r["path"] == row["path"]
                            and r.get("encoder") == row.get("encoder") and r["workers"] == row["workers"])
            row["fraction"] = round(row["offered_rps"] / saturated, 2)
    path = write_results(
        "router", with_ratios(rows),
        measures=("learned: the demo policy (examples/demo/policy.yaml: learned scorer, retrieved prompts over the "
                  "5,000-row HEADLINES pool, knn/edge/cloud cascade) with instant scripted tiers, every query embedded "
                  "(encoder minilm: MiniLM int8 ONNX; static: examples/demo-static/policy.yaml, the static table fitted to "
                  "the pool, with its own scorer and thresholds, its knn tier voting inside the router), SQLite ledger; passthrough: a proxy forwarding to one instant tier. "
                  "overhead = client latency - the tiers' latency in the trace; client, tiers and router share the machine"),
        encoder_cpu_ms_per_query=encoder_cpu_ms(queries),
        exact_rescores_per_request=rescored,
        load_average_1m={"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
