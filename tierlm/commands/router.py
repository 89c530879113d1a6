"""`tierlm router ...`: run the cascade router and read its ledger."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import typer

from tierlm.commands import server_options as opt

app = typer.Typer(help="Run the cascade router and read its cost ledger.", no_args_is_help=True)

DEFAULT_LEDGER = Path("tierlm-ledger.sqlite")


@app.command()
def serve(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="Cascade policy YAML (reloaded on change and on SIGHUP)."),
    tenants: Path | None = typer.Option(None, "--tenants", exists=True, dir_okay=False, help="Extra tenants file: name -> key_sha256 and budgets."),
    port: int = typer.Option(50051, "--port", help="gRPC port of the Router service."),
    http_port: int | None = typer.Option(None, "--http-port", help="Also serve an OpenAI-compatible HTTP API on this port."),
    ledger: Path = typer.Option(DEFAULT_LEDGER, "--ledger", help="SQLite cost ledger (created if missing)."),
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    tls_cert: Path | None = opt.TLS_CERT,
    tls_key: Path | None = opt.TLS_KEY,
    tls_client_ca: Path | None = opt.TLS_CLIENT_CA,
    max_request_bytes: int = opt.MAX_REQUEST_BYTES,
    drain_s: float = opt.DRAIN_S,
) -> None:
    """Serve tierlm.v1.Router until SIGTERM; calls need a tenant key when the policy has tenants."""
    from tierlm.router.server import serve as run

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)

    def ready(server, bound_http_port: int | None) -> None:
        extras = [f"metrics on :{server.metrics_port}"] if server.metrics_port else []
        extras += [f"OpenAI HTTP on :{bound_http_port}"] if bound_http_port else []
        typer.echo(f"router listening on {host}:{server.port}" + "".join(f", {e}" for e in extras), err=True)
        typer.echo(f"ROUTER_PORT {server.port}" + (f" HTTP_PORT {bound_http_port}" if bound_http_port else ""))

    asyncio.run(run(policy, config, ledger, tenants, ready, http_port))


@app.command("ledger")
def ledger_summary(
    tenant: str = typer.Option(..., "--tenant", help="Tenant to summarize."),
    since: str = typer.Option("", "--since", help="ISO date or datetime (UTC), e.g. 2026-11-01; default: everything."),
    ledger: Path = typer.Option(DEFAULT_LEDGER, "--ledger", exists=True, dir_okay=False, help="The router's SQLite ledger."),
) -> None:
    """Summarize one tenant's requests, answers per tier and cost."""
    from tierlm.router.ledger import Ledger

    since_ts = 0.0
    if since:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise typer.BadParameter(f"not an ISO date or datetime: {since!r}", param_hint="--since") from None
        since_ts = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    book = Ledger(ledger)
    summary = book.summarize(tenant, since_ts)
    book.close()
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_ts)) if since_ts else "the beginning"
    typer.echo(f"tenant {summary.tenant} since {when} UTC: {summary.requests} requests, {summary.ok} answered, "
               f"cost {summary.cost:.6g}, tokens {summary.prompt_tokens} in / {summary.completion_tokens} out")
    for tier, count in sorted(summary.by_tier.items()):
        typer.echo(f"  {tier}: {count} answers")
