"""`tierlm scripted serve`: a tier with no model (tierlm/app/scripted_tier.py), for the tour."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from tierlm.app.commands import server_options as opt

app = typer.Typer(help="Run a scripted tier: no model, answers in milliseconds (for the tour and tests).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run a scripted tier."""
    # A callback keeps `scripted` a command group while it has a single command.


@app.command()
def serve(
    name: str = typer.Option("edge", "--name", help="Tier name: answers read '<name>: <prompt>'."),
    port: int = typer.Option(50061, "--port", min=0, max=opt.MAX_PORT, help="gRPC port."),
    delay_ms: float = typer.Option(0.0, "--delay-ms", min=0.0, help="Milliseconds each answer takes (per word when streaming)."),
    api_keys: Path | None = opt.API_KEYS,
    no_auth: bool = opt.NO_AUTH,
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    tls_cert: Path | None = opt.TLS_CERT,
    tls_key: Path | None = opt.TLS_KEY,
    tls_client_ca: Path | None = opt.TLS_CLIENT_CA,
    max_request_bytes: int = opt.MAX_REQUEST_BYTES,
    drain_s: float = opt.DRAIN_S,
) -> None:
    """Serve tierlm.v1.Generator answering '<name>: <prompt>', confident (token log-prob -0.01)
    when the prompt says "easy" and unsure (-2.0) otherwise, until SIGTERM."""
    from tierlm.app.scripted_tier import ScriptedGenerator, start_generator

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    config.keys = opt.key_ring(api_keys, no_auth)

    async def run() -> None:
        server = await start_generator(config, ScriptedGenerator(delay_ms / 1e3, name))
        typer.echo(f"SCRIPTED_PORT {server.port}")
        await server.run_until_signal()

    asyncio.run(run())
