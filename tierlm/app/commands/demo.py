"""`tierlm demo`: start every tier locally and route real HEADLINES queries end to end."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import typer

from tierlm.data import workloads_dir

DEFAULT_POLICY = Path("examples/demo/policy.yaml")
# Sized for the demo's time budget (5 min with caches warm on 2 cores): each LLM tier prefills
# a prompt of 8 retrieved demonstrations on one core, so 50 queries take about a minute per
# pass there. 4 in flight measured the same throughput as 8 at half the latency: more only
# queue on the tier, and on a slower machine the queue reaches the tier timeout (30 s for the
# edge) and opens its breaker, as the 8-in-flight run of 2026-12-05 did on a slower host.
DEFAULT_QUERIES = 50
DEFAULT_CONCURRENCY = 4
HEADLINES = workloads_dir() / "headlines"


def _interrupt(*_: object) -> None:
    # SIGTERM ends the demo like Ctrl-C does: the stack's `finally` stops every child.
    raise KeyboardInterrupt


def demo(
    policy: Path = typer.Option(DEFAULT_POLICY, "--policy", exists=True, dir_okay=False, help="The demo stack's policy (tiers with `launch` blocks)."),
    queries: int = typer.Option(DEFAULT_QUERIES, "--queries", min=1, help="HEADLINES dev rows to send (the first N); bench/results/demo.json is --queries 200."),
    concurrency: int = typer.Option(DEFAULT_CONCURRENCY, "--concurrency", min=1, help="Requests in flight from the SDK."),
    single: list[str] = typer.Option(["edge", "cloud"], "--single", help="Tiers to also measure alone (force_tier), repeatable."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the result and its plot (default: the run folder)."),
    refit: bool = typer.Option(False, "--refit", help="Re-run collect -> train -> fit on HEADLINES train (out-of-fold scores) and rewrite the policy's scorer and cascade."),
    fit_rows: int = typer.Option(300, "--fit-rows", min=10, help="Train rows for --refit."),
    budget_share: float = typer.Option(0.25, "--budget-share", min=0.0, help="--refit: mean-cost budget as a share of the dearest tier's."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Logs and ledger of the stack (default: a new folder in the cache)."),
    result_name: str = typer.Option("demo", "--name", help="Stem of the result file and plot: <out>/<name>.json, <name>_cost_accuracy.png."),
) -> None:
    """Prepare models, start knn + edge + cloud (Ray Serve) + router on 127.0.0.1, route dev
    queries as edge only and cloud only (side by side), then the fitted cascade; print the
    table, write the result and the plot into the run folder (or --out)."""
    from rich.console import Console
    from rich.table import Table

    from tierlm.app import demo_steps as steps
    from tierlm.app.commands.up import default_run_dir
    from tierlm.app.errors import CommandError
    from tierlm.app.stack import LocalStack, StackError, plan_stack
    from tierlm.config import load_policy
    from tierlm.edge.catalog import cache_root
    from tierlm.results import write_results
    from tierlm.router.workload import load_workload

    started = time.perf_counter()
    say = steps.Narrator()
    # The narrator reports each service as it comes up; the stack's own log lines would repeat it.
    logging.getLogger("tierlm.app.stack").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    if not result_name or Path(result_name).name != result_name:
        raise typer.BadParameter(f"{result_name!r} is not a file name stem", param_hint="--name")
    parsed = load_policy(policy)
    unknown = [name for name in single if name not in {t.name for t in parsed.tiers}]
    if unknown:
        raise typer.BadParameter(f"no tiers {unknown} in {policy}", param_hint="--single")
    run_dir = run_dir or default_run_dir()
    out = out or run_dir
    dev = load_workload(HEADLINES / "dev.jsonl")
    rows = list(dev)[:queries]
    say(f"tierlm demo: {len(rows)} HEADLINES dev queries through {policy}; results go to {out}")
    steps.ensure_models(parsed, say)
    if refit:
        say(f"refitting the policy's scorer and cascade on {fit_rows} HEADLINES train rows")
        # Retrieved prompts depend on the encoder, so the answers to them do: one store per encoder.
        answers = cache_root() / "demo" / ("answers.sqlite" if parsed.encoder == "minilm" else f"answers-{parsed.encoder}.sqlite")
        cascade = steps.fit_policy(policy, HEADLINES / "train.jsonl", answers, fit_rows, budget_share, policy.parent / "scorer")
        say(f"fitted on train: {cascade}")
    # The demo's own clients call a router on 127.0.0.1 that lives as long as the demo: no tenants.
    plan = plan_stack(policy, run_dir, router_port=0, free_ports=True, no_auth=True)
    stack = LocalStack(plan)
    try:
        say(f"starting {', '.join(s.name for s in plan.services)} (the cloud tier takes a minute or two; logs: {plan.run_dir / 'logs'})")
        stack.start(on_ready=lambda service: say(f"{service.name} ready on {service.address}"))
        ready_s = time.perf_counter() - started  # models prepared and every service healthy

        async def measure():
            # Each forced tier loads only its own process (one core each here), so the
            # single-tier passes run side by side; the cascade then has the stack to itself.
            say(f"pass 1 of 2: {' and '.join(f'{n}-only' for n in single)} side by side, {len(rows)} queries each")
            alone = await asyncio.gather(*(
                steps.run_mode(stack.router_address, f"{name}-only", dev, rows, concurrency, say, force_tier=name)
                for name in single))
            say(f"pass 2 of 2: the cascade, {len(rows)} queries")
            return [*alone, await steps.run_mode(stack.router_address, "cascade", dev, rows, concurrency, say)]

        results = asyncio.run(measure())
    except StackError as exc:
        raise CommandError(str(exc)) from None
    finally:
        say("stopping the stack")
        stack.stop()
    table = Table(title=f"HEADLINES dev, first {len(rows)} queries, through the router ({concurrency} in flight)")
    for column in ("route", "accuracy", "mean cost / query", "answered by", "p50 ms", "p95 ms", "failed"):
        table.add_column(column, justify="left" if column in ("route", "answered by") else "right")
    report = [r.row() for r in results]
    for row in report:
        table.add_row(row["name"], f"{row['accuracy']:.3f}", f"{row['cost_per_query']:.3g}",
                      ", ".join(f"{t} {s:.0%}" for t, s in row["answered"].items()),
                      f"{row['latency_ms_p50']:.0f}", f"{row['latency_ms_p95']:.0f}", str(row["failed"]))
    Console().print(table)
    cascade, cloud = report[-1], next((r for r in report if r["name"] == "cloud-only"), None)
    if cloud is not None:
        Console().print(f"cascade: {cascade['cost_per_query'] / cloud['cost_per_query']:.0%} of cloud-only's cost, "
                        f"accuracy {100 * (cascade['accuracy'] - cloud['accuracy']):+.1f} points")
    from tierlm.router.study.frontier_plot import plot_cost_accuracy

    out.mkdir(parents=True, exist_ok=True)
    plot = plot_cost_accuracy(
        out / f"{result_name}_cost_accuracy.png", frontier=[(cascade["cost_per_query"], cascade["accuracy"])],
        frontier_label="cascade (live)", single_tiers={r["name"]: (r["cost_per_query"], r["accuracy"]) for r in report[:-1]},
        log_x=True, title=f"tierlm demo: HEADLINES dev, {len(rows)} queries",
    )
    path = write_results(result_name, report, folder=out, queries=len(rows), concurrency=concurrency,
                         policy=str(policy), stack_ready_s=round(ready_s, 1))
    say(f"wrote {path} and {plot}")
