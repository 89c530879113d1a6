"""`tierlm knn serve`: the no-LLM knn-vote tier as a Generator server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from tierlm import tracing
from tierlm.app.commands import server_options as opt

app = typer.Typer(help="Run a no-LLM tier (knn-vote or the MiniLM probe) over a labelled pool.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run a no-LLM tier."""
    # A callback keeps `knn` a command group while it has a single command.


@app.command()
def serve(
    pool: Path = typer.Option(..., "--pool", exists=True, dir_okay=False, help="Workload file of labelled rows the tier learns from (a train split)."),
    model: str = typer.Option("knn-vote", "--model", help="knn-vote or minilm-probe."),
    port: int = typer.Option(50081, "--port", min=0, max=opt.MAX_PORT, help="gRPC port."),
    tier_name: str = typer.Option("knn", "--tier-name", help="Tier name put on answers."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads of the sentence encoder."),
    encoder_name: str = typer.Option("minilm", "--encoder", help="Sentence encoder: minilm, or static (fitted to --pool; a policy's `encoder`)."),
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
    """Serve tierlm.v1.Generator answering label choices from the query's embedding (no LLM)."""
    from tierlm.router.embeddings import Encoder
    from tierlm.router.encoder_choice import ENCODERS, static_for
    from tierlm.router.nollm.models import NO_LLM_MODELS
    from tierlm.router.workload import load_workload
    from tierlm.serving import GrpcServer
    from tierlm.v1 import generator_pb2, generator_pb2_grpc

    if encoder_name not in ENCODERS:
        raise typer.BadParameter(f"{encoder_name!r} is not one of {list(ENCODERS)}", param_hint="--encoder")
    if model not in NO_LLM_MODELS:
        raise typer.BadParameter(f"{model!r} is not one of {sorted(NO_LLM_MODELS)}", param_hint="--model")
    config = opt.server_config(host, port, metrics_port, tls_cert, tls_key, tls_client_ca, max_request_bytes, drain_s)
    config.keys = opt.key_ring(api_keys, no_auth)
    rows = list(load_workload(pool))
    encoder = static_for(pool) if encoder_name == "static" else Encoder(threads=threads)
    with encoder.caching():  # the pool's embeddings: from disk after the first start
        knn = NO_LLM_MODELS[model](encoder, rows, tier_name=tier_name)

    async def run() -> None:
        server = GrpcServer(config)
        await server.start(
            [lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(knn, s)],
            service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
        )
        typer.echo(f"KNN_PORT {server.port}")
        await server.run_until_signal()

    tracing.configure("tierlm-knn")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
    asyncio.run(run())
