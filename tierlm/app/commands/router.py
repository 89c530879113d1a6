"""`tierlm router ...`: run the cascade router and read its ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from tierlm import tracing
from tierlm.app.commands import server_options as opt
from tierlm.app.errors import CommandError, ExitCode

if TYPE_CHECKING:
    from tierlm.router.store import Store

T = TypeVar("T")

app = typer.Typer(help="Run the cascade router and read its cost ledger.", no_args_is_help=True)

log = logging.getLogger(__name__)

DEFAULT_STORE = "tierlm-ledger.sqlite"
WORKERS_HELP = ("Router processes sharing the port (SO_REUSEPORT) and the store; one per core is the usual choice. "
                "With --metrics-port P, worker i serves metrics on P+i.")
STORE_HELP = ("Ledger and budgets: a SQLite file (one router, or workers on one machine) or a PostgreSQL URL / "
              "connection string (replicas); read from $TIERLM_STORE if unset.")


@app.command()
def serve(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="Cascade policy YAML (reloaded on change and on SIGHUP)."),
    tenants: Path | None = typer.Option(None, "--tenants", exists=True, dir_okay=False, help="Extra tenants file: name -> key_sha256 and budgets."),
    port: int = typer.Option(50051, "--port", min=0, max=opt.MAX_PORT, help="gRPC port of the Router service."),
    http_port: int | None = typer.Option(None, "--http-port", min=0, max=opt.MAX_PORT, help="Also serve an OpenAI-compatible HTTP API on this port (TLS when --tls-cert is given)."),
    http_read_timeout: float = typer.Option(30.0, "--http-read-timeout", min=0.1, help="Seconds an HTTP client may take to send one whole request."),
    http_max_connections: int = typer.Option(1024, "--http-max-connections", min=1, help="Open HTTP connections beyond this are closed on accept."),
    no_auth: bool = opt.NO_AUTH,
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
    """Serve tierlm.v1.Router until SIGTERM. Calls need a tenant's key (none configured: every call is
    refused) unless --no-auth."""
    from tierlm.router.serve.http_server import HttpOptions
    from tierlm.router.serve.server import serve as run

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    if workers > 1:
        _serve_workers(workers, policy, config, store, tenants, http_port, auth=not no_auth)
        return

    def ready(server, bound_http_port: int | None) -> None:
        extras = [f"metrics on :{server.metrics_port}"] if server.metrics_port else []
        extras += [f"OpenAI HTTP on :{bound_http_port}"] if bound_http_port else []
        typer.echo(f"router listening on {host}:{server.port}" + "".join(f", {e}" for e in extras), err=True)
        typer.echo(f"ROUTER_PORT {server.port}" + (f" HTTP_PORT {bound_http_port}" if bound_http_port else ""))

    http = None
    if http_port is not None:
        http = HttpOptions(http_port, host, read_timeout_s=http_read_timeout, max_connections=http_max_connections)
    tracing.configure("tierlm-router")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    asyncio.run(run(policy, config, store, tenants, ready, http, auth=not no_auth))


def parse_since(since: str) -> float:
    """Unix seconds of an ISO date or datetime (UTC unless it says otherwise); 0 for ''."""
    if not since:
        return 0.0
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise typer.BadParameter(f"not an ISO date or datetime: {since!r}", param_hint="--since") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def existing_store(store: str) -> str:
    from tierlm.router.store import is_postgres

    if not is_postgres(store) and not Path(store).is_file():
        raise typer.BadParameter(f"no ledger at {store}", param_hint="--store")
    return store


async def with_store(location: str, use: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store at ``location``, run ``use`` on it, close it."""
    from tierlm.router.store import open_store

    opened = await open_store(location)
    try:
        return await use(opened)
    finally:
        await opened.close()


