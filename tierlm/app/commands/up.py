"""`tierlm up`: the local stack (tiers a policy launches, and the router) until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from tierlm.app.commands.signals import stop_on_signals
from tierlm.app.errors import CommandError
from tierlm.edge.catalog import cache_root
from tierlm.serving import MAX_PORT


def default_run_dir() -> Path:
    return cache_root() / "runs" / time.strftime("%Y%m%d-%H%M%S")


def up(
    policy: Path = typer.Option(..., "--policy", exists=True, dir_okay=False, help="Policy YAML; tiers with a `launch` block are started."),
    port: int = typer.Option(50051, "--port", min=0, max=MAX_PORT, help="Router gRPC port (0: a free one)."),
    http_port: int | None = typer.Option(None, "--http-port", min=0, max=MAX_PORT, help="Also serve the router's OpenAI-compatible HTTP API."),
    free_ports: bool = typer.Option(False, "--free-ports", help="Run launched tiers on free ports instead of the policy's."),
    tenants: Path | None = typer.Option(None, "--tenants", exists=True, dir_okay=False, help="Extra tenants file for the router."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Let the router take calls without a tenant key (logged as a warning)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Logs, the router's policy copy and ledger (default: a new folder in the cache)."),
) -> None:
    """Start every tier the policy launches and the router on this machine; stop them all on Ctrl-C or SIGTERM."""
    from tierlm.app.stack import LocalStack, StackError, plan_stack

    run_dir = run_dir or default_run_dir()
    plan = plan_stack(policy, run_dir, router_port=port, free_ports=free_ports, tenants=tenants, http_port=http_port,
                      no_auth=no_auth)
    # SIGTERM and Ctrl-C both end the wait below; the stack then stops every child in order.
    stop = stop_on_signals()
    typer.echo(f"starting {', '.join(s.name for s in plan.services)}; logs in {run_dir / 'logs'}", err=True)
    stack = LocalStack(plan)
    try:
        stack.start()
        for service in plan.services:
            typer.echo(f"  {service.name:<8} {service.kind:<6} {service.address}  pid {service.process.pid}", err=True)
        typer.echo(f"ROUTER {stack.router_address}")
        typer.echo(f'ready: tierlm ask --router {stack.router_address} "..."; Ctrl-C stops everything', err=True)
        while not stop.wait(1.0):
            for service in plan.services:
                if not service.running():
                    typer.echo(f"{service.name} exited; stopping the stack. Its log:\n{service.log_tail()}", err=True)
                    stop.set()
    except StackError as exc:
        raise CommandError(str(exc)) from None
    finally:
        typer.echo("stopping...", err=True)
        stack.stop()
