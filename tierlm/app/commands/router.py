"""`tierlm router ...`: run the cascade router and read its ledger."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import typer

from tierlm.app.commands import server_options as opt

app = typer.Typer(help="Run the cascade router and read its cost ledger.", no_args_is_help=True)

DEFAULT_STORE = "tierlm-ledger.sqlite"
WORKERS_HELP = ("Router processes sharing the port (SO_REUSEPORT) and the store; one per core is the usual choice. "
                "With --metrics-port P, worker i serves metrics on P+i.")
STORE_HELP = ("Ledger and budgets: a SQLite file (one router, or workers on one machine) or a PostgreSQL URL / "
              "connection string (replicas); read from $TIERLM_STORE if unset.")


@app.command()
def serve(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="Cascade policy YAML (reloaded on change and on SIGHUP)."),
    tenants: Path | None = typer.Option(None, "--tenants", exists=True, dir_okay=False, help="Extra tenants file: name -> key_sha256 and budgets."),
    port: int = typer.Option(50051, "--port", help="gRPC port of the Router service."),
    http_port: int | None = typer.Option(None, "--http-port", help="Also serve an OpenAI-compatible HTTP API on this port."),
    store: str = typer.Option(DEFAULT_STORE, "--store", envvar="TIERLM_STORE", help=STORE_HELP),
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    tls_cert: Path | None = opt.TLS_CERT,
    tls_key: Path | None = opt.TLS_KEY,
    tls_client_ca: Path | None = opt.TLS_CLIENT_CA,
    max_request_bytes: int = opt.MAX_REQUEST_BYTES,
    drain_s: float = opt.DRAIN_S,
    workers: int = typer.Option(1, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Serve tierlm.v1.Router until SIGTERM; calls need a tenant key when the policy has tenants."""
    from tierlm.router.serve.server import serve as run

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    if workers > 1:
        _serve_workers(workers, policy, config, store, tenants, http_port)
        return

    def ready(server, bound_http_port: int | None) -> None:
        extras = [f"metrics on :{server.metrics_port}"] if server.metrics_port else []
        extras += [f"OpenAI HTTP on :{bound_http_port}"] if bound_http_port else []
        typer.echo(f"router listening on {host}:{server.port}" + "".join(f", {e}" for e in extras), err=True)
        typer.echo(f"ROUTER_PORT {server.port}" + (f" HTTP_PORT {bound_http_port}" if bound_http_port else ""))

    asyncio.run(run(policy, config, store, tenants, ready, http_port))


def _serve_workers(workers: int, policy: Path, config, store: str, tenants: Path | None, http_port: int | None) -> None:
    from tierlm.router.serve.workers import serve_workers

    if http_port is not None:
        raise typer.BadParameter("--http-port serves from one process; run it with --workers 1 (or in front of the workers)",
                                 param_hint="--workers")

    def ready(bound: int) -> None:
        metrics = f", metrics on :{config.metrics_port}..{config.metrics_port + workers - 1}" if config.metrics_port else ""
        typer.echo(f"router listening on {config.host}:{bound} with {workers} workers{metrics}", err=True)
        typer.echo(f"ROUTER_PORT {bound}")

    serve_workers(workers, policy, config, store, tenants, ready)


@app.command("prepare-encoder")
def prepare_encoder_command(
    force: bool = typer.Option(False, "--force", help="Build again even if the cache has them."),
) -> None:
    """Build the router's MiniLM encoder graphs (int8, and float32 for scores near a threshold)
    into the tierlm cache; `router serve` builds them on first use otherwise (seconds)."""
    from tierlm.router.onnx_encoder import PRECISIONS, prepare_encoder

    for precision in PRECISIONS:
        typer.echo(f"{precision}: {prepare_encoder(precision=precision, force=force)}")


@app.command("ledger")
def ledger_summary(
    tenant: str = typer.Option(..., "--tenant", help="Tenant to summarize."),
    since: str = typer.Option("", "--since", help="ISO date or datetime (UTC), e.g. 2026-11-01; default: everything."),
    store: str = typer.Option(DEFAULT_STORE, "--store", envvar="TIERLM_STORE", help=STORE_HELP),
) -> None:
    """Summarize one tenant's requests, answers per tier and cost."""
    from tierlm.router.serve.store import is_postgres, open_store

    since_ts = 0.0
    if since:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise typer.BadParameter(f"not an ISO date or datetime: {since!r}", param_hint="--since") from None
        since_ts = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    if not is_postgres(store) and not Path(store).is_file():
        raise typer.BadParameter(f"no ledger at {store}", param_hint="--store")

    async def read():
        opened = await open_store(store)
        try:
            return await opened.summarize(tenant, since_ts)
        finally:
            await opened.close()

    summary = asyncio.run(read())
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_ts)) if since_ts else "the beginning"
    typer.echo(f"tenant {summary.tenant} since {when} UTC: {summary.requests} requests, {summary.ok} answered, "
               f"cost {summary.cost:.6g}, tokens {summary.prompt_tokens} in / {summary.completion_tokens} out")
    for tier, count in sorted(summary.by_tier.items()):
        typer.echo(f"  {tier}: {count} answers")