def _serve_workers(workers: int, policy: Path, config, store: str, tenants: Path | None, http_port: int | None, *,
                   auth: bool) -> None:
    from tierlm.router.serve.workers import serve_workers

    if http_port is not None:
        raise CommandError("--http-port and --workers conflict: the OpenAI HTTP endpoint serves from one process; "
                           "run it with --workers 1", ExitCode.USAGE)

    def ready(bound: int) -> None:
        metrics = f", metrics on :{config.metrics_port}..{config.metrics_port + workers - 1}" if config.metrics_port else ""
        typer.echo(f"router listening on {config.host}:{bound} with {workers} workers{metrics}", err=True)
        typer.echo(f"ROUTER_PORT {bound}")

    serve_workers(workers, policy, config, store, tenants, ready, auth=auth)


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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Summarize one tenant's requests, answers per tier and cost."""
    since_ts = parse_since(since)
    summary = asyncio.run(with_store(existing_store(store), lambda opened: opened.summarize(tenant, since_ts)))
    if as_json:
        since_iso = datetime.fromtimestamp(since_ts, timezone.utc).isoformat() if since_ts else None
        typer.echo(json.dumps(dataclasses.asdict(summary) | {"since": since_iso}))
        return
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
    policy: Path | None = typer.Option(None, "--policy", exists=True, dir_okay=False, help="The policy the scorer is for: its `encoder` embeds the features (default all-MiniLM-L6-v2)."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Train the answer scorer P(correct | query, answer, tier) and report its quality per tier."""
    from tierlm.config import load_policy
    from tierlm.router.encoder_choice import offline_policy_encoder
    from tierlm.router.learn.offline import cascade_data
    from tierlm.router.learn.quality import tier_score_metrics
    from tierlm.router.learn.scorer import Scorer, train as train_scorer
    from tierlm.router.study.collect import AnswerStore

    store = AnswerStore(answers)
    records = store.records(split)
    if not records:
        raise typer.BadParameter(f"no answers for split {split!r} in {answers}", param_hint="--split")
    encoder = offline_policy_encoder(load_policy(policy) if policy is not None else None, threads)
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
    from tierlm.config import load_policy
    from tierlm.router.encoder_choice import offline_policy_encoder
    from tierlm.router.study.collect import AnswerStore
    from tierlm.router.study.fit import fit_cascade, write_policy

    if (budget is None) == (budget_share is None):
        raise typer.BadParameter("give exactly one of --budget and --budget-share", param_hint="--budget")
    from tierlm.router.learn.optimizer import InfeasibleBudgetError

    store = AnswerStore(answers)
    try:
        fitted = fit_cascade(store, scorer, offline_policy_encoder(load_policy(policy), threads), split=split, budget=budget, budget_share=budget_share)
    except InfeasibleBudgetError as exc:
        raise CommandError(f"{exc}; raise --budget", ExitCode.FAILED) from None
    finally:
        store.close()
    write_policy(policy, out, scorer, fitted, answers=str(answers))
    point = fitted.point
    typer.echo(f"{out}: cascade {list(point.policy.order)} thresholds {dict(point.policy.thresholds)}: "
               f"{fitted.split} accuracy {point.accuracy:.3f} ({fitted.scores}) at {point.cost_per_query:.3g} per query "
               f"(budget {fitted.budget:.3g})")


@app.command()
def feedback(
    request_id: str = typer.Argument(..., help="The answer's request id (`tierlm ask` prints it)."),
    correct: bool | None = typer.Option(None, "--correct/--wrong", help="The answer was right / wrong."),
    score: float | None = typer.Option(None, "--score", min=0.0, max=1.0, help="Or: how good it was, in [0, 1]."),
    reference: str | None = typer.Option(None, "--reference", help="Or: a right answer, judged by the policy's feedback judge."),
    router: str = typer.Option("127.0.0.1:50051", "--router", envvar="TIERLM_ROUTER", help="Router address host:port."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TIERLM_API_KEY", help="Tenant API key (your own requests only)."),
) -> None:
    """Tell the router whether an answer was right; the first verdict on a request is kept."""
    from tierlm.client import Client, TierlmError

    try:
        with Client(router, api_key=api_key) as client:
            stored = client.feedback(request_id, correct=correct, score=score, reference=reference)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--correct/--wrong, --score, --reference") from None
    except TierlmError as exc:
        typer.echo(f"error: {exc.code.name}: {exc.details}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{request_id}: " + ("feedback stored" if stored else "already had feedback; the first verdict stands"))


@app.command()
def refit(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="The live policy file (with learning.record on)."),
    store: str = typer.Option(DEFAULT_STORE, "--store", envvar="TIERLM_STORE", help="The routers' store. " + STORE_HELP),
    since: str = typer.Option("", "--since", help="Learn from requests since this ISO date or datetime (UTC); default: everything."),
    out: Path | None = typer.Option(None, "--out", help="Candidate policy to write; default: <policy>.candidate.yaml beside it."),
    promote_it: bool = typer.Option(False, "--promote", help="Make the candidate live if the shadow test passes (routers reload it)."),
    min_explored: int = typer.Option(40, "--min-explored", min=10, help="Explored, labelled requests a refit needs at least."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision and its numbers as JSON."),
    threads: int = typer.Option(1, "--threads", min=1),
) -> None:
    """Refit the policy from labelled live traffic, shadow-test it against the live one, and
    (with --promote) make it live only if it is at least as accurate at no higher cost (or within
    the policy's learning.refit_budget_per_query, where set)."""
    from tierlm.config import load_policy
    from tierlm.router.encoder_choice import offline_policy_encoder
    from tierlm.router.study.refit import decision_numbers, promote, refit as refit_policy
    from tierlm.router.learn.traffic import policy_version

    since_ts = parse_since(since)
    location = existing_store(store)
    labelled = asyncio.run(with_store(location, lambda opened: opened.labelled(since_ts)))
    candidate = out or policy.with_name(f"{policy.stem}.candidate.yaml")
    try:
        result = refit_policy(policy, labelled, offline_policy_encoder(load_policy(policy), threads), candidate, min_explored=min_explored)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    shadow = result.shadow
    action = "candidate" if not promote_it else ("promoted" if shadow.promote else "rejected")
    live = policy_version(policy)
    if action == "promoted":
        kept = promote(policy, candidate)
        typer.echo(f"previous policy kept as {kept} (`tierlm router rollback` returns to it)", err=True)
    numbers = decision_numbers(result)
    asyncio.run(with_store(location, lambda opened: opened.log_decision(f"refit-{action}", live, numbers)))
    log.info("refit of %s: %s %s", policy, action, numbers)
    if as_json:
        typer.echo(json.dumps({"action": action, "candidate": str(candidate), **json.loads(numbers)}))
        return
    low, high = shadow.gain_ci95
    typer.echo(f"candidate {candidate}: learned from {result.labels} labelled requests, thresholds fitted on "
               f"{result.fit_requests} explored ones")
    typer.echo(f"shadow test on {shadow.requests} later explored requests: live accuracy {shadow.live_accuracy:.3f} at "
               f"{shadow.live_cost:.3g}/query, candidate {shadow.candidate_accuracy:.3f} at {shadow.candidate_cost:.3g}/query "
               f"(gain {shadow.gain:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}])")
    typer.echo({"candidate": "not promoted (run with --promote to make it live if it passes)",
                "promoted": f"promoted: {policy} is now the candidate",
                "rejected": "not promoted: the candidate is less accurate or dearer than the live policy"}[action])


@app.command()
def rollback(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="The live policy file."),
    store: str = typer.Option(DEFAULT_STORE, "--store", envvar="TIERLM_STORE", help="Where the decision is logged. " + STORE_HELP),
) -> None:
    """Return to the policy the last promotion replaced (routers reload it)."""
    from tierlm.router.learn.traffic import policy_version
    from tierlm.router.study.refit import rollback as roll_back

    replaced = policy_version(policy)
    try:
        previous = roll_back(policy)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    numbers = json.dumps({"replaced": replaced, "restored_from": str(previous)})
    asyncio.run(with_store(existing_store(store), lambda opened: opened.log_decision("rollback", policy_version(policy), numbers)))
    log.info("rollback of %s: %s", policy, numbers)
    typer.echo(f"{policy} is back to {previous.name}")
