"""The edge node: the Generator service over the continuous-batching engine.

Optionally the node takes part in speculative decoding (docs/speculative.md): with a verifier
it drafts (GenerateRequests carrying `speculative` options), with verify sessions it verifies
(the Verify rpc) for other nodes' drafters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tierlm.edge.generator import ProtoGenerator
from tierlm.edge.speculative.client import VerifierEndpoint
from tierlm.edge.speculative.service import SpeculativeGenerator
from tierlm.edge.speculative.vocabulary import DEFAULT_SIZE, vocabulary_from_text
from tierlm.errors import GenerationError
from tierlm.serving import GrpcServer, ServerConfig, current_tenant
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

    async def Verify(self, request: generator_pb2.VerifyRequest, context: grpc.aio.ServicerContext):
        try:
            if not isinstance(self.generator, SpeculativeGenerator):
                raise GenerationError(grpc.StatusCode.UNIMPLEMENTED, "this node does not verify")
            return await self.generator.verify(request, current_tenant.get())
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


@dataclass(frozen=True)
class SpeculationConfig:
    """The node's part in speculative decoding.

    ``verifier``: draft for this verifier (``draft_sessions`` generations at once, ``k`` and
    ``max_k`` unless a request says otherwise); with ``draft_vocab_text`` (a text file or a folder
    of ``.txt``), from ``draft_vocab_size`` tokens only: its most frequent, then the tokenizer's
    lowest ids (:mod:`tierlm.edge.speculative.vocabulary`). ``verify_sessions`` > 0: serve Verify with that
    many sessions, each idle one dropped after ``session_ttl_s``.
    """

    verifier: VerifierEndpoint | None = None
    draft_sessions: int = 8
    k: int = 4
    max_k: int = 8
    verify_sessions: int = 0
    session_ttl_s: float = 300.0
    draft_vocab_text: Path | None = None
    draft_vocab_size: int = DEFAULT_SIZE


def load_generator(
    model_path: Path, tier_name: str, threads: int | None, max_batch: int, max_queue: int,
    speculation: SpeculationConfig = SpeculationConfig(), **engine_options,
) -> SpeculativeGenerator:
    """Load a model folder (HF or tierlm artifact) into an engine with Prometheus hooks, with a
    drafter and a verifier on the same model when ``speculation`` asks for them."""
    from tierlm.edge.engine import DecoderEngine
    from tierlm.edge.speculative.parts import drafter_for, verifier_for
    from tierlm.edge.telemetry import PrometheusObserver

    engine = DecoderEngine.from_pretrained(
        model_path, threads=threads, max_batch=max_batch, max_queue=max_queue, observer=PrometheusObserver(), **engine_options
    )
    drafter = verifier = None
    if speculation.verifier is not None:
        vocab = None
        if speculation.draft_vocab_text is not None:
            vocab = vocabulary_from_text(speculation.draft_vocab_text, engine.tokenizer, engine.model.config,
                                         speculation.draft_vocab_size)
        drafter = drafter_for(model_path, engine, speculation.verifier, speculation.draft_sessions, speculation.k,
                              speculation.max_k, threads, vocab)
    if speculation.verify_sessions:
        verifier = verifier_for(model_path, speculation.verify_sessions, speculation.session_ttl_s, threads)
    return SpeculativeGenerator(engine, Path(model_path).name, tier_name, drafter=drafter, verifier=verifier)


async def serve_edge(generator: ProtoGenerator, config: ServerConfig, ready: Callable[[GrpcServer], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then drain the server (in-flight streams finish) and the engine."""
    server = await start_edge(generator, config)
    if ready is not None:
        ready(server)
    try:
        await server.run_until_signal()
    finally:
        await generator.engine.aclose(drain=True, timeout=config.drain_grace_s)
        if isinstance(generator, SpeculativeGenerator):
            await generator.aclose_speculation()
        log.info("edge engine closed")
