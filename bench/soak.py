"""Soak: the full local stack under sustained load while the edge node is killed and restarted.

    python bench/soak.py --policy examples/demo/policy.yaml --requests 10000 --concurrency 64 --kills 2 --demos 2

Starts the stack the policy launches (knn tier, edge node, Ray Serve cloud tier, router) on
127.0.0.1, first measures a fault-free reference (every distinct query once), then sends
`--requests` HEADLINES dev queries (the first `--distinct` rows, cycled) from the SDK with `--concurrency` in
flight, SIGKILLs the edge node `--kills` times at evenly spaced points of the run and
restarts it each time. The SDK does not retry (one SDK call = one router request), so:
answered + failed_clear + lost = requests, where failed_clear are calls that ended with a
clear gRPC status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) and lost the rest
(must be 0); the router's ledger must hold exactly one row per request id. Accuracy under
faults is compared with the reference on the same queries.

`--demos` overrides the number of retrieved demonstrations of every LLM tier (the cheaper
prompt configuration the soak runs on two cores); scorer and thresholds stay the policy's.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
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


async def send(address: str, rows, ids: list[str], concurrency: int, progress, stop_at: float | None = None) -> Tally:
    """One SDK call per row, no SDK retries; with `stop_at` (perf_counter), calls not started by then are not sent."""
    from tierlm.client import AsyncClient, RetryPolicy
    from tierlm.app.loadgen import send_all

    async with AsyncClient(address, timeout_s=120.0, retry=RetryPolicy(attempts=1)) as client:
        outcomes = await send_all(client, [row.query for row in rows], concurrency=concurrency, request_ids=ids,
                                  stop_at=stop_at, on_done=progress, max_tokens=1)
    return Tally(ids, outcomes)


def ledger_counts(ledger: Path, prefix: str) -> tuple[int, int]:
    """(rows, distinct request ids) in the router's ledger for ids starting with `prefix`."""
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM requests WHERE request_id LIKE ?",
                          (prefix + "%",)).fetchone()


def main() -> int:
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
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tierlm.app.commands.up import default_run_dir
    from tierlm.results import RESULTS, write_results
    from tierlm.router.workload import load_workload
    from tierlm.app.stack import LocalStack, StackError, plan_stack

    console = Console(stderr=True)
    run_dir = args.run_dir or default_run_dir()
    policy = soak_policy(args.policy, args.demos, run_dir / "soak-policy.yaml")
    dev = load_workload(Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines" / "dev.jsonl")
    distinct = list(dev)[: min(len(dev), args.distinct, args.requests)]
    rows = [distinct[i % len(distinct)] for i in range(args.requests)]
    plan = plan_stack(policy, run_dir, router_port=0, free_ports=True, no_auth=True)
    ledger = run_dir / "ledger.sqlite"
    with LocalStack(plan) as stack:
        console.print(f"stack up: {', '.join(f'{s.name} {s.address}' for s in plan.services)}; logs in {run_dir / 'logs'}")
        columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        kill_at = [round(args.requests * (k + 1) / (args.kills + 1)) for k in range(args.kills)]
        faults: list[dict] = []
        timing: dict[str, float] = {}

        async def inject(progress_of, began: float) -> None:
            # One fault at a time: kill when the run passes the next mark (of requests, or of
            # the time limit), then wait until the restarted node is healthy before the next.
            for k, mark in enumerate(kill_at):
                due = None if args.time_limit_s is None else began + args.time_limit_s * (k + 1) / (args.kills + 1)
                while progress_of() < mark and (due is None or time.perf_counter() < due):
                    await asyncio.sleep(0.05)
                done = progress_of()
                if done >= len(rows):
                    console.print(f"[yellow]the run ended before kill mark {mark} (the last restart took too long)")
                    break
                began = time.perf_counter()
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
                fault["restart_s"] = round(time.perf_counter() - began, 1)
                faults.append(fault)

        async def run() -> tuple[Tally, Tally]:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("reference", total=len(distinct))
                reference = await send(stack.router_address, distinct, [f"ref-{i}" for i in range(len(distinct))],
                                       args.concurrency, lambda: progress.advance(task))
                task = progress.add_task("soak", total=len(rows))
                soaked = time.perf_counter()
                injector = asyncio.create_task(inject(lambda: int(progress.tasks[task].completed), soaked))
                stop_at = None if args.time_limit_s is None else soaked + args.time_limit_s
                soak = await send(stack.router_address, rows, [f"soak-{i}" for i in range(len(rows))],
                                  args.concurrency, lambda: progress.advance(task), stop_at)
                timing["soak_s"] = round(time.perf_counter() - soaked, 1)
                await injector
            return reference, soak

        started = time.perf_counter()
        reference, soak = asyncio.run(run())
        wall_s = time.perf_counter() - started
    rows_in_ledger, distinct_ids = ledger_counts(ledger, "soak-")
    sent = args.requests - soak.not_sent
    # The reference answer of each soak request is its query's fault-free answer.
    # Requests go out in order, so the sent ones are the first `sent`.
    ref_answers = [reference.answers.get(f"ref-{i % len(distinct)}") for i in range(sent)]

    def correct(answer: str | None, row) -> bool:
        return answer is not None and dev.judge_for(row).correct(answer, row.reference)

    soak_correct = np.array([correct(soak.answers.get(f"soak-{i}"), row) for i, row in zip(range(sent), rows)], dtype=float)
    ref_correct = np.array([correct(a, row) for a, row in zip(ref_answers, rows)], dtype=float)
    ref_accuracy = float(ref_correct.mean())
    accuracy = float(soak_correct.mean())
    agree = np.mean([soak.answers.get(f"soak-{i}") == ref_answers[i] for i in range(sent)])
    # Paired per request: the soak answer's correctness minus its query's fault-free answer's
    # (an unanswered request counts as wrong), with a normal 95% interval on the mean.
    delta = soak_correct - ref_correct
    half_width = 1.96 * float(delta.std(ddof=1)) / np.sqrt(len(delta)) if len(delta) > 1 else float("nan")
    p50, p99 = np.percentile(soak.latencies_ms, [50, 99]) if soak.latencies_ms else (float("nan"),) * 2
    row = {
        "name": "soak", "requests": sent, "requests_planned": args.requests, "answered": soak.answered, "failed_clear": soak.failed_clear,
        "lost": soak.lost, "ledger_rows": rows_in_ledger, "ledger_distinct_request_ids": distinct_ids,
        "latency_ms_p50": round(float(p50), 1), "latency_ms_p99": round(float(p99), 1),
        "concurrency": args.concurrency, "accuracy": round(accuracy, 4), "reference_accuracy": round(ref_accuracy, 4),
        "answers_equal_reference": round(float(agree), 4),
        "accuracy_delta_ci95": [round(float(delta.mean()) - half_width, 4), round(float(delta.mean()) + half_width, 4)],
        "statuses": soak.statuses, "kills": faults,
        "demos": args.demos, "distinct_queries": len(distinct), "soak_s": timing.get("soak_s"), "wall_s": round(wall_s, 1),
    }
    path = write_results("soak", [row], folder=args.out_dir or RESULTS, policy=str(args.policy))
    console.print(row)
    console.print(f"wrote {path}")
    ok = soak.lost == 0 and rows_in_ledger == distinct_ids == sent and len(faults) == args.kills
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
