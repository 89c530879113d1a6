"""`tierlm knn serve`: the no-LLM knn-vote tier as a Generator server."""

from __future__ import annotations

import asyncio

import typer

from tierlm.commands import server_options as opt

app = typer.Typer(help="Run the knn-vote tier: the 8 nearest labelled training headlines vote, no LLM.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run the knn-vote tier."""
    # A callback keeps `knn` a command group while it has a single command.


@app.command()
def serve(
    port: int = typer.Option(50081, "--port", help="gRPC port."),
    tier_name: str = typer.Option("knn", "--tier-name", help="Tier name put on answers."),
    k: int = typer.Option(8, "--k", min=1, help="Neighbours that vote."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads of the sentence encoder."),
    host: str = opt.HOST,
    metrics_port: int | None = opt.METRICS_PORT,
    drain_s: float = opt.DRAIN_S,
) -> None:
    """Serve tierlm.v1.Generator answering label choices by neighbour vote over the HEADLINES train split."""
    from tierlm.router.datasets import load_headlines
    from tierlm.router.embeddings import Encoder
    from tierlm.router.knn_tier import KnnGenerator
    from tierlm.router.tier_setup import DEMONSTRATION_SPLIT
    from tierlm.serving import GrpcServer
    from tierlm.v1 import generator_pb2, generator_pb2_grpc

    config = opt.server_config(host, port, metrics_port, None, None, None, opt.MAX_REQUEST_BYTES.default, drain_s)
    encoder = Encoder(threads=threads)
    with encoder.caching():  # the pool's embeddings: from disk after the first start
        knn = KnnGenerator(encoder, load_headlines(DEMONSTRATION_SPLIT), k=k, tier_name=tier_name)

    async def run() -> None:
        server = GrpcServer(config)
        await server.start(
            [lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(knn, s)],
            service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
        )
        typer.echo(f"KNN_PORT {server.port}")
        await server.run_until_signal()

    asyncio.run(run())
