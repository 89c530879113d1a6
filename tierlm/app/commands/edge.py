"""`tierlm edge ...`: run an edge node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from tierlm.auth import KeyRing
from tierlm.app.commands import server_options as opt

app = typer.Typer(help="Run an edge node: a compressed small model behind the Generator gRPC service.", no_args_is_help=True)


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", exists=True, help="Model folder: a tierlm artifact or an HF folder."),
    port: int = typer.Option(50061, "--port", min=0, max=opt.MAX_PORT, help="gRPC port."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch threads of the decode loop."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting for a slot; beyond, RESOURCE_EXHAUSTED."),
    tier_name: str = typer.Option("edge", "--tier-name", help="Tier name put on answers."),
    tenants: Path | None = typer.Option(None, "--tenants", exists=True, dir_okay=False,
                                        help="Tenants file (name -> key_sha256); calls then need a key."),
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    tls_cert: Path | None = opt.TLS_CERT,
    tls_key: Path | None = opt.TLS_KEY,
    tls_client_ca: Path | None = opt.TLS_CLIENT_CA,
    max_request_bytes: int = opt.MAX_REQUEST_BYTES,
    drain_s: float = opt.DRAIN_S,
) -> None:
    """Serve tierlm.v1.Generator for MODEL until SIGTERM (in-flight streams drain first)."""
    from tierlm.config import load_tenants
    from tierlm.edge.server import load_generator, serve_edge

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    if tenants is not None:
        config.keys = KeyRing({t.key_sha256: name for name, t in load_tenants(tenants).items()})
    generator = load_generator(model, tier_name, threads, max_batch, max_queue)

    def ready(server) -> None:
        typer.echo(f"EDGE_PORT {server.port}")

    asyncio.run(serve_edge(generator, config, ready))