@app.command()
def collect(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="Policy YAML: each tier's model, prompt strategy and cost, and the demonstration pool."),
    workload: Path = typer.Option(..., "--workload", exists=True, dir_okay=False, help="Workload file (JSON lines, see `tierlm workload check`)."),
    split: str | None = typer.Option(None, "--split", help="Split to collect; default: the file's own split (its name)."),
    out: Path = typer.Option(Path("answers.sqlite"), "--out", help="SQLite answer store (resumable; created if missing)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the split's first N rows."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight per run (the engine batches them)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads per in-process model."),
    only: list[str] = typer.Option([], "--tier", help="Collect only these tiers (repeatable)."),
) -> None:
    """Run every tier on every row of a workload split and store its answer, log-probs, cost and
    the judge's verdict.

    Tiers with `model` run in-process (language models through the edge engine); others are
    called at their address. Answers already stored for the same tier, model and exact request
    are skipped."""
    from tierlm.config import load_policy
    from tierlm.router.study.collect import collect_policy_tiers

    split = split or workload.stem
    fresh = collect_policy_tiers(load_policy(policy), workload, split, out, limit=limit, concurrency=concurrency,
                                 threads=threads, only=only)
    typer.echo(f"{out}: {', '.join(f'{n} +{c}' for n, c in fresh.items())} answers on {workload.name} split {split}")


@app.command()
def train(
    answers: Path = typer.Option(..., "--answers", exists=True, dir_okay=False, help="Answer store from `tierlm router collect`."),
    out: Path = typer.Option(..., "--out", help="Folder to write the scorer to."),
    split: str = typer.Option("train", "--split", help="Split to train on."),
    report_split: str = typer.Option("dev", "--report-split", help="Split to report AUROC / Brier / ECE on (if collected)."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Train the answer scorer P(correct | query, answer, tier) and report its quality per tier."""
    from tierlm.router.embeddings import offline_encoder
    from tierlm.router.learn.offline import cascade_data
    from tierlm.router.learn.quality import tier_score_metrics
    from tierlm.router.learn.scorer import Scorer, train as train_scorer
    from tierlm.router.study.collect import AnswerStore

    store = AnswerStore(answers)
    records = store.records(split)
    if not records:
        raise typer.BadParameter(f"no answers for split {split!r} in {answers}", param_hint="--split")
    encoder = offline_encoder(threads)
    scorer = train_scorer(records, encoder, split=split)
    scorer.save(out)
    typer.echo(f"scorer for tiers {list(scorer.tiers)} trained on {len(records)} {split} answers -> {out}")
    held_out = store.records(report_split)
    if held_out:
        data = cascade_data(held_out, Scorer.load(out, encoder))
        for tier, m in tier_score_metrics(data).items():
            typer.echo(f"  {report_split} {tier}: n={m.n} accuracy={m.accuracy:.3f} AUROC={m.auroc:.3f} "
                       f"Brier={m.brier:.3f} ECE={m.ece:.3f}")


@app.command()
def fit(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="The policy whose tiers the answers came from."),
    answers: Path = typer.Option(..., "--answers", exists=True, dir_okay=False, help="Answer store from `tierlm router collect`."),
    scorer: Path = typer.Option(..., "--scorer", exists=True, file_okay=False, help="Scorer from `tierlm router train`."),
    out: Path = typer.Option(..., "--out", help="Policy file to write (may be --policy itself)."),
    split: str = typer.Option("train", "--split", help="Split to fit on (the scorer's training split: its out-of-fold scores are used)."),
    budget: float | None = typer.Option(None, "--budget", min=0.0, help="Mean cost per query the cascade may spend."),
    budget_share: float | None = typer.Option(None, "--budget-share", min=0.0, help="Or: that budget as a share of the dearest tier's mean cost."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Fit the cascade's order and thresholds for a budget and write them, with the scorer, into a policy file."""
    from tierlm.router.embeddings import offline_encoder
    from tierlm.router.study.collect import AnswerStore
    from tierlm.router.study.fit import fit_cascade, write_policy

    if (budget is None) == (budget_share is None):
        raise typer.BadParameter("give exactly one of --budget and --budget-share", param_hint="--budget")
    store = AnswerStore(answers)
    fitted = fit_cascade(store, scorer, offline_encoder(threads), split=split, budget=budget, budget_share=budget_share)
    store.close()
    write_policy(policy, out, scorer, fitted, answers=str(answers))
    point = fitted.point
    typer.echo(f"{out}: cascade {list(point.policy.order)} thresholds {dict(point.policy.thresholds)}: "
               f"{fitted.split} accuracy {point.accuracy:.3f} ({fitted.scores}) at {point.cost_per_query:.3g} per query "
               f"(budget {fitted.budget:.3g})")
