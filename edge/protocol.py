"""The text-engine contract: what the Generator service needs of an inference engine.

The edge runtime's :class:`~tierlm.edge.engine.DecoderEngine` and the cloud tier's vLLM engine
(:class:`~tierlm.cloud.engines.vllm_engine.VLLMTextEngine`) both implement it, and
:class:`~tierlm.edge.generator.ProtoGenerator` serves any implementation in tierlm.v1
messages. Requests and events are this package's plain types (:mod:`tierlm.edge.requests`);
every method that may wait is a coroutine, called on the server's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from tierlm.edge.requests import Completion, GenerationRequest, TokenDelta
from tierlm.edge.stats import EngineHealth


class EventStream(Protocol):
    """One admitted request: ``TokenDelta`` events, then its ``Completion``."""

    def __aiter__(self) -> AsyncIterator[TokenDelta | Completion]: ...

    def cancel(self) -> None:
        """Abort the request (frees its batch slot); safe to call after it ended."""


class TextEngine(Protocol):
    def stream(self, request: GenerationRequest) -> EventStream:
        """Admit ``request``. Raises at once ``InvalidRequest`` (bad input), ``QueueFull``
        (overloaded, with a retry hint), ``EngineClosed`` or ``EngineError``; later failures
        raise from the iteration."""

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run ``request`` to completion (same errors as :meth:`stream`)."""

    async def health(self) -> EngineHealth:
        """Whether the engine can take requests, and why not."""

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop taking requests, let admitted ones finish for at most ``timeout`` seconds (no
        limit when None), cancel the rest and release the model; idempotent."""
