"""`tierlm edge ...`: run an edge node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from tierlm import tracing
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
    """Serve tierlm.v1.Generator for MODEL until SIGTERM (in-flight streams drain first)."""
    from tierlm.edge.server import load_generator, serve_edge

    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    config.keys = opt.key_ring(api_keys, no_auth)
    generator = load_generator(model, tier_name, threads, max_batch, max_queue)

    def ready(server) -> None:
        typer.echo(f"EDGE_PORT {server.port}")

    tracing.configure("tierlm-edge")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    asyncio.run(serve_edge(generator, config, ready))
