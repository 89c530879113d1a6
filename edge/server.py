"""The edge node: the Generator service over the continuous-batching engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from tierlm.edge.generator import ProtoGenerator
from tierlm.errors import GenerationError
from tierlm.serving import GrpcServer, ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)


class EdgeGenerator(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, generator: ProtoGenerator):
        self.generator = generator

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            return await self.generator.generate(request)
        except GenerationError as exc:
            await context.abort(exc.code, str(exc), trailing_metadata=exc.trailing_metadata())

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            async for message in self.generator.stream(request):
                yield message
        except GenerationError as exc:
            await context.abort(exc.code, str(exc), trailing_metadata=exc.trailing_metadata())


async def start_edge(generator: ProtoGenerator, config: ServerConfig) -> GrpcServer:
    from tierlm.edge.telemetry import bind_load_gauges

    bind_load_gauges(generator.engine.stats)
    server = GrpcServer(config)
    servicer = EdgeGenerator(generator)
    await server.start(
        [lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, s)],
        service_names=[generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name],
    )
    return server


def load_generator(
    model_path: Path, tier_name: str, threads: int | None, max_batch: int, max_queue: int, **engine_options
) -> ProtoGenerator:
    """Load a model folder (HF or tierlm artifact) into an engine with Prometheus hooks."""
    from tierlm.edge.engine import DecoderEngine
    from tierlm.edge.telemetry import PrometheusObserver

    engine = DecoderEngine.from_pretrained(
        model_path, threads=threads, max_batch=max_batch, max_queue=max_queue, observer=PrometheusObserver(), **engine_options
    )
    return ProtoGenerator(engine, model_name=Path(model_path).name, tier_name=tier_name)


async def serve_edge(generator: ProtoGenerator, config: ServerConfig, ready: Callable[[GrpcServer], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then drain the server (in-flight streams finish) and the engine."""
    server = await start_edge(generator, config)
    if ready is not None:
        ready(server)
    try:
        await server.run_until_signal()
    finally:
        await generator.engine.aclose(drain=True, timeout=config.drain_grace_s)
        log.info("edge engine closed")
