"""The Engine interface every cloud engine implements, in the contract's own messages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tierlm.v1 import generator_pb2

if TYPE_CHECKING:
    from tierlm.edge.generator import ProtoGenerator


class Engine(ABC):
    """Generates for one model inside one Serve replica.

    Engines speak tierlm.v1 messages so the ingress forwards requests untouched; they raise
    tierlm.errors.GenerationError for bad input (INVALID_ARGUMENT) or overload
    (RESOURCE_EXHAUSTED), which the ingress turns into the gRPC status.
    """

    @abstractmethod
    def start(self) -> None:
        """Load the model (blocking); called once from the replica's constructor."""

    @abstractmethod
    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse: ...

    @abstractmethod
    def generate_stream(self, request: generator_pb2.GenerateRequest) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Text deltas as they decode, then one message with is_final set and usage."""

    @abstractmethod
    async def health(self) -> None:
        """Raise if the engine cannot serve (Serve then restarts the replica)."""

    async def shutdown(self) -> None:
        """Release the model; the default has nothing to release."""


class GeneratorEngine(Engine):
    """An engine whose requests a ProtoGenerator (built by `start`) serves in tierlm.v1 messages."""

    _generator: ProtoGenerator

    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        return await self._generator.generate(request)

    async def generate_stream(self, request: generator_pb2.GenerateRequest) -> AsyncIterator[generator_pb2.GenerateResponse]:
        async for message in self._generator.stream(request):
            yield message
